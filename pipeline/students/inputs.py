"""What every student's input pre-processing shares: point steps used by more than one student.

- `input_features`: the 5 input channels (intensity standardised by the dataset's
  `IntensityStats`, from `pipeline.datasets`; x, y, z; radius);
- `voxelize` (one point per occupied voxel) and `crop_to_fov` (the field-of-view box);
- `back_projection`: every original point takes the output of its nearest kept point;
- `Augmentation` and its steps (`cap_points`: `random_subsample` or `ball_crop`;
  `random_transform`, `augment_points`).

Each student turns a raw scan into its own inputs with these steps, beside its network:
`waffleiron.inputs.prepare_scan` (kNN and grid cells), `sparse_unet.prepare_voxels` (a voxel
grid). Everything here is numpy / scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from pipeline.datasets.base import IntensityStats


@dataclass(frozen=True)
class Augmentation:
    """Training augmentations of ScaLR+.

    rotate_z: rotate by an angle uniform in [-pi, pi) about z.
    flip_probability: chance of mirroring one horizontal axis, x or y with equal odds
        (2/3 overall in the reference, i.e. none / flip x / flip y each 1/3).
    scale_range: isotropic scale uniform in [1 - r, 1 + r].
    max_points: keep at most this many points; None keeps all.
    cap: how: "ball" (ScaLR+) keeps the `max_points` points nearest to one randomly drawn
        point, a local ball at full density; "uniform" a uniform random subsample (thins the
        whole cloud, so kNN neighbourhoods differ from inference).
    """

    rotate_z: bool = True
    flip_probability: float = 2.0 / 3.0
    scale_range: float = 0.1
    max_points: int | None = 20_000
    cap: Literal["ball", "uniform"] = "uniform"

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"Augmentation.flip_probability must be in [0, 1], got {self.flip_probability}")
        if not 0.0 <= self.scale_range < 1.0:
            raise ValueError(f"Augmentation.scale_range must be in [0, 1), got {self.scale_range}")
        if self.max_points is not None and self.max_points < 1:
            raise ValueError(f"Augmentation.max_points must be >= 1 or None, got {self.max_points}")
        if self.cap not in ("ball", "uniform"):
            raise ValueError(f"Augmentation.cap must be ball or uniform, got {self.cap!r}")


# --------------------------------------------------------------------------- single steps


def voxelize(xyz: np.ndarray, voxel_size: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Keep one point per occupied voxel; return the kept indices, int64 ascending.

    Voxel coordinates are floor((xyz - xyz.min(0)) / voxel_size), i.e. measured from the
    scan's minimum corner. Without `rng` the kept point is the first of its voxel in scan
    order (inference); with `rng` it is a random one (training).
    """
    xyz = np.asarray(xyz)[:, :3]
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    order = rng.permutation(len(xyz)) if rng is not None else np.arange(len(xyz))
    voxels = ((xyz[order] - xyz.min(axis=0)) / voxel_size).astype(np.int64)
    extent = voxels.max(axis=0) + 1
    if float(np.prod(extent.astype(np.float64))) < 2.0**62:
        # One int64 key per voxel sorts much faster than rows.
        keys = (voxels[:, 0] * extent[1] + voxels[:, 1]) * extent[2] + voxels[:, 2]
        _, first = np.unique(keys, return_index=True)
    else:  # absurd extents (outliers far away): fall back to unique rows
        _, first = np.unique(voxels, axis=0, return_index=True)
    # np.unique's return_index is the first occurrence (stable sort).
    return np.sort(order[first]).astype(np.int64)


def crop_to_fov(xyz: np.ndarray, fov: Sequence[Sequence[float]], margin: float = 1e-4) -> np.ndarray:
    """Boolean mask of the points strictly inside the box fov = (min xyz, max xyz).

    The `margin` keeps points off the box faces (as the reference), so cell indices of kept
    points never reach the grid size.
    """
    lo = np.asarray(fov[0], dtype=np.float64) + margin
    hi = np.asarray(fov[1], dtype=np.float64) - margin
    xyz = np.asarray(xyz)[:, :3]
    return np.all((xyz > lo) & (xyz < hi), axis=1)


