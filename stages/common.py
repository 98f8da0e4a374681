"""What every stage shares: params loading, logging, the summary line, dataset readers.

Path policy lives here and in the stage modules, never in `pipeline/`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator

import yaml

from pipeline.config import FIRST_TEACHER, Params, load_params
from pipeline.datasets import DatasetConfig
from pipeline.distributed import world_from_env
from pipeline.store.atomic import remove_path

log = logging.getLogger("stages")

PARAMS_FILE = Path("params.yaml")
DVC_FILE = Path("dvc.yaml")
CACHE = Path("cache")
METRICS = Path("metrics")
PLOTS = Path("plots")

# Where every stage's artifact lives (the `outs` of dvc.yaml).
DEMO_ROOT = Path("data/demo")
DATASET_INDEX = CACHE / "dataset_index"  # /{points,labels,cameras}.json (pipeline.datasets.index)
PROTOTYPES = CACHE / "prototypes"  # /<class>/
PROTOTYPE_PICTURES = PLOTS / "prototypes"
TEMPLATES_FILE = CACHE / "template_features" / "templates.safetensors"
ASSIGNMENTS = CACHE / "assignments"  # /<split key>/ (SplitSource.key)
TEACHER_FEATURES = CACHE / "teacher_features"  # /<split key>/{patches,taps}
# The extra teachers' own template features and teacher-feature stores (README, "Several teachers").
EXTRA_TEMPLATE_FEATURES = CACHE / "extra_template_features"  # /<teacher name>/templates.safetensors
EXTRA_TEACHER_FEATURES = CACHE / "extra_teacher_features"  # /<teacher name>/<split key>/{patches,taps}
STUDENT = CACHE / "student"
LOSS_LOG = PLOTS / "distill" / "train_loss.csv"
LOSS_PICTURE = PLOTS / "distill" / "train_loss.png"
POINT_FEATURES = CACHE / "point_features"  # /<split>/
PREDICTIONS = CACHE / "predictions"  # /<split>/
CAPABILITY_FILE = METRICS / "capability.json"  # per teacher (the capability stage)
PICTURES = PLOTS / "evaluate"
# The segmenter stages (segmenters/dvc.yaml, run by `dvc repro segmenters/dvc.yaml`, never by the
# zero-shot `dvc repro`): the distillation split's point features and labels they train on, and
# each stage's weights, metrics and plots (`segmenter_outputs`).
DISTILL_SPLIT = CACHE / "distill_split"  # /point_features/<split>/, /predictions/<split>/
SEGMENTERS = CACHE / "segmenters"  # /<stage>.safetensors
# The stages' temporaries, one folder per stage, outside every DVC out (and every dependency):
# a killed stage leaves its half-written artifact here, never inside an output, and the stage
# clears its folder when it starts again.
TEMPORARIES = CACHE / ".tmp"


def template_file(teacher: str) -> Path:
    """Where a teacher's template features live: `teacher` (the `teacher:` section's) in
    cache/template_features, an extra teacher's in cache/extra_template_features/<name>."""
    return TEMPLATES_FILE if teacher == FIRST_TEACHER else EXTRA_TEMPLATE_FEATURES / teacher / TEMPLATES_FILE.name


def teacher_features_folder(teacher: str) -> Path:
    """The folder of a teacher's feature stores (one sub-folder per split key)."""
    return TEACHER_FEATURES if teacher == FIRST_TEACHER else EXTRA_TEACHER_FEATURES / teacher


@dataclass(frozen=True)
class SplitSource:
    """One split of one dataset that assignments and teacher features are made for.

    key: its folder under cache/assignments and cache/teacher_features: the split name for the
    main `dataset`, `<split>@<name>` for an entry of `distill_datasets`.
    """

    key: str
    dataset: DatasetConfig
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


@dataclass(frozen=True)
class SplitFolders:
    """Where point_features and label write one split: `--split eval` (the zero-shot chain:
    the evaluation split) or `--split distill` (the distillation split, which only the
    segmenter stages ask for, in cache/distill_split)."""

    split: str
    point_features: Path
    predictions: Path


def split_folders(params: Params, which: str) -> SplitFolders:
    if which == "eval":
        split = params.dataset.eval_split
        return SplitFolders(split, POINT_FEATURES / split, PREDICTIONS / split)
    split = params.dataset.distill_split
    if split == params.dataset.eval_split:
        raise ValueError(f"params.yaml: dataset.distill_split and dataset.eval_split are both {split!r}; the "
                         "segmenter stages train on the one and evaluate on the other")
    return SplitFolders(split, DISTILL_SPLIT / "point_features" / split, DISTILL_SPLIT / "predictions" / split)


