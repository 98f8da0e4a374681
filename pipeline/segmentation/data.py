"""What a segmenter reads of one scan, and which scans it trains on.

`SegmentationScan`: the finite points of a scan (as the dataset reader gives them), their
labels (true or pseudo; 255 ignored), and what some segmenters read beside: the cached point
features, the teacher feature of each point's camera(s) and whether a camera sees it.
`ScanSource` assembles them from the sources a stage hands it (a reader, a label store, a
feature store, the teacher caches); `labelled_fraction` picks the scans of a label fraction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.assignments import combine_taps, per_point_mean
from pipeline.datasets.base import IGNORE_LABEL, IntensityStats, ScanReader, ScanRecord
from pipeline.labelling.point_features import PointFeatureReader
from pipeline.store.ragged import RaggedReader
from pipeline.teachers.patch_encoding import patch_feature_dim, read_patch_features


@dataclass(frozen=True)
class SegmentationScan:
    """One scan as a segmenter sees it; every array has one row per finite point (N).

    points: float32 (N, 4); labels: int64 (N,) (255: ignored); features: (N, D) cached point
    features or None; teacher: float32 (N, Dt) the mean teacher feature over the cameras that
    see each point, zeros where none does, or None; visible: bool (N,) or None.
    """

    scan_id: str
    points: np.ndarray
    labels: np.ndarray
    intensity_stats: IntensityStats
    features: np.ndarray | None = None
    teacher: np.ndarray | None = None
    visible: np.ndarray | None = None
    kept_index: np.ndarray | None = None  # raw index of each finite point; None: every point is finite

    def finite(self, raw_values: np.ndarray) -> np.ndarray:
        """Rows of a per-raw-point array (one row per point of the scan file) at the finite points."""
        return raw_values if self.kept_index is None else raw_values[self.kept_index]


class TeacherPointFeatures:
    """The teacher feature of each finite point of a scan from the cached assignments and
    teacher features (`pipeline.assignments`): the mean over the cameras that see it (DITR:
    the point's camera), zeros and not visible where none does."""

    def __init__(self, assignments: Path, teacher_features: Path) -> None:
        self.assignments = RaggedReader(assignments)
        self.patches = RaggedReader(teacher_features / "patches")
        self.taps = RaggedReader(teacher_features / "taps")
        self.dim = patch_feature_dim(self.patches)

    def __call__(self, scan_id: str, num_points: int) -> tuple[np.ndarray, np.ndarray]:
        tap = self.taps.read(scan_id)
        pixel = combine_taps(torch.from_numpy(read_patch_features(self.patches, scan_id)),
                             torch.from_numpy(tap["tap"]), torch.from_numpy(tap["weight"]))
        point_index, mean = per_point_mean(self.assignments.read(scan_id, ["point_index"])["point_index"], pixel)
        teacher = np.zeros((num_points, self.dim), dtype=np.float32)
        visible = np.zeros(num_points, dtype=bool)
        teacher[point_index] = mean.float().numpy()
        visible[point_index] = True
        return teacher, visible


def finite_rows(values: np.ndarray, record: ScanRecord) -> np.ndarray:
    """Rows of a per-raw-point array (one row per point of the scan file) at the reader's finite points."""
    return values if record.dropped is None else values[record.dropped.kept_index]


class ScanSource:
    """Loads `SegmentationScan`s of one split.

    reader: the split's dataset reader (open it with `labels=False` when the labels must not be
    read: then `label_store` gives them). label_store: a ragged store whose column `label_column`
    holds a label per raw point (the label stage's predictions: pseudo-labels); None: the
    reader's ground truth. features: the split's point-feature store, read when set.
    teacher: `TeacherPointFeatures` of the split, read when set. transforms: applied to every
    scan in turn (e.g. `shuffled_within_scan` for the sabotage checks).
    """

    def __init__(self, reader: ScanReader, intensity_stats: IntensityStats, *, label_store: Path | None = None,
                 label_column: str = "label", features: Path | None = None,
                 teacher: TeacherPointFeatures | None = None,
                 transforms: tuple[Callable[[SegmentationScan], SegmentationScan], ...] = ()) -> None:
        self.reader = reader
        self.intensity_stats = intensity_stats
        self.labels = RaggedReader(label_store) if label_store is not None else None
        self.label_column = label_column
        self.features = PointFeatureReader(features) if features is not None else None
        self.teacher = teacher
        self.transforms = transforms

    @property
    def scan_ids(self) -> list[str]:
        return list(self.reader.scan_ids)

    def __call__(self, scan_id: str) -> SegmentationScan:
        record = self.reader.read(scan_id)
        if self.labels is not None:
            labels = finite_rows(self.labels.read(scan_id, [self.label_column])[self.label_column], record)
            labels = labels.astype(np.int64)
        elif record.labels is not None:
            labels = record.labels
        else:
            labels = np.full(len(record.points), IGNORE_LABEL, dtype=np.int64)
        features = None
        if self.features is not None:
            features = finite_rows(self.features.read(scan_id), record)
        teacher = visible = None
        if self.teacher is not None:
            teacher, visible = self.teacher(scan_id, len(record.points))
        kept = None if record.dropped is None else record.dropped.kept_index
        scan = SegmentationScan(scan_id, record.points, labels, self.intensity_stats, features, teacher, visible, kept)
        for transform in self.transforms:
            scan = transform(scan)
        return scan


def shuffled_within_scan(name: str, seed: int) -> Callable[[SegmentationScan], SegmentationScan]:
    """A transform for the sabotage checks: `labels` permuted within the scan (among its
    labelled points), or `teacher` permuted among its visible points; seeded by the scan id."""

    def transform(scan: SegmentationScan) -> SegmentationScan:
        rng = np.random.default_rng([seed, *scan.scan_id.encode()])
        if name == "labels":
            rows = np.flatnonzero(scan.labels != IGNORE_LABEL)
            labels = scan.labels.copy()
            labels[rows] = labels[rng.permutation(rows)]
            return SegmentationScan(**{**scan.__dict__, "labels": labels})
        rows = np.flatnonzero(scan.visible)
        teacher = scan.teacher.copy()
        teacher[rows] = teacher[rng.permutation(rows)]
        return SegmentationScan(**{**scan.__dict__, "teacher": teacher})

    return transform


def labelled_fraction(scan_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The scans whose labels a run with `fraction` of the labels uses: round(fraction * n) (at
    least one) drawn with `seed`, in split order."""
    count = max(1, round(fraction * len(scan_ids)))
    chosen = np.random.default_rng(seed).choice(len(scan_ids), size=count, replace=False)
    return [scan_ids[i] for i in sorted(chosen)]
