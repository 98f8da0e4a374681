"""Sensor models and calibrations of the two rigs (nuScenes-like and KITTI-like).

Frames:
* ego (nuScenes convention, also used for the KITTI car): x forward, y left, z up, origin
  on the ground under the rear axle.
* lidar: its own frame; nuScenes' LIDAR_TOP is yawed -90 deg, so its x axis points to the
  right of the car and its y axis forward.
* camera: x right, y down, z forward (both datasets).

Calibrations are built from readable numbers (mount positions and angles close to the
real rigs), then passed through the exact form they are written in (quaternions in JSON,
12-digit numbers in calib.txt) so that the renderer uses what a reader will read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .transforms import as_written, invert, rigid, rot_x, rot_y, rot_z

# Camera axes in the ego frame for a camera looking straight forward:
# camera x (right) = -ego y, camera y (down) = -ego z, camera z (forward) = ego x.
EGO_FROM_FORWARD_CAMERA = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class LidarModel:
    """A spinning multi-beam lidar.

    elevations_deg: beam elevations, ascending (ring index = position in this tuple).
    azimuth_steps: firings per revolution.
    max_range / min_range: returns outside are dropped (metres).
    range_noise: std of the range error (m); intensity_noise: std on the 0..255 scale.
    noise_fraction: share of rays that return a spurious point (dust, multi-path),
    labelled noise / outlier.
    """

    name: str
    elevations_deg: tuple[float, ...]
    azimuth_steps: int
    max_range: float
    min_range: float = 1.0
    range_noise: float = 0.01
    intensity_noise: float = 4.0
    noise_fraction: float = 0.002

    @property
    def elevations(self) -> np.ndarray:
        return np.deg2rad(np.array(self.elevations_deg, dtype=np.float64))


def nuscenes_lidar(azimuth_steps: int) -> LidarModel:
    """32 beams from -30.67 to +10.67 deg (the nuScenes Velodyne HDL-32E), 70 m."""
    elevations = tuple(float(v) for v in np.round(np.linspace(-30.67, 10.67, 32), 4))
    return LidarModel("LIDAR_TOP", elevations, azimuth_steps, max_range=70.0)


def kitti_lidar(azimuth_steps: int) -> LidarModel:
    """64 beams from -24.9 to +2.0 deg (the KITTI Velodyne HDL-64E), 80 m."""
    elevations = tuple(float(v) for v in np.round(np.linspace(-24.9, 2.0, 64), 4))
    return LidarModel("velodyne", elevations, azimuth_steps, max_range=80.0)


@dataclass(frozen=True)
class Calibration:
    """One calibrated sensor of the nuScenes rig, exactly as written to calibrated_sensor.json.

    translation / rotation ([w, x, y, z]): sensor -> ego. camera_intrinsic: 3x3 (cameras)
    or [] (lidar). ego_from_sensor: the 4x4 rebuilt from the written numbers.
    time_offset_us: nominal camera timestamp minus lidar timestamp (0 for the lidar).
    """

    channel: str
    modality: str
    translation: list[float]
    rotation: list[float]
    camera_intrinsic: list[list[float]]
    ego_from_sensor: np.ndarray
    width: int
    height: int
    time_offset_us: int


# channel, yaw (deg, CCW from forward), mount position in ego (m), full-resolution
# (1600 x 900) focal length and principal point (px), nominal time offset to the lidar (ms).
NUSCENES_CAMERAS: tuple[tuple[str, float, tuple[float, float, float], float, float, float, float], ...] = (
    ("CAM_FRONT", 0.0, (1.70, 0.016, 1.511), 1266.4, 816.3, 491.5, 42.0),
    ("CAM_FRONT_RIGHT", -55.0, (1.551, -0.493, 1.496), 1260.8, 807.97, 495.33, 58.0),
    ("CAM_BACK_RIGHT", -110.0, (1.015, -0.481, 1.562), 1259.5, 807.25, 501.19, 75.0),
    ("CAM_BACK", 180.0, (0.028, 0.003, 1.579), 809.2, 829.2, 481.77, 92.0),
    ("CAM_BACK_LEFT", 110.0, (1.036, 0.485, 1.591), 1256.7, 792.11, 492.78, -66.0),
    ("CAM_FRONT_LEFT", 55.0, (1.524, 0.495, 1.509), 1272.6, 826.62, 479.75, -48.0),
)
NUSCENES_CAMERA_NAMES: tuple[str, ...] = tuple(c[0] for c in NUSCENES_CAMERAS)
NUSCENES_FULL_SIZE = (1600, 900)


def nuscenes_rig(rng: np.random.Generator, width: int, height: int) -> dict[str, Calibration]:
    """LIDAR_TOP and the six cameras of one car, with small per-log mounting differences.

    Intrinsics are the full-resolution ones scaled to width x height (continuous pixel
    coordinates scale linearly, see raycast.PinholeGrid for the pixel convention).
    """
    rig: dict[str, Calibration] = {}
    # LIDAR_TOP: on the roof, yawed -90 deg, with the slight tilt real mounts have.
    r = rot_z(np.deg2rad(-90.0 + rng.normal(0.0, 0.3))) @ rot_y(np.deg2rad(rng.normal(0.0, 0.5))) @ rot_x(
        np.deg2rad(rng.normal(0.0, 0.5))
    )
    q, t, m = as_written(r, [0.943713 + rng.normal(0.0, 0.01), rng.normal(0.0, 0.005), 1.84023 + rng.normal(0.0, 0.01)])
    rig["LIDAR_TOP"] = Calibration("LIDAR_TOP", "lidar", t, q, [], m, 0, 0, 0)

    sx, sy = width / NUSCENES_FULL_SIZE[0], height / NUSCENES_FULL_SIZE[1]
    for name, yaw, pos, f, cx, cy, offset_ms in NUSCENES_CAMERAS:
        # Yaw, then a small pitch (cameras look slightly down) and roll, in the ego frame.
        r = (
            rot_z(np.deg2rad(yaw + rng.normal(0.0, 0.4)))
            @ rot_y(np.deg2rad(0.6 + rng.normal(0.0, 0.3)))
            @ rot_x(np.deg2rad(rng.normal(0.0, 0.3)))
            @ EGO_FROM_FORWARD_CAMERA
        )
        q, t, m = as_written(r, np.array(pos) + rng.normal(0.0, 0.005, 3))
        k = [[float(f * sx), 0.0, float(cx * sx)], [0.0, float(f * sy), float(cy * sy)], [0.0, 0.0, 1.0]]
        rig[name] = Calibration(name, "camera", t, q, k, m, width, height, int(round(offset_ms * 1000)))
    return rig


# --- KITTI-like rig ---------------------------------------------------------------

KITTI_FULL_SIZE = (1241, 376)
# Full-resolution rectified intrinsics (fx = fy, cx, cy) and the camera offsets t_i in the
# rectified camera-0 frame (P_i = K [I | t_i]): cameras 1 and 3 are the right ones (0.54 m
# baseline), camera 2 (the colour image_2) sits 6 cm left of camera 0.
KITTI_K = (718.856, 607.1928, 185.2157)
KITTI_CAMERA_OFFSETS = (
    (0.0, 0.0, 0.0),
    (-0.5371657, 0.0, 0.0),
    (0.06313248, -0.00015731, 0.00525832),
    (-0.47427017, 0.00234987, 0.00402713),
)


def _kitti_number(x: float) -> float:
    """A value as written in calib.txt / poses.txt (12 significant decimals)."""
    return float(f"{x:.12e}")


@dataclass(frozen=True)
class KittiCalibration:
    """KITTI odometry calibration, with the numbers exactly as written to calib.txt.

    projections: P0..P3, (3, 4) each, for rectified camera-0 coordinates.
    tr: (3, 4) velodyne -> rectified camera 0.
    ego_from_velo: where the lidar sits on the car.
    """

    projections: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    tr: np.ndarray
    ego_from_velo: np.ndarray
    width: int
    height: int

    @property
    def tr4(self) -> np.ndarray:
        return np.vstack([self.tr, [0.0, 0.0, 0.0, 1.0]])

    @property
    def ego_from_cam0(self) -> np.ndarray:
        return self.ego_from_velo @ np.linalg.inv(self.tr4)

    @property
    def k2(self) -> np.ndarray:
        return self.projections[2][:, :3]

    @property
    def cam0_from_cam2(self) -> np.ndarray:
        """Camera 2 sees cam0 points shifted by t2 = K^-1 P2[:, 3]; this is the inverse shift."""
        t2 = np.linalg.solve(self.k2, self.projections[2][:, 3])
        return rigid(np.eye(3), -t2)

    def calib_text(self) -> str:
        rows = [(f"P{i}", p) for i, p in enumerate(self.projections)] + [("Tr", self.tr)]
        return "".join(f"{name}: " + " ".join(f"{v:.12e}" for v in m.reshape(-1)) + "\n" for name, m in rows)


def kitti_rig(rng: np.random.Generator, width: int, height: int) -> KittiCalibration:
    """Calibration of one KITTI-like sequence (velodyne on the roof, camera 0 in front of it)."""
    sx, sy = width / KITTI_FULL_SIZE[0], height / KITTI_FULL_SIZE[1]
    f, cx, cy = KITTI_K
    k = np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])
    projections = tuple(
        np.vectorize(_kitti_number)(np.hstack([k, (k @ np.array(t))[:, None]])) for t in KITTI_CAMERA_OFFSETS
    )
    ego_from_velo = rigid(rot_z(np.deg2rad(rng.normal(0.0, 0.2))), [0.0, 0.0, 1.73])
    ego_from_cam0 = rigid(
        rot_z(np.deg2rad(rng.normal(0.0, 0.3)))
        @ rot_y(np.deg2rad(0.4 + rng.normal(0.0, 0.2)))
        @ rot_x(np.deg2rad(rng.normal(0.0, 0.2)))
        @ EGO_FROM_FORWARD_CAMERA,
        [0.27 + rng.normal(0.0, 0.01), rng.normal(0.0, 0.01), 1.65],
    )
    tr = np.vectorize(_kitti_number)((invert(ego_from_cam0) @ ego_from_velo)[:3])
    return KittiCalibration(projections, tr, ego_from_velo, width, height)  # type: ignore[arg-type]
