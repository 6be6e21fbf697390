#!/usr/bin/env bash
# L0 against FVU on stories260K (issue 13's science check, docs/SAE.md "stories260K"): harvests the residual stream
# after block 2 over stories the model samples (seed 1), trains TopK SAEs for several k and standard SAEs for several
# L1 coefficients on it, and evaluates each on held-out stories (seed 2) with `mechlens sae eval`. Then a transcoder
# for block 2's MLP, evaluated by the lesson (examples/07_sae_features.cpp) rather than here.
# Usage: tools/sae_sweep.sh [BUILD_DIR] [OUT_DIR]     (about 6 minutes on 2 cores)
set -euo pipefail
build="${1:-build}"
out="${2:-/tmp/mechlens_sae_sweep}"
models="${MECHLENS_MODELS:-$(dirname "$0")/../../shared/models}"
model="$models/stories260K/stories260K.bin"
cli="$build/tools/mechlens"
hook=blocks.2.hook_resid_post
[ -f "$model" ] || { echo "needs $model (set MECHLENS_MODELS)"; exit 2; }
mkdir -p "$out"
[ -f "$out/acts/manifest.json" ] ||
    "$cli" harvest --model "$model" --hook "$hook" --tokens-total 262144 --context 128 --shuffle --seed 1 --out "$out/acts"

train() {  # name, then sae train's architecture options
    local name="$1"
    shift
    [ -f "$out/$name/cfg.json" ] ||
        "$cli" sae train --activations "$out/acts" --hook "$hook" --d-sae 512 --lr 4e-3 --tokens-total 2097152 \
            --lr-decay-steps 100 --seed 7 "$@" --out "$out/$name" >/dev/null
}
echo "| SAE | L0 | FVU | explained variance | CE recovered | dead |"
echo "|---|---|---|---|---|---|"
row() {
    "$cli" sae eval --model "$model" --sae "$out/$1" --tokens-total 65536 --context 128 --seed 2 --json |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('| $1 | %.1f | %.3f | %.1f %% | %.1f %% | %.1f %% |' % (r['l0'], r['fvu'], 100*(1-r['fvu']), 100*r['ce_recovered'], 100*r['dead_fraction']))"
}
for k in 4 8 16 32; do
    train "topk_k$k" --architecture topk --k "$k"
    row "topk_k$k"
done
for l1 in 0.3 1 3; do
    train "standard_l1_$l1" --architecture standard --l1 "$l1"
    row "standard_l1_$l1"
done
