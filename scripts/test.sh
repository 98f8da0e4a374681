#!/usr/bin/env bash
# The README's test command: set everything up (idempotent), then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k geometry`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
unset PYTHONDONTWRITEBYTECODE  # bytecode written once, on first import (scripts/install.sh)
export HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -n 2 "$@"
