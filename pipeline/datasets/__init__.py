"""Dataset readers. Each yields `ScanRecord`s (see `base`), whatever the dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import DatasetParams


def open_reader(dataset: DatasetParams, split: str, **options):
    """The reader of one split of the dataset that params select: nuScenes (through
    nuscenes-devkit, `dataset.version` is its version folder) or SemanticKITTI. Options go to
    the reader's constructor (e.g. `ego_motion_compensation` for nuScenes)."""
    if dataset.format == "nuscenes":
        from pipeline.datasets.nuscenes import NuScenesReader

        return NuScenesReader(dataset.root, dataset.version, split, **options)
    if dataset.format == "semantic_kitti":
        from pipeline.datasets.semantic_kitti import SemanticKittiReader

        return SemanticKittiReader(dataset.root, split, **options)
    raise ValueError(f"unknown dataset format {dataset.format!r}; choose nuscenes or semantic_kitti")
