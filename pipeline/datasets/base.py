"""The scan record every dataset reader yields, and the checks all readers share.

Nothing downstream of a reader knows which dataset it reads: a scan is points, optional
labels in the evaluation label space, and the calibrated cameras that saw it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IGNORE_LABEL = 255


class DatasetError(ValueError):
    """Bad dataset input. The message always names the offending file and the problem."""


@dataclass(frozen=True)
class IntensityStats:
    """Mean and standard deviation that standardise a dataset's lidar intensity (the students' first
    input channel); each dataset format has its reference values (`pipeline.datasets.DATASET_FORMATS`)."""

    mean: float
    std: float

    def standardise(self, intensity: np.ndarray) -> np.ndarray:
        return (np.asarray(intensity, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)


@dataclass(frozen=True)
class CameraView:
    """One calibrated image of a scan.

    `lidar_to_camera` maps homogeneous points from the lidar frame at the lidar timestamp
    to the camera frame at the image timestamp (x right, y down, z forward), so ego motion
    between the two timestamps is already accounted for.
    """

    name: str
    image_path: Path
    intrinsics: np.ndarray  # (3, 3) float64
    lidar_to_camera: np.ndarray  # (4, 4) float64
    width: int
    height: int


@dataclass(frozen=True)
class DroppedPoints:
    """The raw points of a scan file that a reader removed for NaN/inf values (`drop_non_finite`).

    raw_count: points in the file. kept_index: int64 (n,) ascending, the raw index of each
    point the reader kept (row i of `ScanRecord.points` is raw point kept_index[i]).
    labels: int64 evaluation labels of the dropped points, in raw order (None when unlabelled).
    """

    raw_count: int
    kept_index: np.ndarray
    labels: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self.raw_count - len(self.kept_index)

    @property
    def labelled(self) -> int:
        """Dropped points whose truth is a class (not IGNORE_LABEL): points no stage can label."""
        return 0 if self.labels is None else int((self.labels != IGNORE_LABEL).sum())

    def mask(self) -> np.ndarray:
        """bool (raw_count,): True at the dropped points."""
        dropped = np.ones(self.raw_count, dtype=bool)
        dropped[self.kept_index] = False
        return dropped


@dataclass
class ScanRecord:
    """One lidar scan.

    points: float32 (N, 4) x, y, z, intensity in the lidar frame: the file's finite points, in
        file order (every per-point index of the pipeline's caches, e.g. the assignments'
        `point_index`, indexes these rows).
    labels: int64 (N,) evaluation labels (IGNORE_LABEL = 255), or None when unlabelled.
    cameras: the calibrated cameras of the scan (possibly empty).
    scan_id: a stable key (nuScenes: the lidar sample_data token; KITTI: "seq/frame").
    dropped: the raw points removed as non-finite (always logged), None when there were none
        (then row i of `points` is raw point i). The artifacts a user reads keep one row per
        raw point: `to_raw` puts per-point values back in raw order.
    """

    scan_id: str
    points: np.ndarray
    labels: np.ndarray | None
    cameras: list[CameraView] = field(default_factory=list)
    dropped: DroppedPoints | None = None

    @property
    def dropped_points(self) -> int:
        """How many raw points were removed as non-finite."""
        return 0 if self.dropped is None else self.dropped.count

    @property
    def raw_count(self) -> int:
        """Points in the scan's file, finite or not."""
        return len(self.points) if self.dropped is None else self.dropped.raw_count

    def to_raw(self, values: np.ndarray, fill) -> np.ndarray:
        """Per-point `values` (one row per row of `points`) as one row per raw point, in raw
        order, `fill` at the dropped points; `values` itself when no point was dropped."""
        if self.dropped is None:
            return values
        raw = np.full((self.dropped.raw_count, *values.shape[1:]), fill, dtype=values.dtype)
        raw[self.dropped.kept_index] = values
        return raw


@dataclass(frozen=True)
class ScanFiles:
    """The dataset files `read(scan_id)` opens: its point file, its label file (None when the scan
    is unlabelled) and its camera images, in the order of `ScanRecord.cameras`."""

    points: Path
    labels: Path | None
    images: tuple[Path, ...]


class ScanReader:
    """What every reader shares: `scan_ids` of its split, `len`, iteration and `read(scan_id)`;
    `files(scan_id)` and `table_files()` name what it reads without reading it (the dataset index)."""

    scan_ids: list[str]

    def __len__(self) -> int:
        return len(self.scan_ids)

    def __iter__(self):
        for scan_id in self.scan_ids:
            yield self.read(scan_id)

    def read(self, scan_id: str) -> ScanRecord:
        raise NotImplementedError

    def files(self, scan_id: str) -> ScanFiles:
        """The files `read(scan_id)` opens, from the dataset's tables alone (no file is opened)."""
        raise NotImplementedError

    def table_files(self) -> list[Path]:
        """The files the split's scan list and calibration come from (not the scans' own files)."""
        raise NotImplementedError


def split_from_file(root: Path, split: str) -> list[str] | None:
    """The split's list from `<root>/splits.json` (scene names or sequence ids), None when the
    dataset has no such file (then the official splits apply)."""
    split_file = Path(root) / "splits.json"
    if not split_file.is_file():
        return None
    splits = json.loads(split_file.read_text())
    if split not in splits:
        raise DatasetError(f"{split_file}: no split {split!r} (has {sorted(splits)})")
    return list(splits[split])


def read_float32_records(path: Path, values_per_point: int) -> np.ndarray:
    """Read a flat float32 point file as (N, values_per_point), checking its size."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: point file is missing")
    size = path.stat().st_size
    record = 4 * values_per_point
    if size % record:
        raise DatasetError(
            f"{path}: size {size} bytes is not a multiple of the {record}-byte record "
            f"({values_per_point} float32 values per point); the file is truncated or of another format"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, values_per_point)


def check_label_count(path: Path, labels: np.ndarray, point_count: int) -> None:
    if len(labels) != point_count:
        raise DatasetError(
            f"{path}: holds {len(labels)} labels but its point file holds {point_count} points"
        )


def check_image_exists(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: camera image is missing")
    return path


def drop_non_finite(
    scan_id: str, points: np.ndarray, labels: np.ndarray | None, source: Path
) -> tuple[np.ndarray, np.ndarray | None, DroppedPoints | None]:
    """Remove points with NaN or inf values, logging every drop; returns the kept points and
    labels and what was dropped (None when every point is finite: points come back as given).
    A file with no point at all, or none finite, is refused naming it: every stage would
    otherwise fail later with a message that names no file."""
    if len(points) == 0:
        raise DatasetError(f"{source}: the point file holds no point (scan {scan_id}); an empty or truncated "
                           "file: restore it from the dataset")
    finite = np.isfinite(points).all(axis=1)
    count = int((~finite).sum())
    if not count:
        return points, labels, None
    if count == len(points):
        raise DatasetError(f"{source}: all {count} points have NaN or infinite values (scan {scan_id}); "
                           "the point file is damaged")
    log.warning("%s: dropped %d of %d points with NaN/inf values (scan %s)",
                source, count, len(points), scan_id)
    dropped = DroppedPoints(len(points), np.flatnonzero(finite).astype(np.int64),
                            None if labels is None else labels[~finite])
    return points[finite], None if labels is None else labels[finite], dropped
