#!/usr/bin/env bash
# mechlens's logits against llama.cpp's for the same GGUF files: the F32 model, the Q8_0 file `mechlens quantize`
# writes, and the Q4_K_M file `llama-quantize` writes; then the Q8_0 file again with llama.cpp's rounding of
# activations emulated by hooks (emulated_logits.cpp). Prints max and rms |difference| and argmax agreement per file.
#
#   bench/peers/llama_cpp/compare_logits.sh LLAMA_CPP_DIR [MODEL.gguf]
#
# LLAMA_CPP_DIR: a llama.cpp source tree outside this repository (e.g. one brought by `fetch` and unpacked in /tmp);
# it is built in LLAMA_CPP_DIR/build unless llama-quantize is there already. MODEL defaults to the shared
# stories260K.gguf; TOKENS (space-separated ids) defaults to its "Once upon a time" and the next 59 greedy tokens.
# Needs mechlens built (`make build`: build/tools/mechlens) and Debian's python3 with numpy.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
llama=$(cd "${1:?usage: compare_logits.sh LLAMA_CPP_DIR [MODEL.gguf]}" && pwd)
model=${2:-$repo/../shared/models/stories260K/stories260K.gguf}
mechlens=${MECHLENS:-$repo/build/tools/mechlens}
tokens=${TOKENS:-"1 403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411
322 265 282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 266 267 337 335 312 432 398 312
286 267 414 270 333 415 426 13 438"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -x "$mechlens" ] || { echo "no mechlens CLI at $mechlens (make build, or set MECHLENS)"; exit 1; }

if [ ! -x "$llama/build/bin/llama-quantize" ]; then
    cmake -S "$llama" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
    cmake --build "$llama/build" -j"$(nproc)" --target llama-quantize llama >/dev/null
fi
g++ -std=c++17 -O2 "$here/llama_logits.cpp" -I"$llama/include" -I"$llama/ggml/include" -L"$llama/build/bin" \
    -lllama -lggml -lggml-base -Wl,-rpath,"$llama/build/bin" -o "$work/llama_logits"
g++ -std=c++20 -O2 -march=native -fopenmp "$here/emulated_logits.cpp" -I"$repo/include" -isystem /usr/include/eigen3 \
    -o "$work/emulated_logits"

"$mechlens" quantize --model "$model" --out "$work/q8_0.gguf" >/dev/null
"$llama/build/bin/llama-quantize" "$model" "$work/q4_k_m.gguf" Q4_K_M >/dev/null 2>&1
cp "$model" "$work/f32.gguf"
comma_tokens=$(echo $tokens | tr ' ' ',')
for f in f32 q8_0 q4_k_m; do
    "$mechlens" logits --model "$work/$f.gguf" --tokens "$comma_tokens" --out "$work/mechlens_$f.npy" 2>/dev/null
    LLAMA_KV_F32=1 "$work/llama_logits" "$work/$f.gguf" "$work/llama_$f.f32" $tokens 2>/dev/null
done
"$work/llama_logits" "$work/f32.gguf" "$work/llama_f32_kv16.f32" $tokens 2>/dev/null
"$work/emulated_logits" "$work/q8_0.gguf" "$work/emulated_q8_0.f32" $tokens

/usr/bin/python3 - "$work" <<'PY'
import sys
import numpy as np
work = sys.argv[1]
def ours(name):
    return np.load(f"{work}/mechlens_{name}.npy").astype(np.float64)
def theirs(name, vocab):
    return np.fromfile(f"{work}/llama_{name}.f32", np.float32).reshape(-1, vocab).astype(np.float64)
def row(label, a, b):
    d = np.abs(a - b)
    agree = int((a.argmax(1) == b.argmax(1)).sum())
    print(f"| {label} | {d.max():.3g} / {np.sqrt((d ** 2).mean()):.2g} | {agree} / {a.shape[0]} |")
f32 = ours("f32")
vocab = f32.shape[1]
print(f"{f32.shape[0]} positions, logits within +-{np.abs(f32).max():.3g}\n")
print("| file | max / rms abs(mechlens - llama.cpp) | argmax agrees |\n|---|---|---|")
for name in ("f32", "q8_0", "q4_k_m"):
    row(name + " (KV cache F32)", ours(name), theirs(name, vocab))
row("f32 (llama.cpp's F16 KV cache)", f32, theirs("f32_kv16", vocab))
emulated = np.fromfile(f"{work}/emulated_q8_0.f32", np.float32).reshape(-1, vocab).astype(np.float64)
row("q8_0, llama.cpp's activation rounding emulated by hooks", emulated, theirs("q8_0", vocab))
per_position = np.abs(emulated - theirs("q8_0", vocab)).max(1)
print(f"\nemulated q8_0, per-position max abs difference: median {np.median(per_position):.2g}; "
      f"positions above 1e-4: {int((per_position > 1e-4).sum())}")
for name in ("q8_0", "q4_k_m"):
    print(f"{name}: max abs(quantised - F32) mechlens {np.abs(ours(name) - f32).max():.3g}, "
          f"llama.cpp {np.abs(theirs(name, vocab) - theirs('f32', vocab)).max():.3g}")
PY
