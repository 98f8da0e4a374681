"""Write demo streets as SemanticKITTI sequences (KITTI odometry layout + .label files).

Per sequence NN (one street each): velodyne/FFFFFF.bin (float32 x, y, z, remission),
labels/FFFFFF.label (uint32: instance << 16 | semantic raw id), image_2/FFFFFF.png (the
left colour camera, fired together with the lidar as in KITTI), calib.txt (P0..P3, Tr),
poses.txt (camera-0 pose of each frame in the first frame's camera-0 frame, 3x4 row-major),
times.txt (seconds). Truth: truth/NN/FFFFFF_class.png (uint16 raw ids, 0 = nothing) and
truth/NN/FFFFFF_depth.png (uint16 camera-2 z depth in cm, 0 = nothing).

A point p (velodyne frame) lies in image_2 pixel floor(x / z), floor(y / z) of
(x, y, z) = P2 @ Tr @ [p, 1].
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .classes import (
    KITTI_ID_OF_CLASS,
    KITTI_OUTLIER_ID,
    KITTI_RAW_NAMES,
    KITTI_TRUTH_NOTHING,
)
from .config import DemoWorldConfig
from .images import depth_centimetres, write_png
from .render import render_camera, scan_lidar
from .scene import build_street
from .seeding import rng_for
from .sensors import kitti_lidar, kitti_rig

log = logging.getLogger(__name__)

FRAME_PERIOD_S = 0.1  # the KITTI Velodyne spins at 10 Hz
CAMERA_FAR = 200.0


def write_semantic_kitti(root: Path, config: DemoWorldConfig, progress=None) -> dict:
    """Generate and write the SemanticKITTI part; returns its statistics for summary.json."""
    root = Path(root)
    seed = config.seed
    lidar = kitti_lidar(config.kitti_azimuth_steps)
    class_points: dict[int, int] = {}
    points_per_scan: list[int] = []
    names = [f"{q:02d}" for q in range(config.kitti_sequences)]

    for q, seq in enumerate(names):
        base = root / "sequences" / seq
        for sub in ("velodyne", "labels", "image_2"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (root / "truth" / seq).mkdir(parents=True, exist_ok=True)
        n_frames = config.kitti_frames_per_sequence
        street = build_street(rng_for(seed, "kitti", "street", q), (n_frames - 1) * FRAME_PERIOD_S + 0.2)
        calib = kitti_rig(rng_for(seed, "kitti", "rig", q), config.kitti_width, config.kitti_height)
        (base / "calib.txt").write_text(calib.calib_text())
        # Times as written are the times used to place the car.
        times = [float(f"{i * FRAME_PERIOD_S:.6e}") for i in range(n_frames)]
        (base / "times.txt").write_text("".join(f"{t:.6e}\n" for t in times))

        poses: list[np.ndarray] = []
        cam0_first_from_street = None
        for i, t in enumerate(times):
            street_from_ego = street.trajectory.street_from_ego(t)
            street_from_cam0 = street_from_ego @ calib.ego_from_cam0
            if cam0_first_from_street is None:
                cam0_first_from_street = np.linalg.inv(street_from_cam0)
            # Frame 0 is the origin by definition (written as an exact identity).
            poses.append(np.eye(4)[:3] if i == 0 else (cam0_first_from_street @ street_from_cam0)[:3])

            scan = scan_lidar(street.world, lidar, street_from_ego @ calib.ego_from_velo, rng_for(seed, "kitti", "scan", q, i))
            semantic = np.where(scan.classes < 0, KITTI_OUTLIER_ID, KITTI_ID_OF_CLASS[np.maximum(scan.classes, 0)])
            labels = (scan.instances.astype(np.uint32) << np.uint32(16)) | semantic.astype(np.uint32)
            remission = scan.intensity / 255.0
            np.column_stack([scan.points, remission]).astype(np.float32).tofile(base / "velodyne" / f"{i:06d}.bin")
            labels.astype(np.uint32).tofile(base / "labels" / f"{i:06d}.label")
            for raw, n in zip(*np.unique(semantic, return_counts=True)):
                class_points[int(raw)] = class_points.get(int(raw), 0) + int(n)
            points_per_scan.append(len(labels))

            image = render_camera(street.world, calib.k2, calib.width, calib.height,
                                  street_from_cam0 @ calib.cam0_from_cam2, far=CAMERA_FAR)
            write_png(base / "image_2" / f"{i:06d}.png", image.rgb)
            truth = np.where(image.classes < 0, KITTI_TRUTH_NOTHING, KITTI_ID_OF_CLASS[np.maximum(image.classes, 0)])
            write_png(root / "truth" / seq / f"{i:06d}_class.png", truth.astype(np.uint16))
            write_png(root / "truth" / seq / f"{i:06d}_depth.png", depth_centimetres(image.depth))
            if progress is not None:
                progress.update(1)
        (base / "poses.txt").write_text("".join(" ".join(f"{v:.12e}" for v in p.reshape(-1)) + "\n" for p in poses))
        log.debug("SemanticKITTI sequence %s written (%d frames)", seq, n_frames)

    splits = {"train": names[: config.kitti_train_sequences], "val": names[config.kitti_train_sequences:]}
    (root / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    counts = np.array(points_per_scan, dtype=np.float64)
    return {
        "sequences": len(names),
        "frames": len(points_per_scan),
        "image_size": [config.kitti_width, config.kitti_height],
        "splits": splits,
        "points_per_scan": {"min": int(counts.min()), "mean": round(float(counts.mean()), 1),
                            "max": int(counts.max()), "total": int(counts.sum())},
        "class_points": {KITTI_RAW_NAMES[raw]: n for raw, n in sorted(class_points.items())},
    }
