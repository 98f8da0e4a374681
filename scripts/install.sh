#!/usr/bin/env bash
# Creates .venv (when missing) and installs the project with every dependency.
#
# Idempotent: a stamp file records a hash of the install inputs; when nothing changed
# a second run returns in well under a second and touches nothing.
#
# Install traps handled here (measured; see shared ENVIRONMENT.md):
#   1. torch is installed first and pinned (constraints.txt), so no dependency can make
#      pip swap the CPU build for a CUDA build plus several GB of nvidia-* wheels.
#   2. torchvision is pinned to the one release that fits torch 2.13 (timm wants it).
#   3. torchvision 0.28.0 is a CUDA build; pipeline/compat.py registers the op schemas it
#      needs on CPU-only torch. Nothing to do here.
#   4. nuscenes-devkit pins numpy<2 but runs on numpy 2: installed with --no-deps, its real
#      runtime dependencies are listed in pyproject.toml.
#   5. spconv-cu120 (the sparse student) is large; it is imported lazily by the code.
#
# Own torch (e.g. a CUDA build on a GPU machine): install it into .venv first, then run
#   IGLOSS_TORCH=keep bash scripts/install.sh
# which skips the torch pin and keeps whatever torch is importable in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${IGLOSS_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_MODE=${IGLOSS_TORCH:-pin}
STAMP="$VENV/.igloss-install-stamp"

inputs_hash() {
  cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1
  echo "$TORCH_MODE"
}
wanted="$(inputs_hash)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

constraints=constraints.txt
if [ "$TORCH_MODE" = keep ]; then
  # Keep the user's torch: constrain to the installed versions instead of ours.
  tv=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  echo "[install] keeping the torch already in $VENV: $tv"
  constraints=$(mktemp)
  grep -v -E '^(torch|torchvision)==' constraints.txt > "$constraints"
  echo "torch==$tv" >> "$constraints"
else
  echo "[install] torch (pinned CPU build first)"
  "${PIP[@]}" -c constraints.txt torch==2.13.0 "numpy>=2"
fi

echo "[install] project and dependencies"
"${PIP[@]}" -c "$constraints" -e ".[test,sparse]"
echo "[install] nuscenes-devkit (--no-deps: it pins numpy<2 but runs on numpy 2)"
"${PIP[@]}" --no-deps nuscenes-devkit==1.2.0

echo "$wanted" > "$STAMP"
echo "[install] done in $(( $(date +%s) - start )) s"
