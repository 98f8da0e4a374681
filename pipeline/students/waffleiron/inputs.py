"""WaffleIron's inputs: a raw scan (M, >=4) -> `PreparedScan`, several -> one padded `PointBatch`.

`prepare_scan` runs the ScaLR+ inference chain on one scan (the shared steps are in
`pipeline.students.inputs`):

1. voxelise at `voxel_size` (0.1 m), keeping the first point of each occupied voxel;
2. crop to the field of view;
3. features: intensity standardised per dataset, then x, y, z, then radius (5 channels);
4. kNN with k = num_neighbors + 1 = 17 on x, y, z, the point itself first;
5. one cell index per 2D grid (see `cell_indices`);
6. back-projection: every original point takes the output of its nearest kept point.

For training (`augmentation=...`, with an explicit `rng`) the voxel keeps a random point,
then the kept points are cut to `max_points` (`cap_points`: a ball or a uniform subsample)
and randomly rotated about z, flipped
and scaled, and only then cropped, so the features describe the augmented cloud.

`collate` pads several prepared scans into the batch layout of `model.WaffleIron`.
Everything here is numpy / scipy except the final batch tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial import cKDTree

from pipeline.datasets.base import IntensityStats
from pipeline.students.inputs import (
    Augmentation,
    augment_points,
    back_projection,
    crop_to_fov,
    input_features,
    voxelize,
)

if TYPE_CHECKING:  # the config imports this module to prepare its scans
    from pipeline.students.waffleiron.model import WaffleIronConfig

# The two coordinate axes spanning the plane orthogonal to each projection axis.
PLANE_AXES: dict[int, tuple[int, int]] = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


# --------------------------------------------------------------------------- single steps


def knn_neighbors(xyz: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest points of every point, int64 (N, k), the point itself first.

    Exact duplicates could make cKDTree list a twin before the point itself, so self is
    swapped to the front. With fewer than k points the missing neighbours are the point
    itself (a zero difference, harmless in the embedding's max).
    """
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    num_points = len(xyz)
    _, index = cKDTree(xyz).query(xyz, k=k, workers=-1)
    index = np.asarray(index, dtype=np.int64).reshape(num_points, k)
    rows = np.arange(num_points)
    index = np.where(index >= num_points, rows[:, None], index)  # scipy marks "no neighbour" with N
    is_self = index == rows[:, None]
    self_at = np.where(is_self.any(axis=1), is_self.argmax(axis=1), 0)
    index[rows, self_at] = index[rows, 0]
    index[:, 0] = rows
    return index


def cell_indices(xyz: np.ndarray, config: WaffleIronConfig) -> np.ndarray:
    """Flat cell index of every point on every 2D grid, int64 (G, N).

    For grid g projecting along axis a with shape (H, W), the two other coordinates
    (in increasing axis order) are shifted by the FOV minimum, divided by the cell size
    (FOV extent / grid size), truncated to int and clamped to the grid; the index is
    i0 * W + i1. Defaults: (x, y) on 256 x 256, (x, z) and (y, z) on 256 x 32, 0.5 m cells.
    """
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    lo = np.asarray(config.fov[0], dtype=np.float64)
    hi = np.asarray(config.fov[1], dtype=np.float64)
    out = np.empty((len(config.grids), len(xyz)), dtype=np.int64)
    for g, (axis, grid) in enumerate(zip(config.projection_axes, config.grids)):
        axes = list(PLANE_AXES[axis])
        shape = np.asarray(grid, dtype=np.int64)
        cell_size = (hi[axes] - lo[axes]) / shape
        quantised = ((xyz[:, axes] - lo[axes]) / cell_size).astype(np.int64)
        quantised = np.clip(quantised, 0, shape - 1)
        out[g] = quantised[:, 0] * shape[1] + quantised[:, 1]
    return out


# --------------------------------------------------------------------------- whole chain


@dataclass(frozen=True, eq=False)
class PreparedScan:
    """What WaffleIron needs for one scan, plus the way back to the original points.

    features: float32 (N, Cin) network inputs of the N kept points.
    neighbors: int64 (N, K + 1) kNN among the kept points, self first.
    cell_indices: int64 (G, N) flat cell of each kept point on each grid.
    point_index: int64 (N,) index of each kept point in the original scan (use it to
        pick labels or teacher targets of the network's points).
    back_projection: int64 (M,) for each of the M original points, the kept point whose
        output it takes: `output[back_projection]` labels the whole original scan.
    """

    features: np.ndarray
    neighbors: np.ndarray
    cell_indices: np.ndarray
    point_index: np.ndarray
    back_projection: np.ndarray

    @property
    def num_points(self) -> int:
        return len(self.point_index)


