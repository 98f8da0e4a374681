"""Benchmark 1: projecting lidar points into the cameras, ours against the nuscenes-devkit way.

Ours is what the `assignments` stage runs per scan: `NuScenesReader.read` (points, labels and
the six lidar->camera transforms, composed once from the tables) and
`geometry.project_to_cameras` (all cameras in one vectorised pass).

The reference is written as ScaLR and the devkit's `map_pointcloud_to_image` do it: load a
`LidarPointCloud`, and for every camera deep-copy it, then rotate / translate it step by step
lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera from the calibrated_sensor and
ego_pose records, `view_points` with the intrinsics, and mask on depth and image bounds.

Both read the point file; ours also reads the labels. Agreement: for every scan, both must
give the same (camera, point) pairs, with pixels within `PIXEL_TOLERANCE` and depths within
`DEPTH_TOLERANCE`. The devkit's cloud is float32, and in float32 global coordinates its
pixels drift by up to 0.05 px on the demo world (more on nuScenes, whose global coordinates
reach kilometres), which would hide a real 0.01 px error; so the reference runs the same
chain on the cloud converted to float64 (the devkit's methods take any dtype). A pair whose
pixel or depth lies within the tolerance of a mask boundary may still fall on either side:
such pairs are counted as boundary ties, not as disagreements.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.common import (
    Check,
    Fact,
    Row,
    Section,
    Target,
    measure,
    numpy_peak_mib,
    profile_top,
)
from pipeline.datasets.nuscenes import CAMERA_CHANNELS, NuScenesReader
from pipeline.geometry import PointPixels, project_to_cameras

PIXEL_TOLERANCE = 1e-3  # pixels
DEPTH_TOLERANCE = 1e-4  # metres
MIN_DEPTH = 1.0  # ScaLR+ (REFERENCE.md: points closer than 1 m are dropped)
MIN_PIXEL = 0.0  # ScaLR+: 0 < u < W - 1, 0 < v < H - 1


def reference_pairs(reader: NuScenesReader, scan_id: str, min_depth: float = MIN_DEPTH,
                    min_pixel: float = MIN_PIXEL) -> PointPixels:
    """The devkit chain for one scan: a deep copy of the cloud per camera, transformed step by step."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points
    from pyquaternion import Quaternion

    nusc = reader.nusc
    lidar = nusc.get("sample_data", scan_id)
    sample = nusc.get("sample", lidar["sample_token"])
    cloud = LidarPointCloud.from_file(str(reader.root / lidar["filename"]))
    cloud.points = cloud.points.astype(np.float64)  # see the module docstring
    points, cameras, pixels, depths = [], [], [], []
    channels = [c for c in CAMERA_CHANNELS if c in sample["data"]]
    for camera_index, channel in enumerate(channels):
        camera = nusc.get("sample_data", sample["data"][channel])
        pc = copy.deepcopy(cloud)
        # lidar -> ego at the lidar timestamp
        record = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
        pc.rotate(Quaternion(record["rotation"]).rotation_matrix)
        pc.translate(np.array(record["translation"]))
        # ego -> global
        record = nusc.get("ego_pose", lidar["ego_pose_token"])
        pc.rotate(Quaternion(record["rotation"]).rotation_matrix)
        pc.translate(np.array(record["translation"]))
        # global -> ego at the camera timestamp
        record = nusc.get("ego_pose", camera["ego_pose_token"])
        pc.translate(-np.array(record["translation"]))
        pc.rotate(Quaternion(record["rotation"]).rotation_matrix.T)
        # ego -> camera
        record = nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])
        pc.translate(-np.array(record["translation"]))
        pc.rotate(Quaternion(record["rotation"]).rotation_matrix.T)
        depth = pc.points[2, :]
        uv = view_points(pc.points[:3, :], np.array(record["camera_intrinsic"]), normalize=True)
        mask = depth > min_depth
        mask &= (uv[0] > min_pixel) & (uv[0] < camera["width"] - 1)
        mask &= (uv[1] > min_pixel) & (uv[1] < camera["height"] - 1)
        kept = np.nonzero(mask)[0]
        points.append(kept)
        cameras.append(np.full(len(kept), camera_index))
        pixels.append(uv[:2, kept].T)
        depths.append(depth[kept])
    return PointPixels(np.concatenate(points).astype(np.int64), np.concatenate(cameras).astype(np.int64),
                       np.concatenate(pixels).astype(np.float64), np.concatenate(depths).astype(np.float64))


