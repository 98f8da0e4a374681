"""Run the benchmark suite and write `report.md` and `report.json`.

    python -m bench                       # everything, 5 runs per figure (about 10-15 min on 2 cores)
    python -m bench --quick               # tiny sizes, 2 runs: a smoke run of every benchmark (~1 min)
    python -m bench --only projection,student --runs 7 --out tmp/bench-gpu --device cuda
    python -m bench --fresh-clone --test-suite    # also the demo and the test suite from a fresh clone
    python -m bench --only dataset_index          # opt-in: no-op `dvc repro` beside a 1 M-file nuScenes tree

Benchmarks (see bench/README.md): projection, student, vocabulary, templates, overheads,
scaling. The device is CUDA when torch sees one, else the CPU (`--device` overrides). The
exit status is 1 when an agreement check failed or a benchmark crashed (missed targets are
reported, not failed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pipeline  # noqa: E402,F401  (applies the torchvision shim before timm is imported)
from bench import dataset_index, overheads, projection, scaling, student, templates, vocabulary  # noqa: E402
from bench.common import REPO, Section, environment  # noqa: E402
from bench.report import Report  # noqa: E402
from pipeline.demo_world import DemoWorldConfig, write_demo_world  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402

BENCHMARKS = ("projection", "student", "vocabulary", "templates", "overheads", "scaling")
OPT_IN = ("dataset_index",)  # run only when --only names them (minutes, 1 M files in /tmp)
DEMO_VERSION = "v1.0-demo"


@dataclass(frozen=True)
class Settings:
    """Sizes of one bench run; `--quick` shrinks everything to a smoke run."""

    runs: int
    world_size: str
    isolate: bool
    student_width: int
    student_head_hidden: int
    student_out_channels: int
    student_depth: int
    scaling_sizes: tuple[int, ...]
    scaling_width: int
    template_images_per_class: int
    template_release_grid: tuple[int, int, int]
    vocabulary_classes: int | None  # None: every class of params.yaml
    vocabulary_images_per_class: int | None  # None: params.yaml's
    dvc_noop: bool
    vocabulary_release_points: int = vocabulary.NUSCENES_POINTS_PER_SCAN  # per synthetic scan at nuScenes width

    @classmethod
    def full(cls, runs: int, student_depth: int) -> Settings:
        return cls(runs, "default", True, 768, 2048, 1024, student_depth, scaling.SIZES, 128, 2, templates.RELEASE_GRID,
                   None, None, True)

    @classmethod
    def quick(cls, runs: int) -> Settings:
        return cls(runs, "small", False, 32, 64, 32, 3, (1000, 2000, 4000), 16, 1, (64, 8, 8), 3, 1, False, 2048)


def demo_world(path: Path | None, out: Path, size: str) -> Path:
    """The given world, or one generated under `out` (reused by later runs of the same size)."""
    if path is not None:
        return path
    world = out / f"world-{size}"
    if not (world / "summary.json").is_file():
        write_demo_world(world, DemoWorldConfig.preset(size, seed=0))
    return world


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every benchmark")
    parser.add_argument("--out", type=Path, default=REPO / "tmp" / "bench", help="report folder (default tmp/bench)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 5, quick 2)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {BENCHMARKS}, or of the opt-in {OPT_IN}")
    parser.add_argument("--world", type=Path, default=None, help="an existing demo world folder (default: generated)")
    parser.add_argument("--student-depth", type=int, default=3, help="blocks measured, a multiple of 3 (default 3)")
    parser.add_argument("--full-depth", action="store_true", help="also one real depth-48 student forward")
    parser.add_argument("--fresh-clone", action="store_true", help="time `bash scripts/demo.sh` in a fresh clone")
    parser.add_argument("--test-suite", action="store_true", help="time `bash scripts/test.sh` in a fresh clone")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(BENCHMARKS + OPT_IN)
    if unknown:
        parser.error(f"--only: unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS + OPT_IN}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    settings = Settings.quick(runs) if args.quick else Settings.full(runs, args.student_depth)
    device = resolve_device(args.device, "--device")
    out = args.out.resolve()
    scratch = out / "scratch"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    report = Report(command="python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                    started=datetime.datetime.now().isoformat(timespec="seconds"),
                    environment={**environment(), "device": str(device)},
                    settings={key: str(value) for key, value in asdict(settings).items()})
    start = time.perf_counter()
    world = demo_world(args.world, out, settings.world_size)
    nuscenes = world / "nuscenes"
    selected = args.only.split(",")
    student_per_point = None

    def attempt(name: str, benchmark) -> Section | None:
        if name not in selected:
            return None
        print(f"[bench] {name}", flush=True)
        began = time.perf_counter()
        try:
            section = benchmark()
        except Exception:  # a crashed benchmark is reported, and the others still run
            report.errors.append(f"{name}: {traceback.format_exc()[-3000:]}")
            print(report.errors[-1], file=sys.stderr)
            return None
        section.seconds = time.perf_counter() - began
        print(f"[bench] {name} took {section.seconds:.0f} s", flush=True)
        report.sections.append(section)
        return section

    attempt("projection", lambda: projection.run(nuscenes, DEMO_VERSION, settings.runs))
    results: dict = {}
    attempt("student", lambda: student_benchmark(world, scratch, device, settings, args, results))
    if student.Variant.MODULE in results and settings.student_width == 768:
        module = results[student.Variant.MODULE]
        student_per_point = module.extrapolated().median / module.num_points
    attempt("vocabulary", lambda: vocabulary.run(world, scratch / "vocabulary", device, settings.runs,
                                                 student_per_point, settings.vocabulary_classes,
                                                 settings.vocabulary_images_per_class,
                                                 settings.vocabulary_release_points))
    attempt("templates", lambda: templates.run(world, device, settings.runs, settings.template_images_per_class,
                                               settings.vocabulary_classes, settings.template_release_grid))
    attempt("overheads", lambda: overheads.run(scratch, out, settings.runs, settings.dvc_noop, args.fresh_clone,
                                               args.test_suite))
    attempt("scaling", lambda: scaling.run(nuscenes, DEMO_VERSION, scratch, device, settings.runs,
                                           settings.scaling_sizes, settings.scaling_width, settings.isolate))
    index_keyframes = 300 if args.quick else dataset_index.DEFAULT_KEYFRAMES
    attempt("dataset_index", lambda: dataset_index.run(Path("/tmp"), index_keyframes, settings.runs,
                                                      1 if args.quick else 3))
    report.wall_seconds = time.perf_counter() - start
    json_path, md_path = report.write(out)
    print(f"[bench] wrote {md_path} and {json_path} in {report.wall_seconds:.0f} s")
    for failure in report.failed_checks:
        print(f"[bench] AGREEMENT FAILED: {failure}", file=sys.stderr)
    return 1 if report.errors or report.failed_checks else 0


def student_benchmark(world: Path, scratch: Path, device, settings: Settings, args, results: dict) -> Section:
    """Benchmark 2 on the first val scan of the world; fills `results` (variant -> CaseResult)."""
    import numpy as np

    from pipeline.datasets.nuscenes import NuScenesReader

    reader = NuScenesReader(world / "nuscenes", DEMO_VERSION, "val")
    points_file = scratch / "student_scan.npy"
    np.save(points_file, reader.read(reader.scan_ids[0]).points, allow_pickle=False)
    section, measured = student.run_benchmark(points_file, scratch, device, settings.runs, settings.student_depth,
                                              settings.isolate, args.full_depth, settings.student_width,
                                              settings.student_head_hidden, settings.student_out_channels)
    results.update(measured)
    return section


if __name__ == "__main__":
    sys.exit(main())
