"""Geometric primitives the demo world is made of, stored as flat arrays for ray casting.

Three shapes are enough to build a street:

* boxes rotated about the vertical axis (buildings, sidewalks, vehicles, barriers...),
* vertical cylinders with a flat top (poles, trunks, pedestrians' bodies, cones),
* axis-aligned ellipsoids (foliage, heads).

The ground (road and terrain at z = 0) is not a primitive: it is an analytic plane whose
class depends on the lateral position (see `Ground`).

Every primitive carries a demo class index (row of `classes.DEMO_CLASSES`) and an
instance id (0 for "stuff"; one id per object for "things", shared by all the parts of
an object such as a car's body and cabin). Primitives are numbered boxes first, then
cylinders, then ellipsoids; that global number is what the ray caster reports per ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import CLASS_INDEX

# Ray "hit nothing" and "hit the ground plane" markers in primitive-index buffers.
NO_HIT = -1
GROUND_HIT = -2


@dataclass(frozen=True)
class Ground:
    """The flat ground z = 0: road where |y| <= road_half_width (street frame), terrain elsewhere."""

    road_half_width: float

    def class_at(self, y: np.ndarray) -> np.ndarray:
        road, terrain = CLASS_INDEX["road"], CLASS_INDEX["terrain"]
        return np.where(np.abs(y) <= self.road_half_width, road, terrain).astype(np.int16)


@dataclass(frozen=True)
class Primitives:
    """All primitives of a world as arrays (one row per primitive).

    boxes: (B, 7) centre x, y, z, half sizes x, y, z (in the box frame), yaw about z.
    cylinders: (C, 5) axis x, y, bottom z, top z, radius.
    ellipsoids: (E, 6) centre x, y, z, radii x, y, z.
    classes, instances: (B + C + E,) per primitive, in global order.
    sphere_centers, sphere_radii: a bounding sphere per primitive (for culling).
    bounds: (B + C + E, 7) a bounding box per primitive, in the box row format (the box
    itself, or the axis-aligned box around a cylinder or ellipsoid), for tighter culling.
    """

    boxes: np.ndarray
    cylinders: np.ndarray
    ellipsoids: np.ndarray
    classes: np.ndarray
    instances: np.ndarray
    sphere_centers: np.ndarray
    sphere_radii: np.ndarray
    bounds: np.ndarray

    @property
    def count(self) -> int:
        return len(self.classes)

    @property
    def first_cylinder(self) -> int:
        return len(self.boxes)

    @property
    def first_ellipsoid(self) -> int:
        return len(self.boxes) + len(self.cylinders)


@dataclass(frozen=True)
class World:
    """What the sensors see: primitives in a static frame, plus optionally the ground plane."""

    primitives: Primitives
    ground: Ground | None


class PrimitiveBuilder:
    """Collects primitives one object at a time, then freezes them into `Primitives`."""

    def __init__(self) -> None:
        self._boxes: list[tuple[list[float], int, int]] = []
        self._cylinders: list[tuple[list[float], int, int]] = []
        self._ellipsoids: list[tuple[list[float], int, int]] = []
        self._next_instance = 1

    def new_instance(self) -> int:
        """A fresh instance id (1, 2, ...) for the parts of one object."""
        instance = self._next_instance
        self._next_instance += 1
        return instance

    def box(self, cls: str, center, size, yaw: float = 0.0, instance: int = 0) -> None:
        """Box of full `size` (length along its heading, width, height) centred at `center`."""
        row = [*map(float, center), *(0.5 * float(s) for s in size), float(yaw)]
        self._boxes.append((row, CLASS_INDEX[cls], instance))

    def cylinder(self, cls: str, x: float, y: float, z0: float, z1: float, radius: float, instance: int = 0) -> None:
        self._cylinders.append(([float(x), float(y), float(z0), float(z1), float(radius)], CLASS_INDEX[cls], instance))

    def ellipsoid(self, cls: str, center, radii, instance: int = 0) -> None:
        self._ellipsoids.append(([*map(float, center), *map(float, radii)], CLASS_INDEX[cls], instance))

    def build(self) -> Primitives:
        boxes = np.array([r for r, _, _ in self._boxes], dtype=np.float64).reshape(-1, 7)
        cylinders = np.array([r for r, _, _ in self._cylinders], dtype=np.float64).reshape(-1, 5)
        ellipsoids = np.array([r for r, _, _ in self._ellipsoids], dtype=np.float64).reshape(-1, 6)
        parts = self._boxes + self._cylinders + self._ellipsoids
        classes = np.array([c for _, c, _ in parts], dtype=np.int16)
        instances = np.array([i for _, _, i in parts], dtype=np.int32)

        # Bounding spheres: a box's half diagonal, a cylinder's half height and radius, an
        # ellipsoid's largest radius.
        box_c = boxes[:, :3]
        box_r = np.linalg.norm(boxes[:, 3:6], axis=1)
        cyl_c = np.stack([cylinders[:, 0], cylinders[:, 1], 0.5 * (cylinders[:, 2] + cylinders[:, 3])], axis=1)
        cyl_r = np.hypot(0.5 * (cylinders[:, 3] - cylinders[:, 2]), cylinders[:, 4])
        ell_c = ellipsoids[:, :3]
        ell_r = ellipsoids[:, 3:6].max(axis=1) if len(ellipsoids) else np.zeros(0)
        zeros_c, zeros_e = np.zeros((len(cylinders), 1)), np.zeros((len(ellipsoids), 1))
        cyl_half = np.stack([cylinders[:, 4], cylinders[:, 4], 0.5 * (cylinders[:, 3] - cylinders[:, 2])], axis=1)
        cyl_bounds = np.hstack([cyl_c, cyl_half, zeros_c])
        ell_bounds = np.hstack([ell_c, ellipsoids[:, 3:6], zeros_e])
        return Primitives(
            boxes=boxes,
            cylinders=cylinders,
            ellipsoids=ellipsoids,
            classes=classes,
            instances=instances,
            sphere_centers=np.concatenate([box_c, cyl_c, ell_c]).reshape(-1, 3),
            sphere_radii=np.concatenate([box_r, cyl_r, ell_r]) * (1.0 + 1e-6) + 1e-6,
            bounds=np.concatenate([boxes, cyl_bounds, ell_bounds]).reshape(-1, 7),
        )
