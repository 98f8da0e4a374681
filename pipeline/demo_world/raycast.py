"""Vectorised ray casting of a `World` for a grid of rays sharing one origin.

Both sensors shoot rays from one point on a regular 2D grid: a camera's pixels (rows,
columns) and a spinning lidar's (beam, azimuth step). That structure gives cheap and
exact culling: for each primitive the grid computes, from the primitive's bounding
sphere, the rectangle of grid cells whose rays can possibly hit it, and only those rays
are intersected with it. The Python loop therefore runs over primitives (hundreds), and
each iteration is a numpy operation over the rays of one rectangle; there is no loop
over rays or points.

Distances are along unit ray directions, so a lidar range is the hit distance itself and
a camera depth is distance times the ray's z component in the camera frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .primitives import GROUND_HIT, NO_HIT, Primitives, World
from .transforms import apply, invert

_EPS = 1e-6  # smallest accepted hit distance (m): a ray never hits its own origin


@dataclass(frozen=True)
class Hits:
    """Per-ray result of a cast: distance (inf where nothing was hit) and the primitive hit
    (its global index, GROUND_HIT for the ground plane, NO_HIT for nothing)."""

    distance: np.ndarray  # (H, W) float64
    primitive: np.ndarray  # (H, W) int32


@dataclass(frozen=True)
class PinholeGrid:
    """One ray through the centre of every pixel of a pinhole camera.

    Pixel (row v, column u) covers the continuous image coordinates [u, u+1) x [v, v+1),
    so its ray goes through (u + 0.5, v + 0.5): a point projecting to (x, y) lies in pixel
    (floor(x), floor(y)). Camera frame: x right, y down, z forward.
    """

    intrinsics: np.ndarray  # (3, 3)
    width: int
    height: int
    world_from_camera: np.ndarray  # (4, 4)

    @property
    def origin(self) -> np.ndarray:
        return self.world_from_camera[:3, 3]

    def camera_directions(self) -> np.ndarray:
        """(H, W, 3) unit ray directions in the camera frame."""
        k = self.intrinsics
        u = (np.arange(self.width) + 0.5 - k[0, 2]) / k[0, 0]
        v = (np.arange(self.height) + 0.5 - k[1, 2]) / k[1, 1]
        d = np.empty((self.height, self.width, 3))
        d[..., 0] = u[None, :]
        d[..., 1] = v[:, None]
        d[..., 2] = 1.0
        return d / np.linalg.norm(d, axis=2, keepdims=True)

    def directions(self) -> np.ndarray:
        """(H, W, 3) unit ray directions in the world frame."""
        return self.camera_directions() @ self.world_from_camera[:3, :3].T

    def blocks(self, prims: Primitives, max_distance: float) -> Iterator[tuple[int, slice, slice]]:
        """(primitive index, rows, columns) of the pixels whose rays may hit each primitive.

        The rectangle bounds the projection of the primitive's bounding box clipped to the
        half-space in front of the camera: the projection of a convex polytope is the
        convex hull of its projected vertices, so the rectangle is exact for boxes.
        """
        near = 1e-4
        camera_from_world = invert(self.world_from_camera)
        centers = apply(camera_from_world, prims.sphere_centers)
        in_range = np.linalg.norm(centers, axis=1) - prims.sphere_radii < max_distance
        corners = apply(camera_from_world, box_corners(prims.bounds).reshape(-1, 3)).reshape(-1, 8, 3)
        # Vertices of the clipped polytope: corners in front, and edge crossings of z = near.
        a, b = corners[:, _EDGES[:, 0]], corners[:, _EDGES[:, 1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            s = (near - a[..., 2]) / (b[..., 2] - a[..., 2])
        crossing = (s > 0.0) & (s < 1.0)
        crossings = a + np.where(crossing, s, 0.0)[..., None] * (b - a)
        crossings[..., 2] = near
        vertices = np.concatenate([corners, crossings], axis=1)
        valid = np.concatenate([corners[..., 2] >= near, crossing], axis=1)
        z = np.where(valid, vertices[..., 2], 1.0)
        k = self.intrinsics
        u = k[0, 0] * vertices[..., 0] / z + k[0, 2]
        v = k[1, 1] * vertices[..., 1] / z + k[1, 2]
        u0 = np.where(valid, u, np.inf).min(axis=1)
        u1 = np.where(valid, u, -np.inf).max(axis=1)
        v0 = np.where(valid, v, np.inf).min(axis=1)
        v1 = np.where(valid, v, -np.inf).max(axis=1)
        visible = in_range & valid.any(axis=1)
        # Column j's ray passes through u = j + 0.5; a tiny margin keeps edge pixels.
        c0 = np.ceil(np.clip(u0, -1.0, self.width + 1.0) - 0.5 - 1e-6)
        c1 = np.floor(np.clip(u1, -1.0, self.width + 1.0) - 0.5 + 1e-6)
        r0 = np.ceil(np.clip(v0, -1.0, self.height + 1.0) - 0.5 - 1e-6)
        r1 = np.floor(np.clip(v1, -1.0, self.height + 1.0) - 0.5 + 1e-6)
        for i in np.flatnonzero(visible):
            cs, ce = max(int(c0[i]), 0), min(int(c1[i]), self.width - 1)
            rs, re = max(int(r0[i]), 0), min(int(r1[i]), self.height - 1)
            if cs <= ce and rs <= re:
                yield int(i), slice(rs, re + 1), slice(cs, ce + 1)


# Corner k of a box has signs (bit 2, bit 1, bit 0) -> (x, y, z); edges join corners one bit apart.
_CORNER_SIGNS = np.array([[1 if k & 4 else -1, 1 if k & 2 else -1, 1 if k & 1 else -1] for k in range(8)], dtype=np.float64)
_EDGES = np.array([(i, i | bit) for i in range(8) for bit in (1, 2, 4) if not i & bit])


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(P, 8, 3) world corners of boxes in the row format (centre, half sizes, yaw)."""
    local = _CORNER_SIGNS[None, :, :] * boxes[:, None, 3:6]
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=2) + boxes[:, None, :3]


