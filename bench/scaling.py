"""Benchmark 6: time and peak memory against points per scan, for projection and the student.

Points are drawn from the pooled raw points of the demo world's val scans (a scan has ~33k,
so 70k needs several), with a fixed seed.

* projection: `project_to_cameras` into the six cameras of one scan; peak memory by tracemalloc
  (numpy reports its buffers to it).
* student: ours (`InferenceWaffleIron`, precision "auto") at a reduced width (the point is how
  time grows with N, not the absolute figure), depth 3, each size in a fresh process; the
  voxel size is 1 mm so that nearly every drawn point is kept (the x axis is the number kept).
  Peak memory as in benchmark 2.

Growth is linear when the least-squares line fits (r2 >= 0.98) and the local exponent
d log t / d log N between the two largest sizes stays <= 1.2: a quadratic step (a dense
N x N distance matrix, say) shows up as an exponent near 2. Fixed costs (the student's 2D
planes do not depend on N) make small sizes sub-linear, which passes. The time fit uses the
fastest run of each size: other processes only ever add time, and on a shared machine they
add several-fold noise to single runs (the medians are in the table beside it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench import student
from bench.common import (
    Check,
    Curve,
    Fact,
    LinearFit,
    Row,
    Section,
    Target,
    Timing,
    linear_fit,
    measure,
    numpy_peak_mib,
)
from pipeline.datasets.nuscenes import NuScenesReader
from pipeline.geometry import project_to_cameras

SIZES = (5_000, 10_000, 20_000, 35_000, 70_000)


def linearity_checks(what: str, fit_time: LinearFit, fit_memory: LinearFit) -> list[Check]:
    return [
        Check(f"{what}: time grows linearly", fit_time.linear,
              f"r2 {fit_time.r2:.4f}, exponent between the two largest sizes {fit_time.upper_exponent:.2f}",
              "criterion"),
        Check(f"{what}: peak memory grows linearly", fit_memory.linear,
              f"r2 {fit_memory.r2:.4f}, exponent between the two largest sizes {fit_memory.upper_exponent:.2f}",
              "criterion"),
    ]


def curve_row(curve: Curve, what: str, ours_name: str) -> Row:
    per_point = [t.min / n for t, n in zip(curve.timings, curve.sizes)]
    return Row(
        case=f"{what}, {curve.sizes[0]} to {curve.sizes[-1]} points",
        ours_name=ours_name,
        ours=curve.timings[-1],
        target=Target("linear growth of time and peak memory"),
        checks=linearity_checks(what, curve.time_fit, curve.memory_fit),
        facts=[Fact("time per point (fastest run), largest / smallest size", per_point[-1] / per_point[0], "x"),
               Fact("fitted time per point", curve.time_fit.slope, "s"),
               Fact("fitted memory per point", curve.memory_fit.slope * 2**20, "B")],
    )


def pooled_points(reader: NuScenesReader) -> np.ndarray:
    return np.concatenate([reader.read(scan_id).points for scan_id in reader.scan_ids])


def projection_curve(points: np.ndarray, cameras, sizes, runs: int) -> Curve:
    rng = np.random.default_rng(0)
    timings, peaks = [], []
    for size in tqdm(sizes, desc="projection scaling", unit="size"):
        xyz = points[rng.choice(len(points), size, replace=size > len(points)), :3]
        (timing,) = measure([lambda: project_to_cameras(xyz, cameras)], runs, torch.device("cpu"), work=size,
                            unit="point")
        timings.append(timing)
        peaks.append(numpy_peak_mib(lambda: project_to_cameras(xyz, cameras)))
    return make_curve("projection", tuple(sizes), timings, peaks)


def student_curve(points_file: Path, sizes, runs: int, device: torch.device, width: int, isolate: bool) -> Curve:
    base = student.StudentCase(variant=student.default_variant(device).value, points_file=str(points_file),
                               width=width, depth=3, head_hidden=2 * width, out_channels=width, voxel_size=0.001,
                               runs=runs, device=device.type, calibration_points=500)
    results = [student.run(replace(base, num_points=size), isolate)
               for size in tqdm(sizes, desc="student scaling", unit="size")]
    kept = tuple(r.num_points for r in results)
    timings = [Timing(r.wall, r.cpu, r.num_points, "point") for r in results]
    return make_curve("student", kept, timings, [r.peak_mib for r in results])


def make_curve(name: str, sizes: tuple[int, ...], timings: list[Timing], peaks: list[float]) -> Curve:
    return Curve(name, sizes, tuple(timings), tuple(peaks), linear_fit(sizes, [t.min for t in timings]),
                 linear_fit(sizes, peaks))


def run(nuscenes_root: Path, version: str, scratch: Path, device: torch.device, runs: int,
        sizes=SIZES, width: int = 128, isolate: bool = True) -> Section:
    section = Section("6. Scaling with points per scan")
    reader = NuScenesReader(nuscenes_root, version, "val")
    points = pooled_points(reader)
    cameras = reader.read(reader.scan_ids[0]).cameras
    projection = projection_curve(points, cameras, sizes, runs)
    points_file = scratch / "pooled_points.npy"
    np.save(points_file, points, allow_pickle=False)
    learner = student_curve(points_file, sizes, runs, device, width, isolate)
    section.curves += [projection, learner]
    section.rows += [curve_row(projection, "projection", "project_to_cameras"),
                     curve_row(learner, f"student width {width}, depth 3",
                               student.DESCRIPTIONS[student.default_variant(device)])]
    section.notes.append(
        f"Student curve at width {width} (not 768): the growth with N is what is measured. Peak memory: "
        f"tracemalloc for the projection; for the student, {'a fresh process per size' if isolate else 'in process (quick run: NOT isolated)'}."
    )
    return section
