"""What every stage shares: params loading, logging, the summary line, dataset readers.

Path policy lives here and in the stage modules, never in `pipeline/`.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

from pipeline.config import DatasetParams, Params, load_params

log = logging.getLogger("stages")

PARAMS_FILE = Path("params.yaml")
CACHE = Path("cache")
METRICS = Path("metrics")
PLOTS = Path("plots")

# Where every stage's artifact lives (the `outs` of dvc.yaml).
DEMO_ROOT = Path("data/demo")
PROTOTYPES = CACHE / "prototypes"  # /<class>/
PROTOTYPE_PICTURES = PLOTS / "prototypes"
TEMPLATES_FILE = CACHE / "template_features" / "templates.safetensors"
ASSIGNMENTS = CACHE / "assignments"  # /<split key>/ (SplitSource.key)
TEACHER_FEATURES = CACHE / "teacher_features"  # /<split key>/{patches,taps}
STUDENT = CACHE / "student"
LOSS_LOG = PLOTS / "distill" / "train_loss.csv"
LOSS_PICTURE = PLOTS / "distill" / "train_loss.png"
POINT_FEATURES = CACHE / "point_features"  # /<split>/
PREDICTIONS = CACHE / "predictions"  # /<split>/
PICTURES = PLOTS / "evaluate"


@dataclass(frozen=True)
class SplitSource:
    """One split of one dataset that assignments and teacher features are made for.

    key: its folder under cache/assignments and cache/teacher_features: the split name for the
    main `dataset`, `<split>@<name>` for an entry of `distill_datasets`.
    """

    key: str
    dataset: DatasetParams
    split: str


def distill_sources(params: Params) -> list[SplitSource]:
    """What distillation learns from: the main dataset's distill split, then each of
    `distill_datasets` (its own distill split, read with its own format and intensity stats)."""
    main = SplitSource(params.dataset.distill_split, params.dataset, params.dataset.distill_split)
    return [main] + [SplitSource(f"{d.distill_split}@{name}", d, d.distill_split)
                     for name, d in params.distill_datasets.items()]


def split_sources(params: Params) -> list[SplitSource]:
    """Every split the assignments and teacher features are made for: the distillation sources
    and the main dataset's evaluation split (the 2D baseline reads it)."""
    sources = distill_sources(params)
    if params.dataset.eval_split != params.dataset.distill_split:
        sources.insert(1, SplitSource(params.dataset.eval_split, params.dataset, params.dataset.eval_split))
    return sources


def stage_arguments(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage has (--params, --verbose)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return parser


def start_stage(name: str, args: argparse.Namespace) -> Params:
    """Set up logging and load the validated params; call first in every stage's main."""
    level = logging.DEBUG if args.verbose or os.environ.get("IGLOSS_VERBOSE") else logging.INFO
    logging.basicConfig(level=level, format=f"[{name}] %(message)s", force=True)
    for noisy in ("urllib3", "PIL", "matplotlib", "filelock", "h5py", "numcodecs", "zarr", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return load_params(args.params)


@contextmanager
def summary(name: str) -> Iterator[dict]:
    """Time a stage and end it with one summary line built from what it filled in."""
    facts: dict = {}
    start = time.perf_counter()
    yield facts
    parts = ", ".join(f"{key}: {value}" for key, value in facts.items())
    log.info("done in %.1f s. %s", time.perf_counter() - start, parts)


def human_size(path: Path) -> str:
    path = Path(path)
    total = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    for unit in ("B", "KiB", "MiB", "GiB"):
        if total < 1024 or unit == "GiB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1024
    return f"{total} B"