@dataclass(frozen=True)
class SphericalGrid:
    """The rays of a spinning multi-beam lidar: one per (beam, azimuth step).

    Beam elevations are sorted ascending (row b has elevation elevations[b]); column j has
    azimuth (j + azimuth_offset) * 2 pi / azimuth_steps, counter-clockwise from the lidar's
    x axis in its xy plane.
    """

    elevations: np.ndarray  # (B,) radians, ascending
    azimuth_steps: int
    azimuth_offset: float
    world_from_lidar: np.ndarray  # (4, 4)

    @property
    def origin(self) -> np.ndarray:
        return self.world_from_lidar[:3, 3]

    @property
    def azimuths(self) -> np.ndarray:
        return (np.arange(self.azimuth_steps) + self.azimuth_offset) * (2.0 * np.pi / self.azimuth_steps)

    def lidar_directions(self) -> np.ndarray:
        """(B, A, 3) unit ray directions in the lidar frame."""
        el = self.elevations[:, None]
        az = self.azimuths[None, :]
        return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), axis=2)

    def directions(self) -> np.ndarray:
        return self.lidar_directions() @ self.world_from_lidar[:3, :3].T

    def blocks(self, prims: Primitives, max_distance: float) -> Iterator[tuple[int, slice, slice]]:
        """(primitive index, beams, azimuth steps) of the rays that may hit each primitive,
        from its bounding sphere. A sphere straddling the azimuth origin yields two blocks.
        """
        centers, radii = prims.sphere_centers, prims.sphere_radii
        c = apply(invert(self.world_from_lidar), centers)
        dist = np.linalg.norm(c, axis=1)
        dxy = np.hypot(c[:, 0], c[:, 1])
        n_beams, n_az = len(self.elevations), self.azimuth_steps
        step = 2.0 * np.pi / n_az
        visible = dist - radii < max_distance
        with np.errstate(invalid="ignore", divide="ignore"):
            # Any ray hitting the sphere is within its angular radius of the centre direction,
            # so elevation and azimuth differ by at most that much (azimuth: on the xy shadow).
            half_el = np.arcsin(np.clip(radii / dist, 0.0, 1.0)) + 1e-9
            el = np.arcsin(np.clip(c[:, 2] / dist, -1.0, 1.0))
            half_az = np.arcsin(np.clip(radii / dxy, 0.0, 1.0)) + 1e-9
            az = np.arctan2(c[:, 1], c[:, 0])
        b0 = np.searchsorted(self.elevations, el - half_el, side="left")
        b1 = np.searchsorted(self.elevations, el + half_el, side="right")
        all_rays = (dist <= radii) | (dxy <= radii)
        j0 = np.ceil((az - half_az) / step - self.azimuth_offset).astype(np.int64)
        j1 = np.floor((az + half_az) / step - self.azimuth_offset).astype(np.int64)
        for i in np.flatnonzero(visible):
            if dist[i] <= radii[i]:
                yield int(i), slice(0, n_beams), slice(0, n_az)
                continue
            rows = slice(int(b0[i]), int(b1[i]))
            if rows.start >= rows.stop:
                continue
            if all_rays[i] or j1[i] - j0[i] + 1 >= n_az:
                yield int(i), rows, slice(0, n_az)
                continue
            if j1[i] < j0[i]:
                continue
            start, stop = int(j0[i]) % n_az, int(j1[i]) % n_az
            if start <= stop:
                yield int(i), rows, slice(start, stop + 1)
            else:  # wraps through azimuth 0
                yield int(i), rows, slice(start, n_az)
                yield int(i), rows, slice(0, stop + 1)


