"""Isolated renders of one demo class: the "visual words" of the procedural generator.

An exemplar uses the world's own appearance model (colour, texture, shading) and shapes
(the `scene.add_*` builders), rendered alone from a random viewpoint as a close-up that
fills most of the frame: a template vector averages the teacher's features over every
pixel, background included, so an exemplar that is mostly background would describe the
background. Surfaces (road, sidewalk, terrain) are a large slab seen from above at an
angle. The rest of the frame is a neutral grey at the teacher's normalisation centre,
which a random-weight teacher maps to a near-zero feature. Everything is a pure function
of (class, seed, size).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .classes import CLASS_INDEX, DEMO_CLASS_NAMES
from .primitives import PrimitiveBuilder, World
from .raycast import box_corners
from .render import render_camera
from .scene import (
    VEHICLES,
    add_barrier,
    add_bicycle,
    add_cone,
    add_pedestrian,
    add_pole,
)
from .seeding import rng_for
from .transforms import rigid

# The ImageNet mean colour (the teacher's normalisation centre), as the world's hazy sky.
BACKGROUND = (124, 116, 104)
FIELD_OF_VIEW_DEG = 50.0
SURFACES = ("road", "sidewalk", "terrain")
# Fraction of the frame the object must cover; the camera moves closer until it does.
MIN_COVERAGE = 0.8
_PROBE_SIZE = 24


def render_exemplar(class_name: str, seed: int, size: int) -> Image.Image:
    """A size x size RGB image of one instance of a demo class; same arguments, same pixels."""
    if class_name not in CLASS_INDEX:
        raise ValueError(
            f"the procedural generator only knows the demo world's classes ({', '.join(DEMO_CLASS_NAMES)}); "
            f"got {class_name!r}. Use the diffusers backend for other prompts."
        )
    if size < 8:
        raise ValueError(f"exemplar size must be at least 8 pixels, got {size}")
    rng = rng_for("exemplar", class_name, seed)
    tan_half = np.tan(np.deg2rad(FIELD_OF_VIEW_DEG) / 2.0)

    b = PrimitiveBuilder()
    if class_name in SURFACES:
        # A large slab of the surface, at a random place (the texture lives in world coordinates).
        center = np.array([rng.uniform(-40.0, 40.0), rng.uniform(-40.0, 40.0), 0.0])
        b.box(class_name, center - [0.0, 0.0, 0.05], (120.0, 120.0, 0.1), rng.uniform(0.0, np.pi))
        elevation = np.deg2rad(rng.uniform(40.0, 85.0))
        target, gap = center, rng.uniform(2.0, 9.0)
    else:
        _build_object(b, class_name, rng)
        prims = b.build()
        corners = box_corners(prims.bounds).reshape(-1, 3)
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        # Look at a random point inside the object's largest part (a pole's shaft rather than
        # its arm), from any side, near eye height.
        part = prims.bounds[int(np.argmax(np.prod(prims.bounds[:, 3:6], axis=1)))]
        target = part[:3] + part[3:6] * rng.uniform([-0.3, -0.3, -0.6], [0.3, 0.3, 0.6])
        elevation = np.deg2rad(rng.uniform(-5.0, 30.0))
        narrow = min(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])
        # Start where the object's narrowest side about fills the frame; closer if needed.
        gap = 0.5 * narrow / tan_half * rng.uniform(0.5, 1.0)
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    direction = -np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    world = World(b.build(), ground=None)

    # The surface point on the line of sight through the target, seen from far away.
    far_eye = target - 200.0 * direction
    centre_hit = _render(world, 1, far_eye, target, 400.0).depth[0, 0]
    surface_point = far_eye + centre_hit * direction if centre_hit > 0.0 else target
    for _ in range(12):
        eye = surface_point - gap * direction
        probe = _render(world, _PROBE_SIZE, eye, surface_point, 10.0 * gap + 100.0)
        if (probe.classes >= 0).mean() >= MIN_COVERAGE or gap < 0.2:
            break
        gap *= 0.75
    image = _render(world, size, eye, surface_point, 10.0 * gap + 100.0)
    return Image.fromarray(image.rgb, mode="RGB")


def _render(world: World, size: int, eye: np.ndarray, target: np.ndarray, far: float):
    focal = 0.5 * size / np.tan(np.deg2rad(FIELD_OF_VIEW_DEG) / 2.0)
    k = np.array([[focal, 0.0, size / 2.0], [0.0, focal, size / 2.0], [0.0, 0.0, 1.0]])
    return render_camera(world, k, size, size, _look_at(eye, target), far=far, background=BACKGROUND)


def _build_object(b: PrimitiveBuilder, name: str, rng: np.random.Generator) -> None:
    if name in VEHICLES:
        VEHICLES[name](b, 0.0, 0.0, 0.0, rng)
    elif name == "building":
        height = rng.uniform(6.0, 20.0)
        b.box("building", (0.0, 0.0, height / 2), (rng.uniform(8.0, 20.0), rng.uniform(8.0, 14.0), height))
    elif name == "pole":
        add_pole(b, 0.0, 0.0, 1.0, rng)
    elif name == "trunk":
        b.cylinder("trunk", 0.0, 0.0, 0.0, rng.uniform(2.0, 3.5), rng.uniform(0.28, 0.4))
    elif name == "vegetation":
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(1.2, 2.4)
            b.ellipsoid("vegetation", rng.normal(0.0, 0.8, 3) + [0.0, 0.0, 3.0], (r, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.7, 1.1)))
    elif name == "pedestrian":
        add_pedestrian(b, 0.0, 0.0, rng)
    elif name == "bicycle":
        add_bicycle(b, 0.0, 0.0, 0.0, rng)
    elif name == "barrier":
        add_barrier(b, 0.0, 0.0, 0.0)
    elif name == "traffic_cone":
        add_cone(b, 0.0, 0.0)
    else:  # a class added to the table without an exemplar shape
        raise ValueError(f"no exemplar shape for demo class {name!r}")


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """world_from_camera for a camera at `eye` looking at `target` (x right, y down, z forward)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return rigid(np.stack([right, down, forward], axis=1), eye)