def add_split_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--split", choices=("eval", "distill"), default="eval",
                        help="eval: the evaluation split (default); distill: the distillation split, for the "
                             "segmenter stages (segmenters/dvc.yaml)")
    return parser


def segmenter_outputs(name: str) -> dict[str, Path]:
    """A segmenter stage's weights, metrics and plots (segmenters/dvc.yaml) and its scratch."""
    return {"weights": SEGMENTERS / f"{name}.safetensors", "metrics": METRICS / f"{name}.json",
            "plots": PLOTS / name, "scratch": stage_scratch(name)}


def stage_arguments(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage has (--params, --verbose)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    return parser


def finite_float(text: str) -> float:
    """An argparse type: a float that is not NaN or infinite (neither means anything as an option)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def stage_scratch(name: str) -> Path:
    """The folder for the temporaries of stage `name` (`pipeline.store.atomic`)."""
    return TEMPORARIES / name.split()[0]


def start_stage(name: str, args: argparse.Namespace) -> Params:
    """Set up logging, clear the stage's stale temporaries and load the validated params; call
    first in every stage's main."""
    level = logging.DEBUG if args.verbose or os.environ.get("IGLOSS_VERBOSE") else logging.INFO
    logging.basicConfig(level=level, format=f"[{name}] %(message)s", force=True)
    for noisy in ("urllib3", "PIL", "matplotlib", "filelock", "h5py", "numcodecs", "zarr", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    params = load_project_params(args.params)
    if world_from_env().rank == 0:  # before any rank of this run has written a temporary
        remove_path(stage_scratch(name))
    return params


def dvc_stage_sections(dvc_file: Path) -> tuple[str, ...]:
    """The params sections that the stages of `dvc_file` declare (`params:` of each stage).

    A stage that owns a section of its own (one no other stage reads) types it itself with
    `Params.section`; the library accepts such a section only when a stage declares it, so a
    new stage is its module plus its entries in dvc.yaml and params.yaml.
    """
    if not dvc_file.is_file():
        return ()
    stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    sections = []
    for stage in stages.values():
        for entry in stage.get("do", stage).get("params", []):
            if isinstance(entry, str) and not entry.startswith("$"):
                sections.append(entry.split(".")[0])
    return tuple(dict.fromkeys(sections))


def project_stage_sections(params_file: Path) -> tuple[str, ...]:
    """The stage-owned sections of the project a params file belongs to: those its dvc.yaml and
    the pipeline files one folder down declare. The project is the params file's folder when it
    holds a dvc.yaml, else the working folder, else the one this code ships with (a scratch
    folder holding only a params file)."""
    candidates = (params_file.parent, Path("."), Path(__file__).resolve().parents[1])
    project = next((folder for folder in candidates if (folder / DVC_FILE).is_file()), candidates[-1])
    files = [project / DVC_FILE, *sorted(project.glob(f"*/{DVC_FILE}"))]
    return tuple(dict.fromkeys(section for file in files for section in dvc_stage_sections(file)))


def load_project_params(path: Path = PARAMS_FILE) -> Params:
    """The validated params of a project, with the sections its stages own (see
    `project_stage_sections`): every stage and command loads params through this."""
    path = Path(path)
    return load_params(path, project_stage_sections(path))


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


def verbose_requested(argv: list[str] | None = None) -> bool:
    """--verbose / -v on the command line, or IGLOSS_VERBOSE set: show tracebacks and debug logs."""
    argv = sys.argv[1:] if argv is None else argv
    return bool(os.environ.get("IGLOSS_VERBOSE")) or "--verbose" in argv or "-v" in argv


def run_command(main: Callable[[], None]) -> None:
    """Run a stage's (or a command's) `main` from the command line.

    An error ends in one line on stderr that says what went wrong (our messages name the file or
    the `params.yaml` key) and exit status 1, not in a Python traceback; with --verbose (or
    IGLOSS_VERBOSE=1) the traceback is shown. Nothing half-written is left either way: every
    output is written atomically.
    """
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:  # noqa: BLE001  (the one place errors become a message)
        if verbose_requested():
            raise
        text = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {text}", file=sys.stderr)
        print("(run with --verbose for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