# --- intersections of one primitive with many rays --------------------------------------
# Each takes the shared origin o (3,) and the ray direction components dx, dy, dz (arrays
# of one shape) and returns the hit distances in that shape, inf where the ray misses.


def intersect_box(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Slab test in the box frame (rotated by -yaw about z)."""
    cx, cy, cz, hx, hy, hz, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    px, py = o[0] - cx, o[1] - cy
    with np.errstate(divide="ignore", invalid="ignore"):
        # A zero direction component gives +-inf slab distances (or NaN, a miss, when the
        # origin lies exactly on that slab's plane).
        near, far = _slab(c * px + s * py, hx, c * dx + s * dy)
        n, f = _slab(-s * px + c * py, hy, -s * dx + c * dy)
        np.maximum(near, n, out=near)
        np.minimum(far, f, out=far)
        n, f = _slab(o[2] - cz, hz, dz)
        np.maximum(near, n, out=near)
        np.minimum(far, f, out=far)
        hit = (near <= far) & (near > _EPS)
    return np.where(hit, near, np.inf)


def _slab(p: float, h: float, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / d
    t1 = (-h - p) * inv
    t2 = (h - p) * inv
    return np.minimum(t1, t2), np.maximum(t1, t2)


def intersect_cylinder(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, cyl: np.ndarray) -> np.ndarray:
    """Vertical cylinder: side wall between z0 and z1, plus the flat top cap."""
    cx, cy, z0, z1, r = cyl
    px, py = o[0] - cx, o[1] - cy
    a = dx * dx + dy * dy
    b = px * dx + py * dy
    disc = b * b - a * (px * px + py * py - r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / a
        z = o[2] + t_side * dz
        side_ok = (disc >= 0.0) & (a > 1e-12) & (t_side > _EPS) & (z >= z0) & (z <= z1)
        t_top = (z1 - o[2]) / dz
        tx, ty = px + t_top * dx, py + t_top * dy
        top_ok = (dz < 0.0) & (t_top > _EPS) & (tx * tx + ty * ty <= r * r)
    return np.minimum(np.where(side_ok, t_side, np.inf), np.where(top_ok, t_top, np.inf))


def intersect_ellipsoid(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Axis-aligned ellipsoid: scale space so that it becomes the unit sphere."""
    (cx, cy, cz), (rx, ry, rz) = ell[:3], ell[3:6]
    px, py, pz = (o[0] - cx) / rx, (o[1] - cy) / ry, (o[2] - cz) / rz
    qx, qy, qz = dx / rx, dy / ry, dz / rz
    a = qx * qx + qy * qy + qz * qz
    b = qx * px + qy * py + qz * pz
    disc = b * b - a * (px * px + py * py + pz * pz - 1.0)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0.0) & (t > _EPS), t, np.inf)


def intersect_primitive(prims: Primitives, index: int, o: np.ndarray, dx, dy, dz) -> np.ndarray:
    if index < prims.first_cylinder:
        return intersect_box(o, dx, dy, dz, prims.boxes[index])
    if index < prims.first_ellipsoid:
        return intersect_cylinder(o, dx, dy, dz, prims.cylinders[index - prims.first_cylinder])
    return intersect_ellipsoid(o, dx, dy, dz, prims.ellipsoids[index - prims.first_ellipsoid])


