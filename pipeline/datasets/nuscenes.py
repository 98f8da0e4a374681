"""nuScenes reader through nuscenes-devkit: lidar keyframes with lidarseg labels and six cameras.

The same code reads the real dataset and the demo world; only the root, version and split
names differ. Splits come from `<root>/splits.json` when that file exists (the demo world
ships one), else from the devkit's official scene lists (`train`, `val`, `mini_train`, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion

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

CAMERA_CHANNELS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
POINT_VALUES = 5  # x, y, z, intensity, ring index


def pose_matrix(record: dict) -> np.ndarray:
    """4x4 transform of a calibrated_sensor or ego_pose record (child frame -> parent frame)."""
    matrix = np.eye(4)
    matrix[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    matrix[:3, 3] = record["translation"]
    return matrix


@dataclass(frozen=True)
class NuScenesSplit:
    root: Path
    version: str
    split: str


class NuScenesReader(ScanReader):
    """Scan records of one split of a nuScenes-format dataset.

    `ego_motion_compensation=False` deliberately uses the lidar's ego pose for the cameras too
    (the classic mistake); it exists so tests can prove that the projection checks can fail.
    """

    def __init__(
        self,
        root: Path | str,
        version: str,
        split: str,
        label_map: LabelMap | None = None,
        cameras: tuple[str, ...] = CAMERA_CHANNELS,
        ego_motion_compensation: bool = True,
        labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.version = version
        self.split = split
        self.cameras = cameras
        self.ego_motion_compensation = ego_motion_compensation
        self.label_map = label_map or DATASET_FORMATS["nuscenes"].label_map()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: nuScenes dataset root does not exist")
        if not (self.root / version).is_dir():
            raise DatasetError(f"{self.root / version}: nuScenes version folder is missing")
        from nuscenes.nuscenes import (
            NuScenes,  # heavy import, only when a reader is built
        )

        self.nusc = NuScenes(version=version, dataroot=str(self.root), verbose=False)
        scene_names = set(self._split_scene_names())
        self.scan_ids: list[str] = []
        for scene in sorted(self.nusc.scene, key=lambda s: s["name"]):
            if scene["name"] not in scene_names:
                continue
            sample_token = scene["first_sample_token"]
            while sample_token:
                sample = self.nusc.get("sample", sample_token)
                self.scan_ids.append(sample["data"]["LIDAR_TOP"])
                sample_token = sample["next"]
        if not self.scan_ids:
            raise DatasetError(f"{self.root / version}: split {split!r} selects no scan")
        self.has_labels = labels and hasattr(self.nusc, "lidarseg")  # labels=False: never read a label file

    def _split_scene_names(self) -> list[str]:
        listed = split_from_file(self.root, self.split)
        if listed is not None:
            return listed
        from nuscenes.utils.splits import create_splits_scenes

        official = create_splits_scenes(verbose=False)
        if self.split not in official:
            raise DatasetError(f"unknown nuScenes split {self.split!r}; known: {sorted(official)}")
        return official[self.split]

    def read(self, scan_id: str) -> ScanRecord:
        lidar = self.nusc.get("sample_data", scan_id)
        point_path = self.root / lidar["filename"]
        points = read_float32_records(point_path, POINT_VALUES)[:, :4].copy()
        labels = None
        if self.has_labels:
            label_path = self.root / self.nusc.get("lidarseg", scan_id)["filename"]
            if not label_path.is_file():
                raise DatasetError(f"{label_path}: lidarseg label file is missing")
            raw = np.fromfile(label_path, dtype=np.uint8)
            check_label_count(label_path, raw, len(points))
            labels = self.label_map(raw, label_path).astype(np.int64)
        points, labels, dropped = drop_non_finite(scan_id, points, labels, point_path)
        return ScanRecord(
            scan_id=scan_id,
            points=points,
            labels=labels,
            cameras=self._cameras(lidar),
            dropped=dropped,
        )

    def files(self, scan_id: str) -> ScanFiles:
        lidar = self.nusc.get("sample_data", scan_id)
        labels = self.root / self.nusc.get("lidarseg", scan_id)["filename"] if self.has_labels else None
        data = self.nusc.get("sample", lidar["sample_token"])["data"]
        images = tuple(self.root / self.nusc.get("sample_data", data[channel])["filename"]
                       for channel in self.cameras if channel in data)
        return ScanFiles(self.root / lidar["filename"], labels, images)

    def table_files(self) -> list[Path]:
        """Every file of the version folder (the tables, lidarseg.json included) and splits.json."""
        tables = sorted(path for path in (self.root / self.version).iterdir() if path.is_file())
        split_file = self.root / "splits.json"
        return tables + ([split_file] if split_file.is_file() else [])

    def _cameras(self, lidar: dict) -> list[CameraView]:
        sample = self.nusc.get("sample", lidar["sample_token"])
        lidar_to_ego = pose_matrix(self.nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"]))
        ego_lidar_to_global = pose_matrix(self.nusc.get("ego_pose", lidar["ego_pose_token"]))
        views = []
        for channel in self.cameras:
            if channel not in sample["data"]:
                continue
            cam = self.nusc.get("sample_data", sample["data"][channel])
            calib = self.nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
            if self.ego_motion_compensation:
                ego_cam_to_global = pose_matrix(self.nusc.get("ego_pose", cam["ego_pose_token"]))
            else:
                ego_cam_to_global = ego_lidar_to_global
            # lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera
            lidar_to_camera = (
                np.linalg.inv(pose_matrix(calib))
                @ np.linalg.inv(ego_cam_to_global)
                @ ego_lidar_to_global
                @ lidar_to_ego
            )
            views.append(
                CameraView(
                    name=channel,
                    image_path=check_image_exists(self.root / cam["filename"]),
                    intrinsics=np.asarray(calib["camera_intrinsic"], dtype=np.float64),
                    lidar_to_camera=lidar_to_camera,
                    width=int(cam["width"]),
                    height=int(cam["height"]),
                )
            )
        return views
