#!/usr/bin/env bash
# The README's test command (`.ci/run` calls it): install what the tests need, then run them.
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/test_serve_page.py drives the served page in headless Chromium: Debian's browser and its
# driver, installed here where missing (as root, or through sudo; the first time takes a minute or two).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "test.sh: installing chromium and chromium-driver with apt-get"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log=$(mktemp)
    if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >"$log" 2>&1; then
        cat "$log"
        echo "test.sh: apt-get could not install chromium and chromium-driver" >&2
        exit 1
    fi
    rm -f "$log"
fi
pip install -q -r requirements-test.txt
python -m pytest -q
