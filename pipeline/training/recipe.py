"""Which camera teaches a training scan, and which of its points the network sees.

The assignments keep every (point, camera) pair that passes the visibility rules
(`pipeline.assignments`); each time a scan is drawn for training, `training_view` picks the
rows that teach it (`distill.camera`) and the points the network sees (`distill.points`):

| recipe | `camera` | `points` |
| --- | --- | --- |
| ScaLR+ | per_scan_epoch: one random camera per scan, drawn again every epoch | taught: only the points that project into that camera |
| DITR | per_point_epoch: one random camera per point among those that see it, drawn again every epoch | scan: the whole scan, the loss on the taught points |
| this project's first recipe | per_point_fixed: as DITR, but the same draw in every epoch | scan |

The draws come from `pipeline.seeding.epoch_camera_rng(seed, epoch, scan index)` (epoch 0 for
per_point_fixed), so they depend on neither the batch nor the rank that draws the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.datasets.base import IntensityStats
from pipeline.seeding import epoch_camera_rng
from pipeline.training.config import CameraRule, DistillConfig
from pipeline.training.data import DistillSample


def teaching_rows(point_index: np.ndarray, camera: np.ndarray, rule: CameraRule,
                  rng: np.random.Generator) -> np.ndarray:
    """The assignment rows that teach, at most one per point, ascending.

    point_index, camera: (A,) the scan's (point, camera) pairs, sorted by point.
    per_scan_epoch: one camera drawn uniformly among those with at least one pair, and all of
    its rows. per_point_*: for every point, one of its rows drawn uniformly.
    """
    if len(point_index) == 0:
        return np.zeros(0, dtype=np.int64)
    if rule == "per_scan_epoch":
        cameras = np.unique(camera)
        return np.flatnonzero(camera == cameras[rng.integers(len(cameras))])
    # A random order among the rows of each point, then the first row of each point wins.
    order = np.lexsort((rng.random(len(point_index)), point_index))
    first = np.ones(len(order), dtype=bool)
    first[1:] = point_index[order[1:]] != point_index[order[:-1]]
    return np.sort(order[first])


@dataclass(frozen=True)
class TrainingView:
    """What one training step sees of a scan.

    points: float32 (n, 4) the points the network gets; target_row: int64 (n,) the sample's
    assignment row teaching each, -1 for none.
    """

    points: np.ndarray
    intensity_stats: IntensityStats
    target_row: np.ndarray
    sample: DistillSample

    def targets(self, rows: np.ndarray) -> torch.Tensor:
        return self.sample.targets(rows)


def camera_draw_epoch(config: DistillConfig, epoch: int) -> int:
    """The epoch whose camera draw epoch `epoch` uses: 0 for per_point_fixed, else itself."""
    return 0 if config.camera == "per_point_fixed" else epoch


def training_view(sample: DistillSample, config: DistillConfig, epoch: int, scan_index: int) -> TrainingView:
    """The view of `sample` (scan `scan_index` of the training list) in `epoch`, by the rules of
    `config.camera` and `config.points`. A scan no camera sees is seen whole and teaches nothing."""
    rng = epoch_camera_rng(config.seed, camera_draw_epoch(config, epoch), scan_index)
    rows = teaching_rows(sample.point_index, sample.camera, config.camera, rng)
    taught = sample.point_index[rows]
    if config.points == "taught" and len(rows):
        return TrainingView(sample.points[taught], sample.intensity_stats, rows, sample)
    target_row = np.full(len(sample.points), -1, dtype=np.int64)
    target_row[taught] = rows
    return TrainingView(sample.points, sample.intensity_stats, target_row, sample)
