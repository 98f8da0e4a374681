"""SemanticKITTI reader: the documented file format, no third-party dataset package.

Layout: `<root>/sequences/<NN>/{velodyne/*.bin, labels/*.label, image_2/*.png, calib.txt}`.
Points are float32 x, y, z, remission; labels are uint32 with the semantic id in the low
16 bits (the high 16 bits are the instance id). The camera is image_2, projected with
P2 * Tr from calib.txt. Splits come from `<root>/splits.json` when present (the demo world
ships one), else the official sequence lists. A sequence is labelled whole (every scan has its
`.label`) or not at all (like the official test sequences); a partly labelled one is an error.
Likewise a sequence has its camera whole or not at all: without `image_2/` or without
`calib.txt` (many users never download the colour images) its scans have no camera (an empty
`cameras` list: labelled and evaluated from the lidar alone, absent from the 2D baseline); with
both, every scan must have its image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets import DATASET_FORMATS
from pipeline.datasets.base import (
    CameraView,
    DatasetError,
    ScanFiles,
    ScanReader,
    ScanRecord,
    check_image_exists,
    check_label_count,
    drop_non_finite,
    read_float32_records,
    split_from_file,
)
from pipeline.datasets.label_map import LabelMap

log = logging.getLogger(__name__)

OFFICIAL_SPLITS = {
    "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
    "val": ["08"],
    "test": [f"{i:02d}" for i in range(11, 22)],
}


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """Parse a KITTI calib.txt into 3x4 matrices keyed by name (P0..P3, Tr)."""
    if not path.is_file():
        raise DatasetError(f"{path}: calibration file is missing")
    calib = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, values = line.partition(":")
        try:
            calib[key.strip()] = np.array(values.split(), dtype=np.float64).reshape(3, 4)
        except ValueError:
            raise DatasetError(f"{path}:{line_number}: expected 12 numbers after {key.strip()!r}") from None
    for key in ("P2", "Tr"):
        if key not in calib:
            raise DatasetError(f"{path}: no {key} matrix")
    return calib


def camera_from_calib(calib: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Split P2 * Tr into intrinsics K and a 4x4 lidar -> camera transform.

    P2 = K [I | t] (t is the stereo baseline offset of camera 2 from the rectified camera 0),
    so pixel = K ([I | t] Tr point) and lidar_to_camera = [I | t] Tr.
    """
    projection = calib["P2"]
    intrinsics = projection[:, :3]
    offset = np.linalg.solve(intrinsics, projection[:, 3])
    lidar_to_rect = np.eye(4)
    lidar_to_rect[:3, :] = calib["Tr"]
    shift = np.eye(4)
    shift[:3, 3] = offset
    return intrinsics, shift @ lidar_to_rect


