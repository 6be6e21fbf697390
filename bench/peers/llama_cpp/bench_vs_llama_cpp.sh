#!/usr/bin/env bash
# mechlens against llama.cpp on the same GGUF files, interleaved: for each round, each file and each tool in turn,
# prefill of 128 tokens (llama-bench's pp128) and 128 decoded tokens (tg128) at 1 and 2 threads. Files: random
# LLaMAs of the stories15M and LLaMA-110M shapes (make_shape_gguf.py) as F32, as Q8_0 (`mechlens quantize`, which
# llama-quantize matches byte for byte) and as Q4_K_M (llama-quantize). The F32 files are also run by a PyTorch
# reference LLaMA (bench/peers/pytorch/llama_reference.py, the third tool of each round; skipped when PYTORCH=0 or
# when Debian's python3 has no torch). Prints the median tokens/s of each tool and the ratios mechlens / llama.cpp
# and, for F32, mechlens / PyTorch.
#
#   bench/peers/llama_cpp/bench_vs_llama_cpp.sh LLAMA_CPP_DIR [ROUNDS]
#
# LLAMA_CPP_DIR: a llama.cpp source tree outside this repository (e.g. one brought by `fetch` and unpacked in /tmp);
# llama-bench and llama-quantize are built in LLAMA_CPP_DIR/build when missing. Needs the Release build's
# build/tools/mechlens and the bench preset's build-bench/bench/mechlens_bench_model (cmake --preset bench, then
# cmake --build --preset bench --target mechlens_bench_model), and Debian's
# python3 with numpy. Files go to $BENCH_WORK (default /tmp/mechlens_vs_llama_cpp) and are reused.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
llama=$(cd "${1:?usage: bench_vs_llama_cpp.sh LLAMA_CPP_DIR [ROUNDS]}" && pwd)
rounds=${2:-3}
mechlens=${MECHLENS:-$repo/build/tools/mechlens}
bench=${MECHLENS_BENCH_MODEL:-$repo/build-bench/bench/mechlens_bench_model}
work=${BENCH_WORK:-/tmp/mechlens_vs_llama_cpp}
pytorch=${PYTORCH:-1}
[ "$pytorch" = 0 ] || /usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "no torch in /usr/bin/python3: no PyTorch column"; pytorch=0; }
# Debian's torch multiplies through the system BLAS: the reference BLAS (libblas3 alone) is 20-40 times slower than
# OpenBLAS, which would make the PyTorch column meaningless.
if [ "$pytorch" != 0 ] && readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null | grep -q '/blas/libblas'; then
    echo "warning: the system BLAS is the reference BLAS; install libopenblas0-pthread for a fair PyTorch column"
fi
mkdir -p "$work"
for tool in "$mechlens" "$bench"; do [ -x "$tool" ] || { echo "missing $tool (make build; cmake --preset bench && cmake --build --preset bench --target mechlens_bench_model)"; exit 1; }; done
if [ ! -x "$llama/build/bin/llama-bench" ] || [ ! -x "$llama/build/bin/llama-quantize" ]; then
    cmake -S "$llama" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
    cmake --build "$llama/build" -j"$(nproc)" --target llama-bench llama-quantize >/dev/null
fi

files=()
for shape in stories15M llama110M; do
    f32="$work/${shape}_f32.gguf"
    [ -f "$f32" ] || /usr/bin/python3 "$here/make_shape_gguf.py" --gguf-py "$llama/gguf-py" --shape "$shape" --out "$f32"
    [ -f "$work/${shape}_q8_0.gguf" ] || "$mechlens" quantize --model "$f32" --out "$work/${shape}_q8_0.gguf" >/dev/null
    [ -f "$work/${shape}_q4_k_m.gguf" ] ||
        "$llama/build/bin/llama-quantize" "$f32" "$work/${shape}_q4_k_m.gguf" Q4_K_M >/dev/null 2>&1
    files+=("$f32" "$work/${shape}_q8_0.gguf" "$work/${shape}_q4_k_m.gguf")
done

results="$work/results.csv"
echo "round,tool,file,test,threads,tokens_per_second" >"$results"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(date -u)"
for round in $(seq 1 "$rounds"); do
    for f in "${files[@]}"; do
        name=$(basename "$f")
        "$llama/build/bin/llama-bench" -m "$f" -p 128 -n 128 -t 1,2 -r 1 -o csv 2>/dev/null |
            /usr/bin/python3 -c '
import csv, sys
for row in csv.DictReader(sys.stdin):
    test = "prefill128" if int(row["n_prompt"]) > 0 else "decode128"
    threads, rate = row["n_threads"], row["avg_ts"]
    print(f"{sys.argv[1]},llama.cpp,{sys.argv[2]},{test},{threads},{rate}")
' "$round" "$name" >>"$results"
        MECHLENS_BENCH_FILES="$f" "$bench" --benchmark_filter='_file/' --benchmark_format=csv 2>/dev/null |
            /usr/bin/python3 -c '
import csv, sys
lines = [l for l in sys.stdin if l.startswith("name,") or l.startswith("\"BM_")]
for row in csv.DictReader(lines):
    test = "prefill128" if "prefill" in row["name"] else "decode128"
    threads = row["name"].split("threads:")[1].split("/")[0]
    rate = row["tok/s"]
    print(f"{sys.argv[1]},mechlens,{sys.argv[2]},{test},{threads},{rate}")
' "$round" "$name" >>"$results"
        if [ "$pytorch" != 0 ] && [[ "$name" == *_f32.gguf ]]; then
            /usr/bin/python3 "$repo/bench/peers/pytorch/llama_reference.py" --bench "$f" --threads 1,2 \
                --prefill 128 --decode 128 | sed "s/^/$round,/" >>"$results"
        fi
    done
    echo "round $round of $rounds done"
done

/usr/bin/python3 - "$results" <<'PY'
import csv, sys
from collections import defaultdict
from statistics import median
rates = defaultdict(list)
for row in csv.DictReader(open(sys.argv[1])):
    rates[(row["file"], row["test"], row["threads"], row["tool"])].append(float(row["tokens_per_second"]))
torch = any(k[3] == "pytorch" for k in rates)
extra_head, extra_rule = (" PyTorch tok/s | mechlens / PyTorch |", "---|---|") if torch else ("", "")
print(f"\n| file | test | threads | mechlens tok/s | llama.cpp tok/s | mechlens / llama.cpp |{extra_head}")
print(f"|---|---|---|---|---|---|{extra_rule}")
for file, test, threads in sorted({k[:3] for k in rates}, key=lambda k: (k[0], k[1] != "prefill128", k[2])):
    ours, theirs = rates.get((file, test, threads, "mechlens")), rates.get((file, test, threads, "llama.cpp"))
    if not ours or not theirs:
        continue
    extra = ""
    if torch:
        peer = rates.get((file, test, threads, "pytorch"))
        extra = f" {median(peer):,.1f} | {median(ours) / median(peer):.2f} |" if peer else " - | - |"
    print(f"| {file} | {test} | {threads} | {median(ours):,.1f} | {median(theirs):,.1f} | "
          f"{median(ours) / median(theirs):.2f} |{extra}")
print(f"\nmedians of {len(next(iter(rates.values())))} interleaved rounds; raw rows in {sys.argv[1]}")
PY
