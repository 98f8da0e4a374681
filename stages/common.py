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
from typing import Iterator

from pipeline.config import DatasetParams, Params, load_params

log = logging.getLogger("stages")

PARAMS_FILE = Path("params.yaml")
CACHE = Path("cache")
METRICS = Path("metrics")
PLOTS = Path("plots")


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


def open_reader(dataset: DatasetParams, split: str, **options):
    """The scan reader for one split of the dataset that params select."""
    if dataset.format == "nuscenes":
        from pipeline.datasets.nuscenes import NuScenesReader

        return NuScenesReader(dataset.root, dataset.version, split, **options)
    from pipeline.datasets.semantic_kitti import SemanticKittiReader

    return SemanticKittiReader(dataset.root, split, **options)


def intensity_stats(dataset: DatasetParams):
    """The intensity standardisation of the dataset: params override the reference values."""
    from pipeline.students.point_inputs import INTENSITY_STATS, IntensityStats

    reference = INTENSITY_STATS[dataset.format]
    return IntensityStats(
        mean=reference.mean if dataset.intensity_mean is None else dataset.intensity_mean,
        std=reference.std if dataset.intensity_std is None else dataset.intensity_std,
    )
