"""How a surface looks in a camera: class colour, procedural texture, simple shading.

A texture is a function of the hit point's world coordinates (and surface normal) that
returns a weight w in [0, 1]; the pixel colour is (1 - w) * color + w * color2 of its
class, then shaded by a fixed sun. Because the pattern lives in world coordinates, it
stays attached to the surface when the ego vehicle moves, as a real texture would.

The noise is a hash-based value noise on an integer lattice (no random state), so the
same point always gets the same colour.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .classes import CLASS_INDEX, DEMO_CLASSES

SUN = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])
# Mild shading: a face turned from the sun is at most 12% darker. Darkening moves a colour's
# direction in normalised RGB, and that direction is all a random-weight teacher keeps.
AMBIENT = 0.88
# A hazy, overcast sky close to the ImageNet mean colour (the teacher's normalisation
# centre): its patch features are nearly zero, so a patch that mixes an object with the
# sky keeps the object's feature direction.
SKY_ZENITH = np.array([120.0, 114.0, 106.0])
SKY_HORIZON = np.array([128.0, 119.0, 104.0])
# Worn, low-contrast markings: they are still road.
LANE_MARKING = np.array([66.0, 66.0, 70.0])


def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    h = (
        ix.astype(np.int64).astype(np.uint32) * np.uint32(73856093)
        ^ iy.astype(np.int64).astype(np.uint32) * np.uint32(19349663)
        ^ iz.astype(np.int64).astype(np.uint32) * np.uint32(83492791)
    )
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return (h & np.uint32(0xFFFFFF)).astype(np.float64) / float(0x1000000)


def value_noise(p: np.ndarray, scale) -> np.ndarray:
    """Smooth noise in [0, 1] with features of about `scale` metres (per axis if a 3-vector)."""
    q = p / np.asarray(scale, dtype=np.float64)
    i = np.floor(q)
    f = q - i
    f = f * f * (3.0 - 2.0 * f)  # smoothstep: no visible lattice creases
    i = i.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1.0 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1.0 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1.0 - f[:, 2]
                out += wx * wy * wz * _hash(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz)
    return out


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _along_face(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """A horizontal coordinate running along a vertical face (x on y-facing faces, y on x-facing)."""
    return p[:, 0] * np.abs(n[:, 1]) + p[:, 1] * np.abs(n[:, 0])


def _vertical(n: np.ndarray) -> np.ndarray:
    return np.abs(n[:, 2]) < 0.5


def _asphalt(p, n, s):
    return 0.55 * value_noise(p, s) + 0.45 * value_noise(p, s / 4.0)


def _tiles(p, n, s):
    lines = (_frac(p[:, 0] / s) < 0.08) | (_frac(p[:, 1] / s) < 0.08) | _vertical(n)
    return np.where(lines, 1.0, 0.25 * value_noise(p, s / 2.0))


def _grass(p, n, s):
    return 0.6 * value_noise(p, s) + 0.4 * value_noise(p, s / 5.0)


def _windows(p, n, s):
    u, z = _frac(_along_face(p, n) / s), _frac(p[:, 2] / s)
    window = _vertical(n) & (u > 0.25) & (u < 0.75) & (z > 0.35) & (z < 0.8)
    return np.where(window, 1.0, 0.18 * value_noise(p, 0.5))


def _rings(p, n, s):
    return (_frac(p[:, 2] / s) < 0.35).astype(np.float64)


def _bark(p, n, s):
    return value_noise(p, np.array([s, s, 6.0 * s]))


def _leaves(p, n, s):
    return np.clip(1.6 * value_noise(p, s) - 0.3 + 0.3 * value_noise(p, s / 4.0), 0.0, 1.0)


def _panels(p, n, s):
    # Cars: body colour below ~1.05 m, dark windows on the cabin sides above it.
    windows = _vertical(n) & (p[:, 2] > 1.05)
    return np.where(windows, 1.0, 0.25 * value_noise(p, s))


def _ribs(p, n, s):
    return np.where(_vertical(n) & (_frac(_along_face(p, n) / s) < 0.3), 1.0, 0.1 * value_noise(p, 0.5))


def _window_band(p, n, s):
    band = _vertical(n) & (p[:, 2] > 1.7) & (p[:, 2] < 2.6)
    return np.where(band, 1.0, 0.12 * value_noise(p, s))


def _checker(p, n, s):
    k = np.floor(p / s).astype(np.int64).sum(axis=1)
    return (k % 2).astype(np.float64)


def _diagonal(p, n, s):
    return (_frac((_along_face(p, n) + p[:, 2]) / s) < 0.5).astype(np.float64)


TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "asphalt": _asphalt,
    "tiles": _tiles,
    "grass": _grass,
    "windows": _windows,
    "rings": _rings,
    "bark": _bark,
    "leaves": _leaves,
    "panels": _panels,
    "ribs": _ribs,
    "window_band": _window_band,
    "checker": _checker,
    "diagonal": _diagonal,
}
assert all(c.texture in TEXTURES for c in DEMO_CLASSES)


def surface_colors(classes: np.ndarray, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N, 3) float RGB (0..255) of surface points of the given demo classes, shaded."""
    rgb = np.zeros((len(classes), 3))
    for index in np.unique(classes):
        cls = DEMO_CLASSES[index]
        sel = classes == index
        p, n = points[sel], normals[sel]
        w = np.clip(TEXTURES[cls.texture](p, n, cls.texture_scale), 0.0, 1.0)[:, None]
        color = (1.0 - w) * np.array(cls.color, dtype=np.float64) + w * np.array(cls.color2, dtype=np.float64)
        if index == CLASS_INDEX["road"]:
            # A dashed centre line: realistic, still road.
            marking = (np.abs(p[:, 1]) < 0.1) & (_frac(p[:, 0] / 9.0) < 0.45) & (n[:, 2] > 0.5)
            color[marking] = LANE_MARKING
        rgb[sel] = color
    shade = AMBIENT + (1.0 - AMBIENT) * np.clip(normals @ SUN, 0.0, 1.0)
    return rgb * shade[:, None]


def sky_colors(directions: np.ndarray) -> np.ndarray:
    """(N, 3) float RGB of the sky seen along world ray directions."""
    a = np.clip(directions[:, 2] * 2.5, 0.0, 1.0)[:, None]
    return (1.0 - a) * SKY_HORIZON + a * SKY_ZENITH
