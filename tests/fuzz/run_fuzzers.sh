#!/usr/bin/env bash
# Runs every libFuzzer harness for SECONDS seconds on a working corpus in the build tree.
#
# Usage: tests/fuzz/run_fuzzers.sh BUILD_DIR SECONDS
#   BUILD_DIR: a tree configured with the 'fuzz' preset and built (holds tests/fuzz/fuzz_*).
#   Environment: FUZZ_JOBS (harnesses run at once, default 2), MECHLENS_MODELS (real models for the seeds),
#   FUZZ_HARNESSES (space-separated subset, default all eleven).
# Layout under BUILD_DIR/fuzz/: seeds/<h> (rebuilt every run), corpus/<h> (kept and grown across runs),
# artifacts/<h> (crash-*, leak-*, timeout-*, oom-* inputs), logs/<h>.log.
# Prints "fuzz <h>: N executions, M corpus units, crashes K" per harness and a total; exits 1 when any harness
# found a crash, leak, timeout or out-of-memory input, or failed to run.
set -u -o pipefail

if [ $# -ne 2 ] || ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ]; then
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
fi
build=$(cd "$1" && pwd) || exit 2
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
jobs=${FUZZ_JOBS:-2}
harnesses=${FUZZ_HARNESSES:-"fuzz_llama2c fuzz_gguf fuzz_safetensors fuzz_npy fuzz_llama2c_tokenizer fuzz_torch_pt fuzz_json fuzz_gpt2_vocab fuzz_hf_config fuzz_sae_config fuzz_transcoder_file"}
work="$build/fuzz"

for h in $harnesses; do
    if [ ! -x "$build/tests/fuzz/$h" ]; then
        echo "run_fuzzers: $build/tests/fuzz/$h is missing: configure and build with the 'fuzz' preset first" >&2
        exit 2
    fi
done
python3 "$here/make_seeds.py" "$build" || exit 2

run_one() {
    local h=$1
    local corpus="$work/corpus/$h" artifacts="$work/artifacts/$h" log="$work/logs/$h.log"
    mkdir -p "$corpus" "$artifacts" "$work/logs"
    cp -n "$work/seeds/$h"/* "$corpus"/ 2>/dev/null
    # Seeds are merged into the working corpus; the seed directory itself is never written.
    "$build/tests/fuzz/$h" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -malloc_limit_mb=64 -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
    echo $? >"$work/logs/$h.rc"
}

rm -f "$work"/logs/*.rc 2>/dev/null
running=0
for h in $harnesses; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
    echo "run_fuzzers: $h for ${seconds}s (log $work/logs/$h.log)"
    run_one "$h" &
    running=$((running + 1))
done
wait

status=0
total_execs=0
total_units=0
total_bad=0
for h in $harnesses; do
    log="$work/logs/$h.log"
    rc=$(cat "$work/logs/$h.rc" 2>/dev/null || echo 99)
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    units=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' "$log" | tail -n 1)
    execs=${execs:-0}
    units=${units:-$(find "$work/corpus/$h" -type f | wc -l)}
    bad=0
    for a in "$work/artifacts/$h"/crash-* "$work/artifacts/$h"/leak-* "$work/artifacts/$h"/timeout-* \
             "$work/artifacts/$h"/oom-*; do
        # Only artifacts written by this run count; older ones stay for inspection.
        if [ -e "$a" ] && [ "$a" -nt "$work/seeds/$h" ]; then
            bad=$((bad + 1))
            echo "fuzz $h: artifact $a"
        fi
    done
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        bad=1
        echo "fuzz $h: exited with status $rc without an artifact; see $log"
    fi
    echo "fuzz ${h#fuzz_}: $execs executions, $units corpus units, crashes $bad"
    total_execs=$((total_execs + execs))
    total_units=$((total_units + units))
    total_bad=$((total_bad + bad))
    [ "$bad" -ne 0 ] && status=1
done
echo "fuzz total: $total_execs executions, $total_units corpus units, crashes $total_bad"
if [ "$status" -ne 0 ]; then
    echo "fuzz: FAILED (reproduce: $build/tests/fuzz/<harness> <artifact>)"
fi
exit $status