def our_pairs(reader: NuScenesReader, scan_id: str, min_depth: float = MIN_DEPTH) -> PointPixels:
    """What the assignments stage does per scan: read the record, project into every camera."""
    record = reader.read(scan_id)
    return project_to_cameras(record.points[:, :3], record.cameras, min_depth=min_depth)


@dataclass(frozen=True)
class PairAgreement:
    """How two projections of the same scans differ.

    pairs: pairs of the reference; missing / extra: pairs only the reference / only ours has,
    that are not boundary ties; ties: pairs on one side only, within tolerance of a mask bound;
    max_pixel_error / max_depth_error: over the pairs both have.
    """

    pairs: int = 0
    missing: int = 0
    extra: int = 0
    ties: int = 0
    max_pixel_error: float = 0.0
    max_depth_error: float = 0.0

    def merge(self, other: PairAgreement) -> PairAgreement:
        return PairAgreement(self.pairs + other.pairs, self.missing + other.missing, self.extra + other.extra,
                             self.ties + other.ties, max(self.max_pixel_error, other.max_pixel_error),
                             max(self.max_depth_error, other.max_depth_error))

    def check(self, scans: int) -> Check:
        passed = (self.missing == 0 and self.extra == 0 and self.max_pixel_error <= PIXEL_TOLERANCE
                  and self.max_depth_error <= DEPTH_TOLERANCE)
        return Check(
            "same (camera, point) pairs and pixels",
            passed,
            f"{scans} scans, {self.pairs} reference pairs: {self.missing} missing, {self.extra} extra, "
            f"{self.ties} boundary ties; max |pixel difference| {self.max_pixel_error:.2e} px "
            f"(tolerance {PIXEL_TOLERANCE:g}), max |depth difference| {self.max_depth_error:.2e} m",
        )


def _near_bounds(pairs: PointPixels, sizes: np.ndarray, min_depth: float, min_pixel: float) -> np.ndarray:
    """Mask of pairs whose pixel or depth lies within tolerance of a mask boundary."""
    width = sizes[pairs.camera_index, 0]
    height = sizes[pairs.camera_index, 1]
    u, v = pairs.pixel[:, 0], pairs.pixel[:, 1]
    return ((np.abs(u - min_pixel) <= PIXEL_TOLERANCE) | (np.abs(u - (width - 1)) <= PIXEL_TOLERANCE)
            | (np.abs(v - min_pixel) <= PIXEL_TOLERANCE) | (np.abs(v - (height - 1)) <= PIXEL_TOLERANCE)
            | (np.abs(pairs.depth - min_depth) <= DEPTH_TOLERANCE))


def compare_pairs(ours: PointPixels, reference: PointPixels, sizes: np.ndarray,
                  min_depth: float = MIN_DEPTH, min_pixel: float = MIN_PIXEL) -> PairAgreement:
    """Compare two projections of one scan; sizes is (cameras, 2) image width, height."""
    stride = int(max(ours.point_index.max(initial=0), reference.point_index.max(initial=0))) + 1
    key_ours = ours.camera_index * stride + ours.point_index
    key_ref = reference.camera_index * stride + reference.point_index
    common, at_ours, at_ref = np.intersect1d(key_ours, key_ref, assume_unique=True, return_indices=True)
    only_ours = np.setdiff1d(np.arange(len(key_ours)), at_ours)
    only_ref = np.setdiff1d(np.arange(len(key_ref)), at_ref)
    ties_ours = _near_bounds(ours.take(only_ours), sizes, min_depth, min_pixel)
    ties_ref = _near_bounds(reference.take(only_ref), sizes, min_depth, min_pixel)
    pixel_error = np.abs(ours.pixel[at_ours] - reference.pixel[at_ref]).max(initial=0.0)
    depth_error = np.abs(ours.depth[at_ours] - reference.depth[at_ref]).max(initial=0.0)
    return PairAgreement(len(key_ref), int((~ties_ref).sum()), int((~ties_ours).sum()),
                         int(ties_ref.sum() + ties_ours.sum()), float(pixel_error), float(depth_error))


