#!/usr/bin/env bash
# The README's main command: set everything up (idempotent), then run the whole IGLOSS
# chain on the demo world with DVC, print the metrics and name the pictures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
unset PYTHONDONTWRITEBYTECODE  # bytecode written once, on first import (scripts/install.sh)
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
start=$(date +%s)
dvc repro "$@"
echo
echo "== metrics (metrics/metrics.json) =="
python -m stages.report
echo
echo "dvc repro took $(( $(date +%s) - start )) s"
