"""What every benchmark shares: timings, agreement checks, peak memory, fresh processes, fits.

Timing protocol: a benchmark measures its baseline and ours **in the same run**, alternating
them (baseline, ours, ours, baseline, ...) so that a change of machine load hits both alike.
Each figure keeps every run's wall-clock and process CPU seconds; the report gives the
min / median / max, and ratios are taken between medians. CPU seconds are reported beside
wall seconds because on a shared machine they are far less sensitive to other processes.
On CUDA the device is synchronised before every clock read.

Peak memory: torch's CUDA allocator peak on a GPU; on the CPU, the resident-set high-water
mark of a fresh process (`run_isolated`), reset just before the measured work through
/proc/self/clear_refs so imports and set-up do not count (`peak_rss_above_start`).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MIB = 1024.0 * 1024.0


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Timing:
    """Seconds of each run of one piece of work; a run does `work` units (scans, points, images)."""

    wall: tuple[float, ...]
    cpu: tuple[float, ...]
    work: float = 1.0
    unit: str = "run"

    @property
    def runs(self) -> int:
        return len(self.wall)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def min(self) -> float:
        return min(self.wall)

    @property
    def max(self) -> float:
        return max(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def rate(self) -> float:
        """Units per second at the median run."""
        return self.work / self.median if self.median > 0 else float("inf")

    def describe(self) -> str:
        """`median (min - max) s` per run, with the CPU seconds."""
        return (f"{format_seconds(self.median)} ({format_seconds(self.min)} - {format_seconds(self.max)}), "
                f"cpu {format_seconds(self.cpu_median)}")

    def scaled(self, factor: float, work: float | None = None, unit: str | None = None) -> Timing:
        """Every run multiplied by `factor` (an extrapolation; say so where it is reported)."""
        return Timing(tuple(w * factor for w in self.wall), tuple(c * factor for c in self.cpu),
                      self.work if work is None else work, self.unit if unit is None else unit)


def format_seconds(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


@dataclass(frozen=True)
class Check:
    """A check on a row's outputs.

    kind "agreement": two outputs that must agree (False means a faster path changed the
    result: the bench exits with status 1). kind "criterion": a property a target asks for,
    such as linear growth (False means the target is missed).
    """

    name: str
    passed: bool
    detail: str
    kind: Literal["agreement", "criterion"] = "agreement"


@dataclass(frozen=True)
class Fact:
    """A reported number that is not a timing (a rate, a peak memory, a fit)."""

    name: str
    value: float
    unit: str


@dataclass(frozen=True)
class Target:
    """What a figure must reach: a speed-up of ours over the baseline (`min_ratio`) or a
    ceiling on ours' median seconds (`max_seconds`)."""

    text: str
    min_ratio: float | None = None
    max_seconds: float | None = None


@dataclass
class Row:
    """One measured case: ours, optionally beside a baseline, with its checks and facts."""

    case: str
    ours_name: str
    ours: Timing | None
    baseline_name: str = ""
    baseline: Timing | None = None
    target: Target | None = None
    checks: list[Check] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    skipped: str = ""  # why nothing was measured

    @property
    def ratio(self) -> float | None:
        """Baseline median / ours median: > 1 means ours is faster."""
        if self.baseline is None or self.ours is None or self.ours.median <= 0:
            return None
        return self.baseline.median / self.ours.median

    @property
    def cpu_ratio(self) -> float | None:
        """Baseline / ours median CPU seconds: less sensitive to other load than `ratio`."""
        if self.baseline is None or self.ours is None or self.ours.cpu_median <= 0:
            return None
        return self.baseline.cpu_median / self.ours.cpu_median

    @property
    def agrees(self) -> bool:
        return all(check.passed for check in self.checks if check.kind == "agreement")

    @property
    def target_met(self) -> bool | None:
        """None without a target or a measurement; a failed check fails the target too."""
        if self.target is None or self.ours is None:
            return None
        if self.target.min_ratio is not None and (self.ratio is None or self.ratio < self.target.min_ratio):
            return False
        if self.target.max_seconds is not None and self.ours.median > self.target.max_seconds:
            return False
        return all(check.passed for check in self.checks)


@dataclass(frozen=True)
class Curve:
    """A scaling curve: median seconds and peak memory against points per scan, with fits."""

    name: str
    sizes: tuple[int, ...]
    timings: tuple[Timing, ...]
    peak_mib: tuple[float, ...]
    time_fit: LinearFit
    memory_fit: LinearFit


