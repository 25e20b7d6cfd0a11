#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/pages) when it is missing.
# Playwright drives this system browser; its own browser download is never used.
set -euo pipefail
chromium="${TB_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "No Chromium at $chromium and no apt-get: install Chromium and set TB_CHROMIUM." >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