def cast(world: World, grid: PinholeGrid | SphericalGrid, max_distance: float, directions: np.ndarray | None = None) -> Hits:
    """Nearest hit of every ray of `grid` within `max_distance` (world frame rays)."""
    dirs = grid.directions() if directions is None else directions
    dx, dy, dz = (np.ascontiguousarray(dirs[..., i]) for i in range(3))
    o = grid.origin
    distance = np.full(dx.shape, float(max_distance))
    primitive = np.full(dx.shape, NO_HIT, dtype=np.int32)

    if world.ground is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -o[2] / dz
        on_ground = (dz < 0.0) & (t > _EPS) & (t < distance)
        distance[on_ground] = t[on_ground]
        primitive[on_ground] = GROUND_HIT

    prims = world.primitives
    for index, rows, cols in grid.blocks(prims, max_distance):
        t = intersect_primitive(prims, index, o, dx[rows, cols], dy[rows, cols], dz[rows, cols])
        current = distance[rows, cols]  # a view: writing into it updates `distance`
        better = t < current
        if better.any():
            current[better] = t[better]
            primitive[rows, cols][better] = index

    distance[primitive == NO_HIT] = np.inf
    return Hits(distance=distance, primitive=primitive)


@dataclass(frozen=True)
class Surface:
    """What each ray of a cast hit, for rays that hit something (flattened, masked).

    mask: (H, W) bool, rays that hit. The other arrays have one row per True in `mask`
    (row-major order): class index, instance id, world point, unit world normal.
    """

    mask: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    points: np.ndarray
    normals: np.ndarray


def surface(world: World, origin: np.ndarray, directions: np.ndarray, hits: Hits) -> Surface:
    """Class, instance, hit point and surface normal of every ray that hit something."""
    mask = hits.primitive != NO_HIT
    prim = hits.primitive[mask]
    points = origin + directions[mask] * hits.distance[mask][:, None]
    normals = np.zeros_like(points)
    classes = np.empty(len(prim), dtype=np.int16)
    instances = np.zeros(len(prim), dtype=np.int32)
    p = world.primitives

    ground = prim == GROUND_HIT
    if ground.any():
        classes[ground] = world.ground.class_at(points[ground, 1])
        normals[ground, 2] = 1.0
    objects = ~ground
    classes[objects] = p.classes[prim[objects]]
    instances[objects] = p.instances[prim[objects]]

    sel = np.flatnonzero(objects & (prim < p.first_cylinder))
    if len(sel):
        # Box: the face whose slab the point sits on is the axis of largest |local / half|.
        b = p.boxes[prim[sel]]
        c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
        rel = points[sel] - b[:, :3]
        local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], axis=1)
        ratio = local / b[:, 3:6]
        axis = np.abs(ratio).argmax(axis=1)
        sign = np.sign(ratio[np.arange(len(sel)), axis])
        n_local = np.zeros_like(local)
        n_local[np.arange(len(sel)), axis] = sign
        normals[sel] = np.stack(
            [c * n_local[:, 0] - s * n_local[:, 1], s * n_local[:, 0] + c * n_local[:, 1], n_local[:, 2]], axis=1
        )

    sel = np.flatnonzero(objects & (prim >= p.first_cylinder) & (prim < p.first_ellipsoid))
    if len(sel):
        cyl = p.cylinders[prim[sel] - p.first_cylinder]
        top = points[sel, 2] >= cyl[:, 3] - 1e-6
        side = np.stack([points[sel, 0] - cyl[:, 0], points[sel, 1] - cyl[:, 1], np.zeros(len(sel))], axis=1)
        side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-12)
        normals[sel] = np.where(top[:, None], np.array([0.0, 0.0, 1.0]), side)

    sel = np.flatnonzero(objects & (prim >= p.first_ellipsoid))
    if len(sel):
        ell = p.ellipsoids[prim[sel] - p.first_ellipsoid]
        grad = (points[sel] - ell[:, :3]) / ell[:, 3:6] ** 2
        normals[sel] = grad / np.linalg.norm(grad, axis=1, keepdims=True)

    return Surface(mask=mask, classes=classes, instances=instances, points=points, normals=normals)
