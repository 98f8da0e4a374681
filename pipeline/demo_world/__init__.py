"""A synthetic driving world written in the real nuScenes and SemanticKITTI formats.

No dataset or model weights can be downloaded where this project runs, yet a new user
should see the whole chain work in minutes. This package builds deterministic (from a
seed) demo streets out of boxes, cylinders and ellipsoids, simulates a spinning lidar and
cameras over them by vectorised ray casting, and writes the result so that the project's
real readers read it unchanged:

    <out>/nuscenes/         a nuScenes dataroot (version v1.0-demo) with lidarseg labels
    <out>/semantic_kitti/   SemanticKITTI sequences
    <out>/summary.json      counts (scenes, frames, points, class points), seed, size

Both parts also carry per-pixel truth (class and depth) of every camera image, which lets
tests check a projection against what each pixel really sees.

Modules: `classes` (the demo class table), `primitives` and `scene` (the world),
`raycast`, `appearance` and `render` (the sensors' physics), `sensors` (models and
calibrations), `nuscenes_writer`, `kitti_writer`, `world` (the atomic writer),
`exemplars` (isolated renders of one class, for the procedural prototype generator).
"""

from .classes import (
    DEMO_CLASS_NAMES,
    DEMO_CLASSES,
    KITTI_RAW_NAMES,
    NUSCENES_LIDARSEG_CATEGORIES,
    DemoClass,
    demo_class,
)
from .config import PRESETS, DemoWorldConfig
from .exemplars import render_exemplar
from .world import write_demo_world

__all__ = [
    "DEMO_CLASSES",
    "DEMO_CLASS_NAMES",
    "KITTI_RAW_NAMES",
    "NUSCENES_LIDARSEG_CATEGORIES",
    "PRESETS",
    "DemoClass",
    "DemoWorldConfig",
    "demo_class",
    "render_exemplar",
    "write_demo_world",
]
