"""Helpers to run the chain in process on the small demo world (shared by the test modules)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["demo_world", "dataset_index", "prototypes", "template_features", "extra_template_features",
               "capability", "assignments", "teacher_features", "extra_teacher_features", "distill", "point_features",
               "label", "evaluate"]


def small_params(**changes) -> dict:
    """The repository's params.yaml, shrunk for tests, with section-level overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo_world"]["size"] = "small"
    params["prototypes"]["images_per_class"] = 2
    # One epoch of a few steps: no warm-up (the reference's k / W would spend them at lr ~ 0).
    params["distill"].update(epochs=1, batch_size=2, max_points=4000, warmup_epochs=0.0)
    params["evaluate"]["preview_scans"] = 1
    for name in ("linear_probe", "finetune", "inject", "self_train"):  # segmenters/dvc.yaml: a few steps
        if name in params:
            params[name].update(epochs=2, max_points=1000)
    for section, value in changes.items():
        params[section] = value
    return params


@contextmanager
def inside(folder: Path):
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(previous)


def run_stage(name: str, *args: str) -> None:
    module = __import__(f"stages.{name}", fromlist=["main"])
    module.main(list(args))


def run_chain(folder: Path, params: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with inside(folder):
        for stage in STAGE_ORDER:
            if stage == "prototypes":
                for class_name in params["vocabulary"]:
                    run_stage("prototypes", class_name)
            else:
                run_stage(stage)


def tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def write_params(folder: Path, params: dict) -> Path:
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder / "params.yaml"


# ------------------------------------------------------------------ DVC in scratch git clones

# What a scratch clone takes from the working tree, committed or not (the rest comes from git).
SEGMENTERS_SWITCH = "/segmenters/\n"  # the line of .dvcignore that keeps segmenters/dvc.yaml off
WORKING_TREE = ("pipeline", "stages", "presets", "scripts", "segmenters", "dvc.yaml", "params.yaml", ".dvcignore")


def scratch_clone(folder: Path, params: dict) -> Path:
    """A git clone of the project at `folder`, with the working tree's code and dvc.yaml and
    `params` as its params.yaml: a workspace where `dvc repro` may run."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True)
    for path in WORKING_TREE:
        source = REPO / path
        if source.is_dir():
            shutil.rmtree(folder / path, ignore_errors=True)  # absent from the clone when not committed yet
            shutil.copytree(source, folder / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, folder / path)
    write_params(folder, params)
    return folder


def run_dvc(folder: Path, *args: str, path_first: Path | None = None,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`dvc <args>` in `folder` with the venv's bin on PATH (stage commands run `python`);
    `path_first` goes before it (see `stage_tripwire`); `env_extra` adds environment
    variables. Returns the finished process."""
    bin_dir = Path(sys.executable).parent
    path = os.pathsep.join(str(p) for p in (path_first, bin_dir, os.environ["PATH"]) if p)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PATH=path, **(env_extra or {}))
    return subprocess.run([str(bin_dir / "dvc"), *args], cwd=folder, env=env, capture_output=True, text=True)


def dvc_ok(folder: Path, *args: str, path_first: Path | None = None) -> str:
    """`run_dvc` that must succeed; returns its stdout."""
    result = run_dvc(folder, *args, path_first=path_first)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def stage_tripwire(folder: Path) -> tuple[Path, Path]:
    """A folder holding a `python` (and a `torchrun`) that log their arguments and fail, and
    the log they write.

    Put the folder first on PATH (`run_dvc(..., path_first=...)`): every stage command
    (`python -m stages.<name>`) then fails and leaves a line in the log instead of running,
    so a test sees that no stage ran without trusting dvc's own report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "stage_runs.log"
    for name in ("python", "torchrun"):
        program = folder / name
        program.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
                           f'echo "tripwire: a stage ran: {name} $*" >&2\nexit 97\n')
        program.chmod(0o755)
    return folder, log


def switch_on_segmenters(folder: Path) -> None:
    """What the README says to do: delete `/segmenters/` from .dvcignore, so DVC sees
    segmenters/dvc.yaml."""
    ignore = folder / ".dvcignore"
    text = ignore.read_text()
    assert SEGMENTERS_SWITCH in text, f"{ignore} does not switch the segmenter stages off"
    ignore.write_text(text.replace(SEGMENTERS_SWITCH, ""))