def prepare_scan(
    points_xyzi: np.ndarray,
    config: WaffleIronConfig,
    intensity_stats: IntensityStats,
    *,
    augmentation: Augmentation | None = None,
    rng: np.random.Generator | None = None,
) -> PreparedScan:
    """Run the whole pre-processing on one scan (float (M, >=4): x, y, z, intensity, ...).

    Without `augmentation` this is the deterministic inference chain. With it, `rng` is
    required and voxel representatives, cut and transform are random. Raises
    ValueError for non-finite coordinates or when no point lies in the field of view.
    """
    points = np.asarray(points_xyzi)
    if points.ndim != 2 or points.shape[1] < 4:
        raise ValueError(f"points must be (M, >=4) x, y, z, intensity; got shape {points.shape}")
    if config.input_channels != 5:
        raise ValueError(f"prepare_scan builds the 5 ScaLR channels, config has input_channels={config.input_channels}")
    if augmentation is not None and rng is None:
        raise ValueError("augmentation needs an explicit numpy Generator `rng`")
    xyz = points[:, :3]
    if not np.isfinite(xyz).all():
        raise ValueError(f"{int((~np.isfinite(xyz).all(axis=1)).sum())} points have non-finite coordinates")

    kept = voxelize(xyz, config.voxel_size, rng if augmentation is not None else None)
    net_xyz = xyz[kept]
    if augmentation is not None:
        net_xyz, keep = augment_points(net_xyz, rng, augmentation)
        kept = kept[keep]
    inside = crop_to_fov(net_xyz, config.fov)
    kept, net_xyz = kept[inside], net_xyz[inside]
    if len(kept) == 0:
        raise ValueError(f"none of the {len(points)} points lies in the field of view {config.fov}")

    return PreparedScan(
        features=input_features(net_xyz, points[kept, 3], intensity_stats),
        neighbors=knn_neighbors(net_xyz, config.num_neighbors + 1),
        cell_indices=cell_indices(net_xyz, config),
        point_index=kept,
        back_projection=back_projection(xyz, xyz[kept]),
    )


# --------------------------------------------------------------------------- batching


@dataclass(frozen=True, eq=False)
class PointBatch:
    """Several scans padded to N points, in WaffleIron's batch layout (torch tensors).

    features float32 (B, Cin, N); neighbors int64 (B, N, K + 1); cell_indices int64
    (B, G, N); occupancy float32 (B, N), 1 for real points; num_points: real points per scan
    (the first num_points[b] columns of scan b are real).
    """

    features: torch.Tensor
    neighbors: torch.Tensor
    cell_indices: torch.Tensor
    occupancy: torch.Tensor
    num_points: tuple[int, ...]

    def to(self, device: torch.device | str) -> PointBatch:
        return PointBatch(
            self.features.to(device),
            self.neighbors.to(device),
            self.cell_indices.to(device),
            self.occupancy.to(device),
            self.num_points,
        )

    def unpad(self, output: torch.Tensor) -> list[torch.Tensor]:
        """Split a network output (B, D, N) into one (n_b, D) tensor per scan."""
        return [output[b, :, :n].transpose(0, 1) for b, n in enumerate(self.num_points)]

    def run(self, model: Callable[..., torch.Tensor]) -> list[torch.Tensor]:
        """`model` (a WaffleIron or its folded build) on this batch: one (n_b, D) tensor per scan."""
        return self.unpad(model(self.features, self.neighbors, self.cell_indices, self.occupancy))


def collate(scans: Sequence[PreparedScan], num_points: int | None = None) -> PointBatch:
    """Pad scans to a common N (the largest scan, or `num_points` if given).

    Padded points get zero features, cell 0 on every grid, the last padded point
    (index N - 1) as all their neighbours, and occupancy 0, so they never reach the
    outputs of real points.
    """
    if not scans:
        raise ValueError("collate needs at least one scan")
    sizes = tuple(scan.num_points for scan in scans)
    total = max(sizes) if num_points is None else num_points
    if max(sizes) > total:
        raise ValueError(f"a scan has {max(sizes)} points, more than num_points={total}")
    channels = scans[0].features.shape[1]
    k = scans[0].neighbors.shape[1]
    grids = scans[0].cell_indices.shape[0]

    features = np.zeros((len(scans), channels, total), dtype=np.float32)
    neighbors = np.full((len(scans), total, k), total - 1, dtype=np.int64)
    cells = np.zeros((len(scans), grids, total), dtype=np.int64)
    occupancy = np.zeros((len(scans), total), dtype=np.float32)
    for b, scan in enumerate(scans):
        n = scan.num_points
        features[b, :, :n] = scan.features.T
        neighbors[b, :n] = scan.neighbors
        cells[b, :, :n] = scan.cell_indices
        occupancy[b, :n] = 1.0
    return PointBatch(
        torch.from_numpy(features),
        torch.from_numpy(neighbors),
        torch.from_numpy(cells),
        torch.from_numpy(occupancy),
        sizes,
    )


__all__ = [
    "PLANE_AXES",
    "PointBatch",
    "PreparedScan",
    "cell_indices",
    "collate",
    "knn_neighbors",
    "prepare_scan",
]