def input_features(xyz: np.ndarray, intensity: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """The 5 input channels, float32 (N, 5): standardised intensity, x, y, z, radius."""
    xyz = np.asarray(xyz, dtype=np.float32)[:, :3]
    radius = np.linalg.norm(xyz, axis=1)
    return np.column_stack([stats.standardise(intensity), xyz, radius]).astype(np.float32)


def back_projection(original_xyz: np.ndarray, kept_xyz: np.ndarray) -> np.ndarray:
    """For every original point, the index of its nearest kept point, int64 (M,)."""
    tree = cKDTree(np.asarray(kept_xyz, dtype=np.float64)[:, :3])
    _, index = tree.query(np.asarray(original_xyz, dtype=np.float64)[:, :3], k=1, workers=-1)
    return np.asarray(index, dtype=np.int64)


# --------------------------------------------------------------------------- augmentations


def random_subsample(num_points: int, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most `max_points` distinct indices of range(num_points), uniformly, ascending."""
    if max_points is None or num_points <= max_points:
        return np.arange(num_points, dtype=np.int64)
    return np.sort(rng.choice(num_points, size=max_points, replace=False)).astype(np.int64)


def ball_crop(xyz: np.ndarray, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    """The `max_points` points nearest (3D distance) to one point drawn uniformly, ascending
    indices; all of them when there are no more. Ties at the edge go to the lower index."""
    num_points = len(xyz)
    if max_points is None or num_points <= max_points:
        return np.arange(num_points, dtype=np.int64)
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    centre = xyz[rng.integers(num_points)]
    distance = np.square(xyz - centre).sum(axis=1)
    return np.sort(np.argsort(distance, kind="stable")[:max_points]).astype(np.int64)


def cap_points(xyz: np.ndarray, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """At most `augmentation.max_points` indices of the points, by `augmentation.cap`, ascending."""
    if augmentation.cap == "ball":
        return ball_crop(xyz, augmentation.max_points, rng)
    return random_subsample(len(xyz), augmentation.max_points, rng)


def random_transform(xyz: np.ndarray, rng: np.random.Generator, augmentation: Augmentation) -> np.ndarray:
    """Rotate about z, maybe flip x or y, scale: a new (N, 3) array of xyz's dtype.

    The same four random numbers are drawn whatever the flags, so the stream of `rng`
    does not depend on which augmentations are on.
    """
    xyz = np.asarray(xyz)[:, :3]
    angle = rng.uniform(-np.pi, np.pi)
    flip = rng.random() < augmentation.flip_probability
    flip_axis = int(rng.integers(2))  # 0: mirror x, 1: mirror y
    scale = 1.0 + rng.uniform(-augmentation.scale_range, augmentation.scale_range)

    out = xyz.astype(np.float64)
    if augmentation.rotate_z:
        cos, sin = np.cos(angle), np.sin(angle)
        x, y = out[:, 0].copy(), out[:, 1].copy()
        out[:, 0] = cos * x - sin * y
        out[:, 1] = sin * x + cos * y
    if flip:
        out[:, flip_axis] *= -1.0
    out *= scale
    return out.astype(xyz.dtype if np.issubdtype(xyz.dtype, np.floating) else np.float64)


def augment_points(
    xyz: np.ndarray, rng: np.random.Generator, augmentation: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """Training augmentation: cut to `max_points` (`cap_points`), then rotate / flip / scale.

    Returns (augmented xyz (n, 3), kept indices into xyz (n,) ascending). Deterministic for
    a given Generator state.
    """
    keep = cap_points(xyz, augmentation, rng)
    return random_transform(np.asarray(xyz)[keep], rng, augmentation), keep


__all__ = [
    "Augmentation",
    "IntensityStats",
    "augment_points",
    "back_projection",
    "ball_crop",
    "cap_points",
    "crop_to_fov",
    "input_features",
    "random_subsample",
    "random_transform",
    "voxelize",
]
