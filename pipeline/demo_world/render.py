"""Turn ray casts into sensor data: camera images (with truth) and lidar scans."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .appearance import sky_colors, surface_colors
from .classes import INTENSITY_OF_CLASS
from .primitives import World
from .raycast import Hits, PinholeGrid, SphericalGrid, cast, surface
from .sensors import LidarModel


@dataclass(frozen=True)
class CameraImage:
    """A rendered image and its truth.

    rgb: (H, W, 3) uint8. classes: (H, W) int16 demo class index, -1 where nothing was hit.
    instances: (H, W) int32. depth: (H, W) float64 camera-frame z of the surface, 0 = nothing.
    """

    rgb: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    depth: np.ndarray


def render_camera(
    world: World,
    intrinsics: np.ndarray,
    width: int,
    height: int,
    world_from_camera: np.ndarray,
    far: float = 200.0,
    background: tuple[int, int, int] | None = None,
) -> CameraImage:
    """Ray-cast a pinhole camera; pixels that hit nothing show the sky (or `background`)."""
    grid = PinholeGrid(np.asarray(intrinsics, dtype=np.float64), width, height, world_from_camera)
    camera_dirs = grid.camera_directions()
    dirs = camera_dirs @ world_from_camera[:3, :3].T
    hits = cast(world, grid, far, dirs)
    surf = surface(world, grid.origin, dirs, hits)

    rgb = np.empty((height, width, 3))
    rgb[surf.mask] = surface_colors(surf.classes, surf.points, surf.normals)
    if background is None:
        rgb[~surf.mask] = sky_colors(dirs[~surf.mask])
    else:
        rgb[~surf.mask] = np.array(background, dtype=np.float64)
    classes = np.full((height, width), -1, dtype=np.int16)
    classes[surf.mask] = surf.classes
    instances = np.zeros((height, width), dtype=np.int32)
    instances[surf.mask] = surf.instances
    depth = np.where(surf.mask, hits.distance * camera_dirs[..., 2], 0.0)
    return CameraImage(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), classes, instances, depth)


@dataclass(frozen=True)
class LidarScan:
    """One revolution, in firing order (azimuth by azimuth, beams bottom to top).

    points: (N, 3) float64 in the lidar frame. ring: (N,) beam index (0 = lowest beam).
    classes: (N,) int16 demo class index, -1 for spurious (noise) returns.
    instances: (N,) int32 (0 for stuff and noise). intensity: (N,) 0..255, integer valued.
    """

    points: np.ndarray
    ring: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    intensity: np.ndarray


def scan_lidar(world: World, model: LidarModel, world_from_lidar: np.ndarray, rng: np.random.Generator) -> LidarScan:
    """Ray-cast one revolution from a single pose (a perfectly motion-compensated sweep)."""
    grid = SphericalGrid(model.elevations, model.azimuth_steps, float(rng.uniform()), world_from_lidar)
    lidar_dirs = grid.lidar_directions()
    dirs = lidar_dirs @ world_from_lidar[:3, :3].T
    hits = cast(world, grid, model.max_range, dirs)

    # Firing order: transpose (beam, azimuth) grids to (azimuth, beam).
    lidar_dirs = lidar_dirs.transpose(1, 0, 2)
    dirs = dirs.transpose(1, 0, 2)
    hits = Hits(hits.distance.T, hits.primitive.T)
    ring_grid = np.broadcast_to(np.arange(len(model.elevations), dtype=np.int16)[None, :], hits.distance.shape)
    surf = surface(world, grid.origin, dirs, hits)

    n_rays = hits.distance.size
    distance = hits.distance.reshape(-1).copy()
    classes = np.full(n_rays, -1, dtype=np.int16)
    instances = np.zeros(n_rays, dtype=np.int32)
    flat_mask = surf.mask.reshape(-1)
    classes[flat_mask] = surf.classes
    instances[flat_mask] = surf.instances
    intensity = np.zeros(n_rays)
    intensity[flat_mask] = INTENSITY_OF_CLASS[surf.classes] + rng.normal(0.0, model.intensity_noise, len(surf.classes))
    distance[flat_mask] += rng.normal(0.0, model.range_noise, int(flat_mask.sum()))

    # Spurious returns replace a few rays' echoes, in front of whatever the ray would hit.
    spurious = rng.uniform(size=n_rays) < model.noise_fraction
    reach = np.minimum(np.where(np.isfinite(distance), distance, 25.0), 25.0)
    distance[spurious] = rng.uniform(model.min_range + 0.5, np.maximum(reach[spurious], model.min_range + 0.6))
    classes[spurious] = -1
    instances[spurious] = 0
    intensity[spurious] = rng.uniform(0.0, 12.0, int(spurious.sum()))

    keep = np.isfinite(distance) & (distance >= model.min_range) & (distance <= model.max_range)
    points = lidar_dirs.reshape(-1, 3)[keep] * distance[keep][:, None]
    return LidarScan(
        points=points,
        ring=ring_grid.reshape(-1)[keep],
        classes=classes[keep],
        instances=instances[keep],
        intensity=np.clip(np.rint(intensity[keep]), 0.0, 255.0),
    )
