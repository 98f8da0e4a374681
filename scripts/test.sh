#!/usr/bin/env bash
# The README's test command: set everything up (idempotent), then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k geometry`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
unset PYTHONDONTWRITEBYTECODE  # bytecode written once, on first import (scripts/install.sh)
export HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
# The offline-plots check (tests/test_plots_offline.py) draws the page in a headless Chromium. Where
# none is found and this is root with apt-get (a fresh CI container), Debian's is installed; anywhere
# else the check is skipped, saying how to get one.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
        && ! command -v google-chrome >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test] installing Debian's chromium (apt-get) for the offline plots check"
    (export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) \
        || echo "[test] chromium could not be installed: tests/test_plots_offline.py skips its drawing check"
fi
exec .venv/bin/python -m pytest -n 2 "$@"
