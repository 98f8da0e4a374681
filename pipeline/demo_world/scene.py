"""The layout of one demo street and the ego vehicle's drive along it.

A street lives in its own "street frame": x along the street, y to the left, z up, the
road surface at z = 0. Across the street, from the centre outwards on each side:

    road (driving lane, parking lane) | curb + sidewalk (0.15 m high) | grass | buildings

Poles stand at the curb, trees and bushes in the grass, parked vehicles, barriers and cones in the
parking lanes (every street has a row of each along the drive), pedestrians (alone or in
small groups) and rows of bicycles on the sidewalks, and some stopped traffic in the
driving lanes (away from the ego's path). The world is static; the ego vehicle drives in
the right-hand lane with a gentle sway, so its heading changes a little over time.

Object shapes are built by `add_<class>` functions, shared with the exemplar renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import Ground, PrimitiveBuilder, World
from .transforms import rigid, rot_z

CURB_HEIGHT = 0.15
DRIVING_LANE_Y = 1.9  # |y| of the driving lane centres


# --- object shapes (x, y: footprint centre; z: the surface they stand on) -----------


def _offset(x: float, y: float, yaw: float, forward: float) -> tuple[float, float]:
    return x + forward * np.cos(yaw), y + forward * np.sin(yaw)


def add_car(b: PrimitiveBuilder, x: float, y: float, yaw: float, rng: np.random.Generator, z: float = 0.0) -> tuple[float, float]:
    """Body box with a cabin box on top (one instance). Returns the footprint (length, width)."""
    length, width = rng.uniform(4.1, 4.9), rng.uniform(1.75, 1.95)
    inst = b.new_instance()
    b.box("car", (x, y, z + 0.62), (length, width, 0.9), yaw, inst)
    cx, cy = _offset(x, y, yaw, -0.1 * length)
    b.box("car", (cx, cy, z + 1.32), (0.55 * length, 0.92 * width, 0.5), yaw, inst)
    return length, width


def add_truck(b: PrimitiveBuilder, x: float, y: float, yaw: float, rng: np.random.Generator, z: float = 0.0) -> tuple[float, float]:
    """Cab and a taller cargo box behind it."""
    length, width = rng.uniform(6.5, 8.5), rng.uniform(2.3, 2.5)
    cab, height = 2.0, rng.uniform(3.0, 3.6)
    inst = b.new_instance()
    cx, cy = _offset(x, y, yaw, 0.5 * length - 0.5 * cab)
    b.box("truck", (cx, cy, z + 0.35 + 1.15), (cab, width, 2.3), yaw, inst)
    cx, cy = _offset(x, y, yaw, -0.5 * cab - 0.1)
    b.box("truck", (cx, cy, z + 0.45 + 0.5 * (height - 0.45)), (length - cab - 0.2, width, height - 0.45), yaw, inst)
    return length, width


def add_bus(b: PrimitiveBuilder, x: float, y: float, yaw: float, rng: np.random.Generator, z: float = 0.0) -> tuple[float, float]:
    length, width, height = rng.uniform(10.5, 12.5), 2.55, rng.uniform(3.0, 3.3)
    b.box("bus", (x, y, z + 0.3 + 0.5 * (height - 0.3)), (length, width, height - 0.3), yaw, b.new_instance())
    return length, width


def add_pedestrian(b: PrimitiveBuilder, x: float, y: float, rng: np.random.Generator, z: float = 0.0) -> None:
    """Cylindrical body (a person in a coat, with a bag) and a head.

    Chunky on purpose: a camera sits up to ~1 m away from the lidar (mount offset plus ego
    motion between their timestamps), so each sees a thin object against a different piece
    of background; a wider body keeps most of a pedestrian's lidar points visible to the
    camera and spans several teacher patches.
    """
    height, radius = rng.uniform(1.5, 1.75), rng.uniform(0.36, 0.44)
    inst = b.new_instance()
    b.cylinder("pedestrian", x, y, z, z + height, radius, inst)
    b.ellipsoid("pedestrian", (x, y, z + height + 0.14), (0.17, 0.17, 0.18), inst)


def add_bicycle(b: PrimitiveBuilder, x: float, y: float, yaw: float, rng: np.random.Generator, z: float = 0.0) -> None:
    """A bicycle is a low slab here (a wheel-sized box, a loaded cargo bike); wide enough to be seen."""
    b.box("bicycle", (x, y, z + 0.6), (rng.uniform(1.8, 2.0), 0.7, 1.2), yaw, b.new_instance())


def add_barrier(b: PrimitiveBuilder, x: float, y: float, yaw: float, z: float = 0.0) -> None:
    b.box("barrier", (x, y, z + 0.5), (2.0, 0.5, 1.0), yaw, b.new_instance())


def add_cone(b: PrimitiveBuilder, x: float, y: float, z: float = 0.0) -> None:
    # A large (0.9 m) cone, as a cylinder: big enough to span a few teacher patches.
    b.cylinder("traffic_cone", x, y, z, z + 0.9, 0.26, b.new_instance())


def add_pole(b: PrimitiveBuilder, x: float, y: float, arm_direction: float, rng: np.random.Generator, z: float = 0.0) -> None:
    """A street-lamp pole with a horizontal arm towards the road (arm_direction = +1/-1 in y)."""
    height, radius = rng.uniform(6.5, 9.0), rng.uniform(0.22, 0.28)
    b.cylinder("pole", x, y, z, z + height, radius)
    b.box("pole", (x, y + arm_direction * 0.9, z + height - 0.15), (0.3, 1.8, 0.3))


def add_tree(b: PrimitiveBuilder, x: float, y: float, rng: np.random.Generator, crown: float = 2.6, z: float = 0.0) -> None:
    """Trunk cylinder and a foliage ellipsoid sitting on it (trunk and vegetation classes)."""
    trunk_height, radius = rng.uniform(2.2, 3.4), rng.uniform(0.28, 0.4)
    b.cylinder("trunk", x, y, z, z + trunk_height + 0.3, radius)
    rxy, rz = rng.uniform(1.6, crown), rng.uniform(1.7, 2.6)
    b.ellipsoid("vegetation", (x, y, z + trunk_height + 0.75 * rz), (rxy, rxy * rng.uniform(0.85, 1.15), rz))


def add_bush(b: PrimitiveBuilder, x: float, y: float, rng: np.random.Generator, z: float = 0.0) -> None:
    """A low vegetation blob, partly sunk into the ground (low enough for a KITTI-like lidar)."""
    r, rz = rng.uniform(0.6, 1.3), rng.uniform(0.5, 0.9)
    b.ellipsoid("vegetation", (x, y, z + 0.6 * rz), (r, r * rng.uniform(0.8, 1.4), rz))


VEHICLES = {"car": add_car, "truck": add_truck, "bus": add_bus}


# --- the street ------------------------------------------------------------------------


@dataclass(frozen=True)
class StreetLayout:
    """Cross-section of a street (metres, street frame)."""

    road_half_width: float
    sidewalk_width: float
    terrain_width: float
    x_min: float
    x_max: float


@dataclass(frozen=True)
class EgoTrajectory:
    """The ego drive in the street frame: forward speed with a slow surge, lateral sway.

    x(t) = speed * t + surge * sin(2 pi t / period), y(t) = lane_y + sway * sin(2 pi t / period + phase),
    heading = direction of the velocity. t in seconds from the start of the drive.
    """

    speed: float
    surge: float
    lane_y: float
    sway: float
    period: float
    phase: float

    def street_from_ego(self, t: float) -> np.ndarray:
        w = 2.0 * np.pi / self.period
        x = self.speed * t + self.surge * np.sin(w * t)
        y = self.lane_y + self.sway * np.sin(w * t + self.phase)
        vx = self.speed + self.surge * w * np.cos(w * t)
        vy = self.sway * w * np.cos(w * t + self.phase)
        return rigid(rot_z(float(np.arctan2(vy, vx))), [x, y, 0.0])


@dataclass(frozen=True)
class StreetScene:
    world: World
    layout: StreetLayout
    trajectory: EgoTrajectory


def build_street(rng: np.random.Generator, drive_seconds: float) -> StreetScene:
    """A random street long enough for a drive of `drive_seconds` (plus sensor range around it)."""
    trajectory = EgoTrajectory(
        # City driving (25-36 km/h): the cameras fire 40-90 ms off the lidar, so the ego
        # moves a measurable 0.3-0.9 m between them, while the lidar/camera parallax stays
        # small next to a pedestrian's width.
        speed=rng.uniform(7.0, 10.0),
        surge=rng.uniform(0.2, 0.6),
        lane_y=-DRIVING_LANE_Y,
        sway=rng.uniform(0.25, 0.5),
        period=rng.uniform(4.0, 7.0),
        phase=rng.uniform(0.0, 2.0 * np.pi),
    )
    travel = trajectory.speed * drive_seconds + 2.0
    layout = StreetLayout(
        road_half_width=rng.uniform(6.0, 7.0),
        # Ground bands are seen at grazing angles, so they are thin in the images: wide
        # enough that most of their points are not at a band border in the teacher's patches.
        sidewalk_width=rng.uniform(3.0, 4.2),
        terrain_width=rng.uniform(5.0, 8.5),
        x_min=-130.0,
        x_max=travel + 130.0,
    )
    b = PrimitiveBuilder()
    # Roadworks on both sides within the drive, so every scene has barriers and cones.
    works = {1.0: "barriers", -1.0: "cones"} if rng.uniform() < 0.5 else {1.0: "cones", -1.0: "barriers"}
    for side in (1.0, -1.0):
        _build_side(b, rng, layout, side, (rng.uniform(0.1, 0.7) * travel, works[side]))
    _build_traffic(b, rng, layout, travel)
    return StreetScene(World(b.build(), Ground(layout.road_half_width)), layout, trajectory)


def _build_side(
    b: PrimitiveBuilder, rng: np.random.Generator, s: StreetLayout, side: float, works: tuple[float, str]
) -> None:
    """Everything on one side of the road (side = +1 left, -1 right); `works` = (x, kind) of a
    roadworks spot the parking lane always gets near x."""
    curb_y = s.road_half_width
    walk_outer = curb_y + s.sidewalk_width
    grass_outer = walk_outer + s.terrain_width

    # Sidewalk slabs in 20 m pieces (small pieces cull better than one long box).
    for x in np.arange(s.x_min, s.x_max, 20.0):
        length = min(20.0, s.x_max - x)
        b.box("sidewalk", (x + length / 2, side * (curb_y + s.sidewalk_width / 2), (CURB_HEIGHT - 0.4) / 2),
              (length, s.sidewalk_width, CURB_HEIGHT + 0.4))

    x = s.x_min + rng.uniform(0.0, 5.0)
    while x < s.x_max:  # buildings, sometimes with an alley between them
        length, depth, height = rng.uniform(8.0, 26.0), rng.uniform(8.0, 16.0), rng.uniform(5.0, 22.0)
        setback = rng.uniform(0.0, 3.0)
        b.box("building", (x + length / 2, side * (grass_outer + setback + depth / 2), height / 2), (length, depth, height))
        x += length + (rng.uniform(8.0, 14.0) if rng.uniform() < 0.2 else rng.uniform(1.5, 5.0))

    x = s.x_min + rng.uniform(0.0, 10.0)
    while x < s.x_max:  # lamp poles at the curb
        add_pole(b, x, side * (curb_y + 0.45), -side, rng, z=CURB_HEIGHT)
        x += rng.uniform(16.0, 28.0)

    x = s.x_min + rng.uniform(0.0, 8.0)
    while x < s.x_max:  # trees in the grass strip
        if rng.uniform() < 0.85:
            y = side * (walk_outer + s.terrain_width / 2 + rng.uniform(-0.5, 0.5))
            add_tree(b, x, y, rng, crown=min(2.8, s.terrain_width / 2 + 1.5))
        x += rng.uniform(7.0, 13.0)

    x = s.x_min + rng.uniform(0.0, 5.0)
    while x < s.x_max:  # bushes in the grass strip
        if rng.uniform() < 0.6:
            add_bush(b, x, side * (walk_outer + rng.uniform(0.8, s.terrain_width - 0.8)), rng)
        x += rng.uniform(3.0, 9.0)

    x = s.x_min + rng.uniform(0.0, 6.0)
    while x < s.x_max:  # pedestrians on the sidewalk, alone or in small groups side by side
        y = side * (curb_y + rng.uniform(0.7, s.sidewalk_width - 0.6))
        for _ in range(int(rng.integers(1, 4))):
            add_pedestrian(b, x, y + rng.normal(0.0, 0.05), rng, z=CURB_HEIGHT)
            x += 0.85
        x += rng.uniform(4.0, 13.0)

    x = s.x_min + rng.uniform(0.0, 15.0)
    while x < s.x_max:  # rows of bicycles parked end to end along the outer edge of the sidewalk
        for _ in range(int(rng.integers(2, 5))):
            add_bicycle(b, x, side * (walk_outer - 0.5), rng.normal(0.0, 0.05), rng, z=CURB_HEIGHT)
            x += 2.05
        x += rng.uniform(12.0, 30.0)

    x = s.x_min + rng.uniform(0.0, 4.0)
    works_x, works_kind = works
    while x < s.x_max:  # the parking lane: vehicles, and now and then a roadworks spot
        u = rng.uniform()
        if works_x is not None and x >= works_x:
            x, works_x = _roadworks(b, rng, x, side * (curb_y - 1.1), works_kind), None
            continue
        if u < 0.16:
            x = _roadworks(b, rng, x, side * (curb_y - 1.1), "barriers" if rng.uniform() < 0.5 else "cones")
            continue
        kind = "car" if u < 0.75 else ("truck" if u < 0.9 else "bus")
        yaw = (0.0 if rng.uniform() < 0.5 else np.pi) + rng.normal(0.0, 0.03)
        # Place by the footprint: the builder draws the size, so build at a provisional x
        # and keep the outer edge 0.25 m off the curb.
        length = {"car": 4.9, "truck": 8.5, "bus": 12.5}[kind]
        width = {"car": 1.95, "truck": 2.5, "bus": 2.55}[kind]
        VEHICLES[kind](b, x + length / 2, side * (curb_y - 0.25 - width / 2), yaw, rng)
        # Generous gaps: a camera looks through a gap from a slightly different place than
        # the lidar, so many narrow gaps would hide much of the kerb side from one of them.
        x += length + rng.uniform(4.0, 16.0)


def _roadworks(b: PrimitiveBuilder, rng: np.random.Generator, x: float, y: float, kind: str) -> float:
    """A row of barriers or cones in the parking lane; returns the next free x."""
    if kind == "barriers":
        for i in range(int(rng.integers(2, 5))):
            add_barrier(b, x + 1.0 + 2.1 * i, y, rng.normal(0.0, 0.05))
            end = x + 2.1 * (i + 1)
    else:
        for i in range(int(rng.integers(4, 9))):
            add_cone(b, x + 0.5 + 1.1 * i, y + rng.normal(0.0, 0.1))
            end = x + 1.1 * (i + 1)
    return end + rng.uniform(1.0, 5.0)


def _build_traffic(b: PrimitiveBuilder, rng: np.random.Generator, s: StreetLayout, travel: float) -> None:
    """Stopped vehicles in the driving lanes: anywhere in the opposite lane, and in the ego
    lane only well behind the start or ahead of the end of the drive."""
    for lane_y, clear in ((DRIVING_LANE_Y, None), (-DRIVING_LANE_Y, (-16.0, travel + 22.0))):
        x = s.x_min + rng.uniform(0.0, 20.0)
        while x < s.x_max:
            u = rng.uniform()
            kind = "car" if u < 0.7 else ("truck" if u < 0.88 else "bus")
            length = {"car": 4.9, "truck": 8.5, "bus": 12.5}[kind]
            if clear is None or x + length < clear[0] or x > clear[1]:
                yaw = (np.pi if lane_y > 0 else 0.0) + rng.normal(0.0, 0.03)
                VEHICLES[kind](b, x + length / 2, lane_y + rng.normal(0.0, 0.15), yaw, rng)
            x += length + rng.uniform(8.0, 35.0)
