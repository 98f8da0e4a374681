"""2D-to-3D assignments: which teacher pixel and patch each lidar point is taught by.

For one scan, every point is projected into every camera (`geometry.project_to_cameras`),
and EVERY (point, camera) pair that passes the visibility rules is kept: a point seen by two
cameras has two rows. Training picks among them (one camera per scan and epoch for ScaLR+,
one per point for DITR: `pipeline.training.recipe`). The pixel is rescaled to the teacher's
input size, and the teacher feature of the pair is then either the patch at
floor(pixel / patch) ("patch", DITR) or the bilinear x patch-size upsampled feature at the
pixel ("pixel", ScaLR+). Both are expressed as four taps into the patch grid with weights, so
one storage layout serves both modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pipeline.config_loading import require
from pipeline.datasets.base import ScanRecord
from pipeline.geometry import PointPixels, project_to_cameras
from pipeline.teachers.upsampling import bilinear_taps

AssignmentMode = Literal["pixel", "patch"]


@dataclass(frozen=True)
class AssignmentsConfig:
    """The `assignments:` params section: how lidar points are tied to teacher patches.

    Every (point, camera) pair that passes the rules below is kept; which camera teaches a
    point is chosen in training (`distill.camera`).

    mode: "pixel" (ScaLR+) takes the bilinearly upsampled teacher feature at the point's
    pixel; "patch" (DITR) takes the patch at floor(pixel / patch size).
    min_depth: points closer than this to a camera (metres) are not assigned to it; a pair
    also needs its pixel strictly inside the image, 0 < u < W-1 and 0 < v < H-1 (ScaLR+).
    occlusion_cell: 0 assigns every point that projects into an image (ScaLR+); N > 0 first
    drops the points that nearer lidar points hide in an N x N pixel cell of the camera image
    (a lidar z-buffer), so points are taught, and 2D-labelled, by what the camera really sees.
    Scale N with the image resolution.
    """

    mode: AssignmentMode = "pixel"
    min_depth: float = 1.0
    occlusion_cell: int = 0

    def __post_init__(self) -> None:
        require(self, non_negative=("min_depth", "occlusion_cell"))


@dataclass(frozen=True)
class ScanAssignments:
    """Every (point, camera) pair of a scan that passes the visibility rules: one row each,
    sorted by point, then camera (a point seen by k cameras has k rows; unseen points none).

    point_index: int32 (A,); camera: uint8 (A,) index into the scan's cameras;
    pixel: uint16 (A, 2) integer (u, v) in the teacher's input image;
    patch: uint16 (A, 2) (row, col) in the teacher's patch grid.
    """

    point_index: np.ndarray
    camera: np.ndarray
    pixel: np.ndarray
    patch: np.ndarray

    def __len__(self) -> int:
        return len(self.point_index)


OCCLUSION_MARGIN = 0.5  # metres (plus 5% of the depth) a point may lie behind its cell's nearest


def visible_pairs(pairs: PointPixels, cell_pixels: int) -> np.ndarray:
    """Mask of the (point, camera) pairs not hidden behind other lidar points.

    A lidar z-buffer: each camera image is cut into cells of `cell_pixels` x `cell_pixels`
    pixels, and a pair is hidden when another point of its cell is nearer to the camera by
    more than OCCLUSION_MARGIN plus 5% of its depth. The cameras sit elsewhere than the lidar
    and fire at other times, so they see some lidar points occluded; without this test such
    a point would be taught (and, in the 2D baseline, labelled by) whatever hides it.
    """
    col = pairs.pixel[:, 0].astype(np.int64) // cell_pixels
    row = pairs.pixel[:, 1].astype(np.int64) // cell_pixels
    cells = (pairs.camera_index.astype(np.int64) << 40) + (row << 20) + col
    unique_cells, cell_of_pair = np.unique(cells, return_inverse=True)
    nearest = np.full(len(unique_cells), np.inf)
    np.minimum.at(nearest, cell_of_pair, pairs.depth)
    return pairs.depth <= nearest[cell_of_pair] * 1.05 + OCCLUSION_MARGIN


def assign_points(
    record: ScanRecord,
    input_size: tuple[int, int],
    patch_size: int,
    min_depth: float,
    occlusion_cell: int = 0,
) -> ScanAssignments:
    """Every (point, camera) pair some camera sees, and its teacher pixel; no random draw.

    occlusion_cell: 0 keeps every projected pair (ScaLR+); > 0 first drops the pairs the
    lidar z-buffer of `visible_pairs` finds hidden (cells of that many camera pixels), so a
    point keeps only the cameras that really see it.
    """
    pairs = project_to_cameras(record.points[:, :3], record.cameras, min_depth=min_depth)
    if occlusion_cell > 0:
        pairs = pairs.take(visible_pairs(pairs, occlusion_cell))
    chosen = pairs.take(np.lexsort((pairs.camera_index, pairs.point_index)))  # by point, then camera
    input_height, input_width = input_size
    widths = np.array([c.width for c in record.cameras], dtype=np.float64)[chosen.camera_index]
    heights = np.array([c.height for c in record.cameras], dtype=np.float64)[chosen.camera_index]
    # The pixel holding the point, rescaled to the teacher input (ScaLR+: floor, then rescale).
    u = np.floor(np.floor(chosen.pixel[:, 0]) * input_width / widths).astype(np.int64)
    v = np.floor(np.floor(chosen.pixel[:, 1]) * input_height / heights).astype(np.int64)
    u = np.clip(u, 0, input_width - 1)
    v = np.clip(v, 0, input_height - 1)
    return ScanAssignments(
        point_index=chosen.point_index.astype(np.int32),
        camera=chosen.camera_index.astype(np.uint8),
        pixel=np.stack([u, v], axis=1).astype(np.uint16),
        patch=np.stack([v // patch_size, u // patch_size], axis=1).astype(np.uint16),
    )


@dataclass(frozen=True)
class PatchTaps:
    """Teacher feature of each assignment = sum_k weight[:, k] * feature of patch[:, k].

    patch: int64 (A, 4) flat patch id camera * h * w + row * w + col; weight: float32 (A, 4).
    """

    patch: np.ndarray
    weight: np.ndarray


def patch_taps(
    assignments: ScanAssignments, grid: tuple[int, int], patch_size: int, mode: AssignmentMode
) -> PatchTaps:
    """The four patch taps of each assignment for either mode (see the module doc)."""
    h, w = grid
    base = assignments.camera.astype(np.int64) * h * w
    if mode == "patch":
        flat = base + assignments.patch[:, 0].astype(np.int64) * w + assignments.patch[:, 1]
        weight = np.zeros((len(flat), 4), dtype=np.float32)
        weight[:, 0] = 1.0
        return PatchTaps(np.repeat(flat[:, None], 4, axis=1), weight)
    u = torch.as_tensor(assignments.pixel[:, 0].astype(np.int64))
    v = torch.as_tensor(assignments.pixel[:, 1].astype(np.int64))
    y0, y1, wy = (t.numpy() for t in bilinear_taps(v, h * patch_size, h))
    x0, x1, wx = (t.numpy() for t in bilinear_taps(u, w * patch_size, w))
    patch = np.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], axis=1) + base[:, None]
    weight = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=1)
    return PatchTaps(patch, weight.astype(np.float32))


@dataclass(frozen=True)
class NeededPatches:
    """The patches a scan's assignments read, and each assignment's taps into them.

    patch_id: int64 (U,) sorted unique flat patch ids (see `PatchTaps`);
    tap: int32 (A, 4) rows into `patch_id`; weight: float32 (A, 4).
    """

    patch_id: np.ndarray
    tap: np.ndarray
    weight: np.ndarray

    def cameras(self, grid: tuple[int, int]) -> np.ndarray:
        """The cameras whose images hold at least one needed patch."""
        return np.unique(self.patch_id // (grid[0] * grid[1]))


def needed_patches(taps: PatchTaps) -> NeededPatches:
    patch_id, inverse = np.unique(taps.patch, return_inverse=True)
    return NeededPatches(patch_id, inverse.reshape(taps.patch.shape).astype(np.int32), taps.weight)


def combine_taps(features: torch.Tensor, tap: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Teacher target of each assignment: (A, D) = sum over its 4 taps of weight * feature."""
    return (features[tap.long()].float() * weight.float().unsqueeze(-1)).sum(dim=1)


def per_point_mean(point_index: np.ndarray, features: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """The mean feature of each point over its rows (its cameras), for a point seen by several.

    point_index: (A,) the point of each row; features: (A, D). Returns (the U distinct points,
    ascending; (U, D) their mean features).
    """
    points, row_point = np.unique(point_index, return_inverse=True)
    index = torch.from_numpy(row_point.reshape(-1))
    summed = torch.zeros(len(points), features.shape[1], dtype=features.dtype).index_add_(0, index, features)
    counts = torch.bincount(index, minlength=len(points)).to(features.dtype)
    return points, summed / counts.unsqueeze(1)
