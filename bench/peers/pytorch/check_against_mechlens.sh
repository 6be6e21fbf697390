#!/usr/bin/env bash
# The PyTorch reference LLaMA (llama_reference.py) against mechlens on the same F32 GGUF files and tokens: every
# position's logits of mechlens's `logits` command, of one PyTorch forward over the prompt (prefill) and of PyTorch's
# KV-cached single-token steps (decode). Prints per file the logit scale, max |mechlens - PyTorch| for prefill and
# decode, max |decode - prefill| within PyTorch, and whether the argmax agrees at every position.
#
#   bench/peers/pytorch/check_against_mechlens.sh [MODEL.gguf ...]
#
# Default files: the shared stories260K.gguf and the random-weight stories15M_f32.gguf and llama110M_f32.gguf of
# $BENCH_WORK (default /tmp/mechlens_vs_llama_cpp, written by bench/peers/llama_cpp/bench_vs_llama_cpp.sh); missing
# ones are skipped. TOKENS (comma-separated ids) defaults to 1,403,407,261,378. Needs the Release build's
# build/tools/mechlens (or MECHLENS) and Debian's python3 with numpy and torch.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
mechlens=${MECHLENS:-$repo/build/tools/mechlens}
work=${BENCH_WORK:-/tmp/mechlens_vs_llama_cpp}
tokens=${TOKENS:-1,403,407,261,378}
[ -x "$mechlens" ] || { echo "no mechlens CLI at $mechlens (make build, or set MECHLENS)"; exit 1; }
if [ $# -eq 0 ]; then
    set -- "$repo/../shared/models/stories260K/stories260K.gguf" "$work/stories15M_f32.gguf" "$work/llama110M_f32.gguf"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "tokens $tokens"
echo "| file | logits within +- | max abs(mechlens - PyTorch prefill) | max abs(mechlens - PyTorch decode) |" \
    "max abs(decode - prefill) | argmax agrees |"
echo "|---|---|---|---|---|---|"
for model in "$@"; do
    [ -f "$model" ] || { echo "skipping $model: not found" >&2; continue; }
    "$mechlens" logits --model "$model" --tokens "$tokens" --out "$tmp/mechlens.npy" >/dev/null 2>&1
    /usr/bin/python3 "$here/llama_reference.py" --check "$model" --tokens "$tokens" --all-positions --out "$tmp/prefill.npy"
    /usr/bin/python3 "$here/llama_reference.py" --check "$model" --tokens "$tokens" --all-positions --stepwise \
        --out "$tmp/decode.npy"
    /usr/bin/python3 - "$tmp" "$(basename "$model")" <<'PY'
import sys
import numpy as np
tmp, name = sys.argv[1], sys.argv[2]
ours = np.load(f"{tmp}/mechlens.npy").astype(np.float64)
prefill = np.load(f"{tmp}/prefill.npy").astype(np.float64).reshape(ours.shape)
decode = np.load(f"{tmp}/decode.npy").astype(np.float64).reshape(ours.shape)
agree = all((x.argmax(-1) == ours.argmax(-1)).all() for x in (prefill, decode))
print(f"| {name} | {np.abs(ours).max():.3g} | {np.abs(ours - prefill).max():.3g} | {np.abs(ours - decode).max():.3g} |"
      f" {np.abs(decode - prefill).max():.3g} | {'yes' if agree else 'NO'} |")
PY
done
