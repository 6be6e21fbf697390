#!/usr/bin/env bash
# Exits 0 when this CPU can run code built for the x86-64 micro-architecture level $1 (x86-64-v3: AVX2, FMA, BMI2;
# x86-64-v4: AVX-512 F/BW/CD/DQ/VL), 1 otherwise. Reads /proc/cpuinfo's flags.
set -euo pipefail
case "$1" in
    x86-64-v3) need="avx avx2 bmi1 bmi2 f16c fma movbe xsave" ;;
    x86-64-v4) need="avx avx2 bmi1 bmi2 f16c fma movbe xsave avx512f avx512bw avx512cd avx512dq avx512vl" ;;
    *) echo "cpu_supports.sh: unknown level $1" >&2; exit 2 ;;
esac
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
for f in $need; do [[ "$flags" == *" $f "* ]] || exit 1; done
exit 0
