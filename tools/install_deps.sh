#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are missing, as root directly, else through
# passwordless sudo, else prints the apt-get command to run and fails. ccache is optional: installed when possible,
# never required. Used by every Makefile entry point, so a fresh machine needs nothing beforehand.
set -euo pipefail
missing=""
for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
optional=""
dpkg -s ccache >/dev/null 2>&1 || optional=" ccache"
[ -z "$missing$optional" ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"
elif [ -n "$missing" ]; then
    echo "mechlens needs Debian packages that are not installed:$missing"
    echo "Install them with:"
    echo "  sudo apt-get install -y$missing"
    exit 1
else exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if [ -n "$missing" ]; then
    echo "Installing$missing$optional ..."
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
    for p in $missing; do dpkg -s "$p" >/dev/null 2>&1 || { echo "apt-get did not install $p"; exit 1; }; done
fi
if [ -n "$optional" ]; then
    # shellcheck disable=SC2086
    { $sudo apt-get install -y -qq --no-install-recommends $optional >/dev/null 2>&1 ||
        { $sudo apt-get update -qq >/dev/null 2>&1 &&
            $sudo apt-get install -y -qq --no-install-recommends $optional >/dev/null 2>&1; }; } ||
        echo "note: could not install$optional (optional); building without it"
fi
