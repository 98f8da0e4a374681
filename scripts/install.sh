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
#   6. The `dvc plots show` page (.dvc/plots_page/page.html, set in .dvc/config) loads vega,
#      vega-lite and vega-embed from .dvc/plots_page/vendor/ (git-ignored) so its charts render
#      offline. The three files come from the PyPI wheel django-js-lib-vega-embed (pinned by
#      hash), which ships the official npm builds: vega 5.33.0, vega-lite 5.23.0, vega-embed
#      6.29.0, byte for byte the npm packages' build/*.min.js less the source-map comment. Only
#      those files are taken (pip download + unzip); nothing is installed into the venv. They
#      are refetched when missing, even when the stamp says the rest is up to date.
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

VEGA_DIR=.dvc/plots_page/vendor
VEGA_PIN="django-js-lib-vega-embed==6.29.0.3"
VEGA_SHA=995b3dcd5d8a4b4d1b87503515dd5a1a7ab6b309a0758f951c36fa8d2e06c582
vega_ok() {
  [ "$(cat "$VEGA_DIR/SOURCE" 2>/dev/null)" = "$VEGA_PIN" ] &&
    [ -s "$VEGA_DIR/vega.min.js" ] && [ -s "$VEGA_DIR/vega-lite.min.js" ] && [ -s "$VEGA_DIR/vega-embed.min.js" ]
}
install_vega() {
  echo "[install] vega scripts for the offline plots page ($VEGA_PIN -> $VEGA_DIR)"
  local tmp
  tmp=$(mktemp -d)
  echo "$VEGA_PIN --hash=sha256:$VEGA_SHA" > "$tmp/requirements.txt"
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel"
  "$VENV/bin/python" - "$tmp"/wheel/*.whl "$VEGA_DIR" "$VEGA_PIN" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, out, pin = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
out.mkdir(parents=True, exist_ok=True)
inside = "js_lib_vega_embed/static/js_lib_vega_embed/"
with zipfile.ZipFile(wheel) as z:
    for source, target in [("vega5.js", "vega.min.js"), ("vega-lite5.js", "vega-lite.min.js"),
                           ("vega-embed6.js", "vega-embed.min.js")]:
        (out / (target + ".part")).write_bytes(z.read(inside + source))
        (out / (target + ".part")).replace(out / target)
(out / "SOURCE").write_text(pin + "\n")
PY
  rm -rf "$tmp"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] && [ -x "$VENV/bin/python" ]; then
  vega_ok || install_vega
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

vega_ok || install_vega

echo "$wanted" > "$STAMP"
echo "[install] done in $(( $(date +%s) - start )) s"
