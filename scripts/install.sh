#!/usr/bin/env bash
# Creates .venv (when missing) and installs the project with every dependency.
#
# Idempotent: a stamp file records a hash of the install inputs; when nothing changed
# a second run returns in well under a second and touches nothing.
#
# Installer: uv (pinned, installed into the venv with pip), through its pip interface with the
# same constraints as pip. It downloads and unpacks wheels in parallel and links them from its
# cache (~/.cache/uv). On the 2-core dev machine, from cold caches and back to back, a fresh venv
# took 44 s this way and 156 s with pip alone (which also compiles every file serially).
#   - uv does not read pip's configuration, so the index options pip is configured with
#     (`pip config list`: index-url, extra-index-url, find-links, constraint, no-index, cert) are
#     handed to uv as flags; that is how uv finds the same wheels as pip (here the CPU torch build
#     that lies on disk). `--index-strategy unsafe-best-match` makes uv pick, like pip, the highest
#     version over all indexes, not the first index that has the package.
#   - uv writes no bytecode, and nothing here compiles the whole venv (compileall took 28 of the
#     41 s of a fresh install, mostly for modules no stage imports). scripts/demo.sh and
#     scripts/test.sh let Python write each module's bytecode the first time it is imported
#     (they unset PYTHONDONTWRITEBYTECODE; .dvcignore keeps __pycache__ out of the stages' code
#     dependencies), so what runs is compiled once and the rest never.
#   - IGLOSS_INSTALLER=pip installs with pip alone, as before (slower; same environment).
#
# Install traps handled here (measured; see shared ENVIRONMENT.md):
#   1. torch is pinned (constraints.txt), so no dependency can make the installer swap the CPU
#      build for a CUDA build plus several GB of nvidia-* wheels.
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
INSTALLER=${IGLOSS_INSTALLER:-uv}
UV_PIN=uv==0.13.9
STAMP="$VENV/.igloss-install-stamp"

inputs_hash() {
  cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1
  echo "$TORCH_MODE $INSTALLER"
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

if [ "$INSTALLER" = uv ]; then
  "${PIP[@]}" "$UV_PIN"
  # pip's effective index options, as uv flags (one per line); later config sections win, as in pip.
  mapfile -t UV_INDEX < <("$VENV/bin/python" - <<'PY'
import ast, subprocess, sys
listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True).stdout
sections = {}
for line in listing.splitlines():
    key, eq, value = line.partition("=")
    section, dot, name = key.partition(".")
    if eq and dot:
        sections.setdefault(section, {})[name] = ast.literal_eval(value)
config = {}
for section in ("global", "install", ":env:"):
    config.update(sections.get(section, {}))
for name, flag in [("index-url", "--index-url"), ("extra-index-url", "--extra-index-url"),
                   ("find-links", "--find-links"), ("constraint", "--constraint"), ("cert", "--cert")]:
    for value in config.get(name, "").split():
        print(flag)
        print(value)
if config.get("no-index", "").lower() in ("1", "true", "yes", "on"):
    print("--no-index")
PY
  )
  install() {
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" \
      --index-strategy unsafe-best-match "${UV_INDEX[@]}" "$@"
  }
else
  install() { "${PIP[@]}" "$@"; }
fi

constraints=constraints.txt
if [ "$TORCH_MODE" = keep ]; then
  # Keep the user's torch: constrain to the installed versions instead of ours.
  tv=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  echo "[install] keeping the torch already in $VENV: $tv"
  constraints=$(mktemp)
  grep -v -E '^(torch|torchvision)==' constraints.txt > "$constraints"
  echo "torch==$tv" >> "$constraints"
fi

echo "[install] project and dependencies (with $INSTALLER; torch pinned by $constraints)"
install -c "$constraints" -e ".[test,sparse]"
echo "[install] nuscenes-devkit (--no-deps: it pins numpy<2 but runs on numpy 2)"
install --no-deps nuscenes-devkit==1.2.0

vega_ok || install_vega

echo "$wanted" > "$STAMP"
echo "[install] done in $(( $(date +%s) - start )) s"
