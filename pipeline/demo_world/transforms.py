"""Small rigid-transform helpers (4x4 homogeneous matrices, [w, x, y, z] quaternions).

Conventions: `a_from_b` maps homogeneous points expressed in frame b to frame a, so
`world_from_ego @ ego_from_sensor == world_from_sensor`.
"""

from __future__ import annotations

import numpy as np


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rigid(rotation: np.ndarray, translation) -> np.ndarray:
    """4x4 transform from a 3x3 rotation and a translation."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (rotation transposed, not a general inverse)."""
    r = transform[:3, :3]
    return rigid(r.T, -r.T @ transform[:3, 3])


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def quaternion_from_matrix(r: np.ndarray) -> list[float]:
    """[w, x, y, z] unit quaternion of a rotation matrix, with w >= 0 (one canonical sign)."""
    m = np.asarray(r, dtype=np.float64)
    trace = np.trace(m)
    # Pick the numerically largest of w, x, y, z to divide by (Shepperd's method).
    if trace > 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    return [float(v) for v in q]


def matrix_from_quaternion(q) -> np.ndarray:
    """Rotation matrix of a [w, x, y, z] quaternion (normalised first, as pyquaternion does)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def as_written(rotation: np.ndarray, translation) -> tuple[list[float], list[float], np.ndarray]:
    """Round-trip a pose through the form written to JSON (quaternion + translation).

    Returns (quaternion, translation list, 4x4 transform rebuilt from them). Rendering with
    the rebuilt transform makes the images agree with what a reader reconstructs from the
    tables, to the last bit the JSON carries.
    """
    q = quaternion_from_matrix(rotation)
    t = [float(v) for v in np.asarray(translation, dtype=np.float64)]
    return q, t, rigid(matrix_from_quaternion(q), t)