def sequence_camera(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The (intrinsics, lidar_to_camera) of the sequence at `folder`, or None when it has no
    `image_2/` folder or no `calib.txt` (its scans are then read without a camera)."""
    missing = [name for name, present in (("image_2/", (folder / "image_2").is_dir()),
                                          ("calib.txt", (folder / "calib.txt").is_file())) if not present]
    if missing:
        log.info("%s: no %s, so its scans have no camera (labelled from the lidar alone, no 2D baseline)",
                 folder, " and no ".join(missing))
        return None
    return camera_from_calib(read_calib(folder / "calib.txt"))


def sequence_is_labelled(folder: Path, frames: list[str]) -> bool:
    """Whether the sequence at `folder` is labelled; a labelled one must label every frame.

    A sequence without any `.label` file is unlabelled (as SemanticKITTI's test sequences are)
    and legal. One with some `.label` files but not all has lost files, whose scans would
    otherwise read as unlabelled and silently shrink an evaluation: an error naming the first
    missing file.
    """
    labels = folder / "labels"
    present = {p.stem for p in labels.glob("*.label")} if labels.is_dir() else set()
    if not present:
        return False
    missing = [frame for frame in frames if frame not in present]
    if missing:
        have = len(frames) - len(missing)
        raise DatasetError(
            f"{labels / (missing[0] + '.label')}: label file is missing, but {have} other "
            f"{'scan' if have == 1 else 'scans'} of sequence {folder.name} {'has' if have == 1 else 'have'} labels "
            f"({len(missing)} of {len(frames)} scans lack one); restore the missing files, or remove {labels} "
            "to read the sequence as unlabelled"
        )
    return True


def read_label_file(path: Path, point_count: int) -> np.ndarray:
    """The raw uint32 labels of a `.label` file, one per point of its scan; errors name the file."""
    if not path.is_file():
        raise DatasetError(f"{path}: label file is missing, though the other scans of its sequence have labels")
    size = path.stat().st_size
    if size % 4:
        raise DatasetError(f"{path}: size {size} bytes is not a multiple of 4 (uint32 labels); "
                           "the file is truncated or has trailing bytes")
    raw = np.fromfile(path, dtype=np.uint32)
    check_label_count(path, raw, point_count)
    return raw


class SemanticKittiReader(ScanReader):
    """Scan records of one split of a SemanticKITTI-format dataset."""

    def __init__(self, root: Path | str, split: str, label_map: LabelMap | None = None, labels: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.label_map = label_map or DATASET_FORMATS["semantic_kitti"].label_map()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: SemanticKITTI dataset root does not exist")
        sequences_dir = self.root / "sequences"
        if not sequences_dir.is_dir():
            raise DatasetError(f"{sequences_dir}: SemanticKITTI sequences folder is missing")
        self.scan_ids: list[str] = []
        self._camera: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}  # None: the sequence has no camera
        self._labelled: set[str] = set()  # the sequences with labels (every scan of them has one)
        for sequence in self._split_sequences():
            velodyne = sequences_dir / sequence / "velodyne"
            if not velodyne.is_dir():
                raise DatasetError(f"{velodyne}: sequence folder of split {split!r} is missing")
            self._camera[sequence] = sequence_camera(sequences_dir / sequence)
            frames = [p.stem for p in sorted(velodyne.glob("*.bin"))]
            if labels and sequence_is_labelled(sequences_dir / sequence, frames):  # labels=False: never read them
                self._labelled.add(sequence)
            self.scan_ids += [f"{sequence}/{frame}" for frame in frames]
        if not self.scan_ids:
            raise DatasetError(f"{sequences_dir}: split {split!r} selects no scan")

    def _split_sequences(self) -> list[str]:
        listed = split_from_file(self.root, self.split)
        if listed is not None:
            return listed
        if self.split not in OFFICIAL_SPLITS:
            raise DatasetError(f"unknown SemanticKITTI split {self.split!r}; known: {sorted(OFFICIAL_SPLITS)}")
        return OFFICIAL_SPLITS[self.split]

    def files(self, scan_id: str) -> ScanFiles:
        sequence, frame = scan_id.split("/")
        folder = self.root / "sequences" / sequence
        labels = folder / "labels" / f"{frame}.label" if sequence in self._labelled else None
        images = () if self._camera[sequence] is None else (folder / "image_2" / f"{frame}.png",)
        return ScanFiles(folder / "velodyne" / f"{frame}.bin", labels, images)

    def table_files(self) -> list[Path]:
        """splits.json (when present) and the split's calib.txt files; the scan list itself is the
        velodyne folders' listing, which the index holds as the scans' point files."""
        candidates = [self.root / "splits.json"] + [self.root / "sequences" / s / "calib.txt" for s in self._camera]
        return [path for path in candidates if path.is_file()]

    def read(self, scan_id: str) -> ScanRecord:
        sequence, frame = scan_id.split("/")
        folder = self.root / "sequences" / sequence
        point_path = folder / "velodyne" / f"{frame}.bin"
        points = read_float32_records(point_path, 4)
        labels = None
        if sequence in self._labelled:
            label_path = folder / "labels" / f"{frame}.label"
            raw = read_label_file(label_path, len(points))
            labels = self.label_map(raw & 0xFFFF, label_path).astype(np.int64)
        points, labels, dropped = drop_non_finite(scan_id, points, labels, point_path)
        if self._camera[sequence] is None:
            return ScanRecord(scan_id, points, labels, [], dropped)
        image_path = check_image_exists(folder / "image_2" / f"{frame}.png")
        with Image.open(image_path) as image:  # reads the header only
            width, height = image.size
        intrinsics, lidar_to_camera = self._camera[sequence]
        camera = CameraView("image_2", image_path, intrinsics, lidar_to_camera, width, height)
        return ScanRecord(scan_id, points, labels, [camera], dropped)
