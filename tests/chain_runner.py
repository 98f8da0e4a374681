"""Helpers to run the chain in process on the small demo world (shared by the test modules)."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["demo_world", "prototypes", "template_features", "assignments", "teacher_features",
               "distill", "point_features", "label", "evaluate"]


def small_params(**changes) -> dict:
    """The repository's params.yaml, shrunk for tests, with section-level overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo_world"]["size"] = "small"
    params["prototypes"]["images_per_class"] = 2
    params["distill"].update(epochs=1, batch_size=2, max_points=4000)
    params["evaluate"]["preview_scans"] = 1
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
