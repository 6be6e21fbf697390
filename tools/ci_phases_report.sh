#!/usr/bin/env bash
# Prints the record .ci/run keeps of its phases (build, sanitize, fuzz, ...) and fails when one of them failed, was
# cut at its time limit or did not run. CTest runs it as `ci:earlier_phases`, so a CI log, which ends with ctest's
# summary, names a failed phase in that summary's list of failed tests. Outside a CI run there is no record: it passes.
set -euo pipefail
record="${1:?usage: ci_phases_report.sh RECORD_FILE}"
if [ ! -f "$record" ]; then
    echo "no CI phase record at $record (.ci/run writes one): nothing to report"
    exit 0
fi
cat "$record"
if grep -q -v ' ok$' "$record"; then
    echo "CI phases that did not pass:"
    grep -v ' ok$' "$record"
    exit 1
fi
