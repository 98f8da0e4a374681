"""Switch `params.yaml` to a preset, or back to the demo (not a DVC stage).

    python -m stages.preset               # list the presets; say which one params.yaml is
    python -m stages.preset nuscenes      # switch to presets/nuscenes.yaml
    python -m stages.preset demo          # back to the demo world

A preset is a complete params file in `presets/`; switching copies it over `params.yaml`
(validated first, so a broken preset never lands). A params file with edits of its own is kept
before it is replaced, as `params.previous.yaml`, or `params.previous.2.yaml`, `.3`, ... when
that name holds other edits already, so no switch ever overwrites earlier edits (git ignores
them all). DVC then sees changed params and
`dvc repro` reruns what they touch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pipeline.store.atomic import atomic_output
from stages.common import PARAMS_FILE, load_project_params, run_command

PRESETS = Path("presets")
PREVIOUS = Path("params.previous.yaml")


def preset_files(folder: Path = PRESETS) -> dict[str, Path]:
    """Preset name -> file, in name order."""
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def current_preset(params_file: Path = PARAMS_FILE, folder: Path = PRESETS) -> str | None:
    """The preset `params_file` is a byte-identical copy of, or None if it was edited."""
    if not params_file.is_file():
        return None
    content = params_file.read_bytes()
    return next((name for name, path in preset_files(folder).items() if path.read_bytes() == content), None)


def keep_edits(params_file: Path) -> Path:
    """Copy `params_file` to the first free `params.previous[.N].yaml` beside it (or to the one
    that already holds the same bytes) and return that path."""
    content = params_file.read_bytes()
    for number in range(1, 10_000):
        suffix = "" if number == 1 else f".{number}"
        kept = params_file.with_name(f"{PREVIOUS.stem}{suffix}{PREVIOUS.suffix}")
        if not kept.exists():
            with atomic_output(kept) as tmp:
                tmp.write_bytes(content)
            return kept
        if kept.read_bytes() == content:
            return kept
    raise SystemExit(f"{params_file.parent}: 10,000 kept params files; delete the params.previous.*.yaml you no longer need")


def switch(name: str, params_file: Path = PARAMS_FILE, folder: Path = PRESETS) -> Path | None:
    """Copy preset `name` over `params_file`; returns where the old params were kept (or None)."""
    presets = preset_files(folder)
    if name not in presets:
        raise SystemExit(f"{folder}/{name}.yaml: no such preset; choose one of {', '.join(presets)}")
    load_project_params(presets[name])  # a preset that does not validate never replaces params.yaml
    kept = None
    if params_file.is_file() and current_preset(params_file, folder) is None:  # edits of its own
        kept = keep_edits(params_file)
    with atomic_output(params_file) as tmp:
        shutil.copyfile(presets[name], tmp)
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="preset to switch to (a file stem in presets/)")
    args = parser.parse_args(argv)
    if args.name is None:
        now = current_preset()
        for name, path in preset_files().items():
            marker = "*" if name == now else " "
            print(f"{marker} {name:<16} {path}")
        if now is None:
            print(f"  ({PARAMS_FILE} matches no preset: it has edits of its own)")
        return
    kept = switch(args.name)
    print(f"{PARAMS_FILE} is now {PRESETS / args.name}.yaml"
          + (f"; the previous params are kept in {kept}" if kept else ""))
    print("next: dvc repro (see README, 'Run on real data', for where the data and weights go)",
          file=sys.stderr)


if __name__ == "__main__":
    run_command(main)
