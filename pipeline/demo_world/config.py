"""Sizes of the demo world, as a frozen dataclass with named presets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class DemoWorldConfig:
    """How much demo data to generate, and at which resolution.

    nuScenes part: `nuscenes_scenes` scenes (the first `nuscenes_train_scenes` are train,
    the rest val) of `keyframes_per_scene` keyframes at `keyframe_hz`, each with one lidar
    scan and six camera images of camera_width x camera_height.
    SemanticKITTI part: `kitti_sequences` sequences (the first `kitti_train_sequences` are
    train) of `kitti_frames_per_sequence` frames at 10 Hz.
    `size` is the preset name, recorded in summary.json; `seed` drives everything random.
    """

    size: str = "default"
    seed: int = 0
    nuscenes_scenes: int = 5
    nuscenes_train_scenes: int = 3
    keyframes_per_scene: int = 8
    keyframe_hz: float = 2.0
    lidar_azimuth_steps: int = 1080
    camera_width: int = 400
    camera_height: int = 225
    kitti_sequences: int = 2
    kitti_train_sequences: int = 1
    kitti_frames_per_sequence: int = 12
    kitti_azimuth_steps: int = 1024
    kitti_width: int = 620
    kitti_height: int = 188
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        positive = [
            "nuscenes_scenes", "keyframes_per_scene", "lidar_azimuth_steps", "camera_width", "camera_height",
            "kitti_sequences", "kitti_frames_per_sequence", "kitti_azimuth_steps", "kitti_width", "kitti_height",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DemoWorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.nuscenes_train_scenes <= self.nuscenes_scenes:
            raise ValueError("DemoWorldConfig.nuscenes_train_scenes must be between 0 and nuscenes_scenes")
        if not 0 <= self.kitti_train_sequences <= self.kitti_sequences:
            raise ValueError("DemoWorldConfig.kitti_train_sequences must be between 0 and kitti_sequences")
        if self.kitti_sequences > 100:
            raise ValueError("DemoWorldConfig.kitti_sequences must be <= 100 (two-digit sequence names)")
        if not 0.0 < self.keyframe_hz <= 20.0:
            raise ValueError("DemoWorldConfig.keyframe_hz must be in (0, 20]")
        if self.seed < 0:
            raise ValueError("DemoWorldConfig.seed must be >= 0")

    @classmethod
    def preset(cls, size: str, seed: int = 0) -> "DemoWorldConfig":
        """A named preset ('default' or 'small') with the given seed."""
        if size not in PRESETS:
            raise ValueError(f"unknown demo world size {size!r}; choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[size], seed=seed)


PRESETS: dict[str, DemoWorldConfig] = {
    # ~40 nuScenes keyframes (3 train + 2 val scenes) and 24 KITTI frames ("00" train, "01" val).
    "default": DemoWorldConfig(),
    # For tests: a few seconds.
    "small": DemoWorldConfig(
        size="small",
        nuscenes_scenes=2,
        nuscenes_train_scenes=1,
        keyframes_per_scene=2,
        lidar_azimuth_steps=540,
        camera_width=192,
        camera_height=108,
        kitti_sequences=2,
        kitti_train_sequences=1,
        kitti_frames_per_sequence=2,
        kitti_azimuth_steps=512,
        kitti_width=310,
        kitti_height=94,
    ),
}


@dataclass(frozen=True)
class DemoWorldPresetConfig:
    """The `demo_world:` params section: which preset of the world to write, and its seed."""

    size: Literal["default", "small"] = "default"
    seed: int = 0

    def world(self) -> DemoWorldConfig:
        """The full description of the world this section selects."""
        return DemoWorldConfig.preset(self.size, self.seed)