def camera_sizes(reader: NuScenesReader, scan_id: str) -> np.ndarray:
    return np.array([[c.width, c.height] for c in reader.read(scan_id).cameras], dtype=np.float64)


def check_scans(readers: list[NuScenesReader], pairs_of) -> Check:
    """Compare `pairs_of(reader, scan_id)` (ours, or a wrong one in the tests) with the reference on every scan."""
    total = PairAgreement()
    scans = 0
    for reader in readers:
        for scan_id in tqdm(reader.scan_ids, desc="projection agreement", unit="scan", leave=False):
            sizes = camera_sizes(reader, scan_id)
            total = total.merge(compare_pairs(pairs_of(reader, scan_id), reference_pairs(reader, scan_id), sizes))
            scans += 1
    return total.check(scans)


def run(nuscenes_root: Path, version: str, runs: int) -> Section:
    """Time ours and the reference over every scan of the train and val splits."""
    section = Section("1. Projection: lidar points into six cameras")
    readers = [NuScenesReader(nuscenes_root, version, split) for split in ("train", "val")]
    scans = [(reader, scan_id) for reader in readers for scan_id in reader.scan_ids]
    point_counts = [len(reader.read(scan_id).points) for reader, scan_id in scans]
    check = check_scans(readers, our_pairs)

    def ours() -> None:
        for reader, scan_id in scans:
            our_pairs(reader, scan_id)

    def reference() -> None:
        for reader, scan_id in scans:
            reference_pairs(reader, scan_id)

    cpu = torch.device("cpu")
    baseline_timing, ours_timing = measure([reference, ours], runs, cpu, work=len(scans), unit="scan")
    records = [reader.read(scan_id) for reader, scan_id in scans]
    (projection_only,) = measure([lambda: [project_to_cameras(r.points[:, :3], r.cameras, min_depth=MIN_DEPTH)
                                           for r in records]], runs, cpu, work=len(scans), unit="scan")
    reader, scan_id = scans[0]
    section.rows.append(Row(
        case=f"{len(scans)} scans of {int(np.mean(point_counts))} points (mean), {len(records[0].cameras)} cameras",
        ours_name="reader.read + project_to_cameras",
        ours=ours_timing,
        baseline_name="devkit LidarPointCloud chain (deep copy per camera)",
        baseline=baseline_timing,
        target=Target(">= 10x faster per scan", min_ratio=10.0),
        checks=[check],
        facts=[
            Fact("ours, scans per second", ours_timing.rate, "scan/s"),
            Fact("reference, scans per second", baseline_timing.rate, "scan/s"),
            Fact("ours, project_to_cameras alone (points in memory), per scan", projection_only.median / len(scans), "s"),
            Fact("ours, numpy peak per scan (tracemalloc)", numpy_peak_mib(lambda: our_pairs(reader, scan_id)), "MiB"),
            Fact("reference, numpy peak per scan (tracemalloc)",
                 numpy_peak_mib(lambda: reference_pairs(reader, scan_id)), "MiB"),
        ],
    ))
    section.notes.append(f"Profile of ours over the {len(scans)} scans: {profile_top(ours)}.")
    section.notes.append(
        "Per-scan time covers reading the point file and projecting into every camera, for both "
        "(ours also reads the labels and composes the transforms from the tables). The time of "
        "`project_to_cameras` alone is listed to show how the per-scan time splits."
    )
    return section