@dataclass
class Section:
    """One benchmark's part of the report."""

    title: str
    rows: list[Row] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole benchmark, set-up and checks included


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU seconds of this process and of the child processes it has waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result) of one call; CPU includes child processes it ran."""
    synchronize(device)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    synchronize(device)
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def measure(
    functions: Sequence[Callable[[], Any]], runs: int, device: torch.device, work: float = 1.0, unit: str = "run"
) -> list[Timing]:
    """Time each function `runs` times, alternating their order from run to run (ABBA...).

    Returns one Timing per function, in the order given.
    """
    walls: list[list[float]] = [[] for _ in functions]
    cpus: list[list[float]] = [[] for _ in functions]
    for run in range(runs):
        order = range(len(functions)) if run % 2 == 0 else reversed(range(len(functions)))
        for i in order:
            wall, cpu, _ = timed(functions[i], device)
            walls[i].append(wall)
            cpus[i].append(cpu)
    return [Timing(tuple(w), tuple(c), work, unit) for w, c in zip(walls, cpus)]


# --------------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class PeakMemory:
    """Filled in by `peak_rss_above_start` when its block ends."""

    peak_mib: float = 0.0
    method: str = ""


@contextmanager
def peak_rss_above_start() -> Iterator[PeakMemory]:
    """Measure the resident-set peak of the enclosed work above the RSS when it starts, in MiB.

    Linux resets the high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs;
    where that is not possible, the process-lifetime peak (ru_maxrss) minus the starting RSS
    is used instead, which over-counts whatever the set-up used before (`method` says which).
    """
    result = PeakMemory()
    start = _status_kib("VmRSS") or 0
    try:
        Path("/proc/self/clear_refs").write_text("5")
        result.method = "VmHWM reset"
    except OSError:
        result.method = "ru_maxrss"
    yield result
    if result.method == "VmHWM reset":
        peak = _status_kib("VmHWM") or 0
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result.peak_mib = max(peak - start, 0) / 1024.0


def numpy_peak_mib(fn: Callable[[], Any]) -> float:
    """Peak bytes numpy (and Python) allocate during one call, through tracemalloc, in MiB."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / MIB


# --------------------------------------------------------------------------- fresh processes


def run_isolated(module: str, case: Any, timeout: float | None = None) -> dict:
    """Run `python -m <module> --case <json file>` in a fresh process and return its JSON result.

    `case` is a dataclass (written with `asdict`); the child writes its result as JSON to the
    path it is given. A fresh process per case makes its peak memory its own.
    """
    with tempfile.TemporaryDirectory(prefix="bench-case-") as folder:
        case_file, result_file = Path(folder) / "case.json", Path(folder) / "result.json"
        case_file.write_text(json.dumps(asdict(case)))
        command = [sys.executable, "-m", module, "--case", str(case_file), "--result", str(result_file)]
        completed = subprocess.run(command, cwd=REPO, timeout=timeout, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
        return json.loads(result_file.read_text())


# --------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class LinearFit:
    """y = intercept + slope * x by least squares, with how linear the growth is.

    r2: coefficient of determination. upper_exponent: d log y / d log x between the two largest
    sizes (1 for linear growth, 2 for quadratic); `linear` holds when it stays <= 1.2 and
    r2 >= 0.98 (fixed costs make small sizes sub-linear, which is fine).
    """

    slope: float
    intercept: float
    r2: float
    upper_exponent: float

    @property
    def linear(self) -> bool:
        return self.upper_exponent <= 1.2 and self.r2 >= 0.98


def linear_fit(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    x_arr, y_arr = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    slope, intercept = np.polyfit(x_arr, y_arr, 1)
    residual = y_arr - (intercept + slope * x_arr)
    total = ((y_arr - y_arr.mean()) ** 2).sum()
    r2 = 1.0 - (residual ** 2).sum() / total if total > 0 else 1.0
    order = np.argsort(x_arr)
    (x1, x2), (y1, y2) = x_arr[order[-2:]], y_arr[order[-2:]]
    exponent = float(np.log(y2 / y1) / np.log(x2 / x1)) if min(y1, y2) > 0 else float("nan")
    return LinearFit(float(slope), float(intercept), float(r2), exponent)


def environment() -> dict[str, str]:
    """What the figures were measured on (for the report header)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "numpy": np.__version__,
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


# --------------------------------------------------------------------------- the demo world and params


def bench_params_data(world: Path, classes: int | None = None, images_per_class: int | None = None) -> dict:
    """The repository's params.yaml as a dict, with the dataset pointed at `world`'s nuScenes part.

    classes: keep only the first this many vocabulary classes; images_per_class: prototypes per
    class. None keeps params.yaml's (quick runs shrink both).
    """
    import yaml

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["dataset"]["root"] = str(Path(world).resolve() / "nuscenes")
    if classes is not None:
        data["vocabulary"] = dict(list(data["vocabulary"].items())[:classes])
    if images_per_class is not None:
        data["prototypes"]["images_per_class"] = images_per_class
    return data


def write_params(folder: Path, data: dict) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def inside(folder: Path) -> Iterator[Path]:
    """Run the enclosed code with `folder` as working directory (stages use relative paths)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(previous)


def cosine_check(name: str, ours: np.ndarray, baseline: np.ndarray, min_cosine: float) -> Check:
    """Row-wise cosine between two (N, D) arrays: every row must reach `min_cosine`."""
    if ours.shape != baseline.shape:
        return Check(name, False, f"shapes differ: {ours.shape} vs {baseline.shape}")
    a, b = ours.astype(np.float64), baseline.astype(np.float64)
    cosine = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    worst = float(cosine.min()) if len(cosine) else 1.0
    mean = float(cosine.mean()) if len(cosine) else 1.0
    return Check(name, bool(worst >= min_cosine),
                 f"{len(cosine)} rows: cosine min {worst:.6f}, mean {mean:.6f} (required >= {min_cosine} for every row)")


def profile_top(fn: Callable[[], Any], limit: int = 6) -> str:
    """One call of `fn` under cProfile: the functions with the most own time, as one line.

    Goes into the report's notes, so a missed target comes with where the time went.
    """
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler)
    total = stats.total_tt or 1.0
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]
    parts = [f"{Path(file).name}:{line}({name}) {own / total:.0%}" if file != "~" else f"{name} {own / total:.0%}"
             for (file, line, name), (_, _, own, _, _) in rows]
    return f"cProfile, share of own time over {format_seconds(total)}: " + "; ".join(parts)
