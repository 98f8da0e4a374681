"""Geometry shared by the stages: projecting lidar points into calibrated cameras.

All functions are vectorised over points and cameras: a scan of 35k points and six cameras
is one batched matrix product, with no per-point loop and no per-camera copy of the cloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.datasets.base import CameraView


@dataclass(frozen=True)
class PointPixels:
    """Every (point, camera) pair where the point lands inside the camera's image.

    point_index: int64 (P,) index into the scan's points.
    camera_index: int64 (P,) index into the scan's camera list.
    pixel: float64 (P, 2) continuous (u, v) in the camera's own image pixels.
    depth: float64 (P,) depth along the camera's optical axis, in metres.
    """

    point_index: np.ndarray
    camera_index: np.ndarray
    pixel: np.ndarray
    depth: np.ndarray

    def __len__(self) -> int:
        return len(self.point_index)

    def take(self, keep: np.ndarray) -> PointPixels:
        return PointPixels(self.point_index[keep], self.camera_index[keep], self.pixel[keep], self.depth[keep])


def project_to_cameras(
    xyz: np.ndarray,
    cameras: Sequence[CameraView],
    min_depth: float = 1.0,
    min_pixel: float = 0.0,
) -> PointPixels:
    """Project lidar-frame points into all cameras of a scan at once.

    A pair is kept when the depth exceeds `min_depth` and the pixel lies strictly inside
    `min_pixel < u < width - 1` and `min_pixel < v < height - 1` (ScaLR+ uses min_pixel = 0;
    nuscenes-devkit's `map_pointcloud_to_image` uses 1). Pairs are ordered by camera, then
    by point index.
    """
    if not cameras:
        empty = np.zeros(0, dtype=np.int64)
        return PointPixels(empty, empty, np.zeros((0, 2)), np.zeros(0))
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    transforms = np.stack([c.lidar_to_camera for c in cameras])  # (C, 4, 4)
    intrinsics = np.stack([c.intrinsics for c in cameras])  # (C, 3, 3)
    # (C, N, 3) camera-frame coordinates: R p + t for every camera in one product.
    in_camera = np.einsum("cij,nj->cni", transforms[:, :3, :3], xyz) + transforms[:, None, :3, 3]
    depth = in_camera[..., 2]
    in_front = depth > min_depth
    safe_depth = np.where(in_front, depth, 1.0)
    homogeneous = np.einsum("cij,cnj->cni", intrinsics, in_camera)
    u = homogeneous[..., 0] / safe_depth
    v = homogeneous[..., 1] / safe_depth
    widths = np.array([c.width for c in cameras], dtype=np.float64)[:, None]
    heights = np.array([c.height for c in cameras], dtype=np.float64)[:, None]
    keep = in_front & (u > min_pixel) & (u < widths - 1) & (v > min_pixel) & (v < heights - 1)
    camera_index, point_index = np.nonzero(keep)
    return PointPixels(
        point_index=point_index,
        camera_index=camera_index,
        pixel=np.stack([u[keep], v[keep]], axis=1),
        depth=depth[keep],
    )


def pixel_to_patch(
    pixel: np.ndarray, image_size: tuple[int, int], input_size: tuple[int, int], patch_size: int
) -> np.ndarray:
    """Patch (row, col) of each pixel once the image is resized to the teacher's input size.

    pixel: (P, 2) continuous (u, v) in the original image of size (height, width).
    input_size: (height, width) of the teacher input; patch_size: the ViT patch side.
    Returns int64 (P, 2) as (row, col) in the teacher's patch grid.
    """
    height, width = image_size
    input_height, input_width = input_size
    scaled_u = np.floor(pixel[:, 0]) * (input_width / width)
    scaled_v = np.floor(pixel[:, 1]) * (input_height / height)
    row = np.clip((scaled_v // patch_size).astype(np.int64), 0, input_height // patch_size - 1)
    col = np.clip((scaled_u // patch_size).astype(np.int64), 0, input_width // patch_size - 1)
    return np.stack([row, col], axis=1)
