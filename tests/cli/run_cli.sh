#!/usr/bin/env bash
# Runs one CLI invocation and checks it: run_cli.sh EXPECTED_EXIT STDOUT_REGEX STDERR_REGEX NEEDED_FILE -- COMMAND...
# A regex of "-" is not checked.
# NEEDED_FILE ("-" for none) missing => prints SKIPPED and exits 77 (CTest's SKIP_RETURN_CODE for these tests).
# A failing invocation (exit 2) must print exactly one line on stderr. Regexes are PCRE (grep -P) over the whole
# stream: "." matches newlines too, and a newline in a regex must be one in the output.
set -uo pipefail
expected_exit=$1 stdout_regex=$2 stderr_regex=$3 needed=$4
shift 4
[ "$1" = "--" ] && shift
if [ "$needed" != "-" ] && [ ! -e "$needed" ]; then
    echo "SKIPPED: $needed not found (set MECHLENS_MODELS to the shared models directory)"
    exit 77
fi
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
"$@" >"$out" 2>"$err"
status=$?
echo "--- exit $status; stdout:"; head -c 4000 "$out"; echo; echo "--- stderr:"; cat "$err"
fail() { echo "FAIL: $*"; exit 1; }
[ "$status" -eq "$expected_exit" ] || fail "exit code $status, expected $expected_exit"
# "-" means "not checked"; regexes see the whole stream as one string (grep -z), so ".*" spans lines. A newline in
# a regex is a newline of the output: grep -E would split the regex there into alternatives (any one matching), so
# the regex goes to grep -P (PCRE, whose syntax covers the extended regexes used here) with newlines as \n and
# (?s) so that "." still matches one.
matches() { [ "$1" = "-" ] || grep -Pzq -- "(?s)${1//$'\n'/\\n}" "$2"; }
matches "$stdout_regex" "$out" || fail "stdout does not match /$stdout_regex/"
matches "$stderr_regex" "$err" || fail "stderr does not match /$stderr_regex/"
if [ "$expected_exit" -eq 2 ]; then
    [ "$(wc -l <"$err")" -eq 1 ] || fail "an error must be exactly one line on stderr"
fi
echo "PASS"
