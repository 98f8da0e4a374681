"""Write demo streets as a nuScenes dataroot (keyframes only) with nuScenes-lidarseg labels.

Each scene is its own street, placed somewhere in the global frame with its own heading,
driven by a car with its own (slightly different) calibration, as separate nuScenes logs
are. Every keyframe has one LIDAR_TOP sweep and six camera images; each camera fires tens
of milliseconds before or after the lidar, so each sample_data has its own ego_pose (whose
token equals the sample_data token, as in nuScenes).

Layout written under `root` (see the package docstring for the contract):
v1.0-demo/*.json, samples/<channel>/<file>, lidarseg/v1.0-demo/<lidar sd token>_lidarseg.bin,
maps/<map token>.png, splits.json, truth/<camera>/<camera sd token>_{class,depth}.png.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .classes import (
    NUSCENES_INDEX_OF_CLASS,
    NUSCENES_LIDARSEG_CATEGORIES,
    NUSCENES_NOISE_INDEX,
    NUSCENES_TRUTH_NOTHING,
)
from .config import DemoWorldConfig
from .images import depth_centimetres, write_jpeg, write_png
from .render import render_camera, scan_lidar
from .scene import build_street
from .seeding import rng_for, token
from .sensors import NUSCENES_CAMERA_NAMES, nuscenes_lidar, nuscenes_rig
from .transforms import as_written, invert, rigid, rot_z

log = logging.getLogger(__name__)

VERSION = "v1.0-demo"
TABLES = (
    "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
    "log", "scene", "sample", "sample_data", "sample_annotation", "map", "lidarseg",
)
CAMERA_FAR = 200.0  # metres; farther surfaces render as sky
CAMERA_JITTER_US = 5000  # per-frame trigger jitter around each camera's nominal offset
EPOCH_US = 1_700_000_000_000_000


def _lidarseg_description(name: str) -> str:
    return f"nuScenes-lidarseg category {name} (demo world)."


def write_nuscenes(root: Path, config: DemoWorldConfig, progress=None) -> dict:
    """Generate and write the nuScenes part; returns its statistics for summary.json."""
    root = Path(root)
    for sub in ["samples/LIDAR_TOP", f"lidarseg/{VERSION}", VERSION, "maps", *[f"samples/{c}" for c in NUSCENES_CAMERA_NAMES],
                *[f"truth/{c}" for c in NUSCENES_CAMERA_NAMES]]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    seed = config.seed
    tables: dict[str, list[dict]] = {name: [] for name in TABLES}
    tables["category"] = [
        {"token": token("category", name), "name": name, "description": _lidarseg_description(name), "index": i}
        for i, name in enumerate(NUSCENES_LIDARSEG_CATEGORIES)
    ]
    channels = ("LIDAR_TOP", *NUSCENES_CAMERA_NAMES)
    tables["sensor"] = [
        {"token": token("sensor", c), "channel": c, "modality": "lidar" if c == "LIDAR_TOP" else "camera"} for c in channels
    ]
    lidar = nuscenes_lidar(config.lidar_azimuth_steps)
    class_points = np.zeros(len(NUSCENES_LIDARSEG_CATEGORIES), dtype=np.int64)
    points_per_scan: list[int] = []
    scene_names: list[str] = []

    for s in range(config.nuscenes_scenes):
        scene_name = f"scene-{s + 1:04d}"
        scene_names.append(scene_name)
        drive = (config.keyframes_per_scene - 1) / config.keyframe_hz + 0.2
        street = build_street(rng_for(seed, "nuscenes", "street", s), drive)
        place = rng_for(seed, "nuscenes", "place", s)
        # Scenes lie far apart in one global frame, each street with its own heading.
        global_from_street = rigid(
            rot_z(place.uniform(0.0, 2.0 * np.pi)),
            [500.0 + 1000.0 * s + place.uniform(-100.0, 100.0), 800.0 + place.uniform(-300.0, 300.0), 0.0],
        )
        street_from_global = invert(global_from_street)
        rig = nuscenes_rig(rng_for(seed, "nuscenes", "rig", s), config.camera_width, config.camera_height)
        log_token, scene_token = token(seed, "log", s), token(seed, "scene", s)
        logfile = f"demo{seed}-{s + 1:04d}"
        tables["log"].append({"token": log_token, "logfile": logfile, "vehicle": "demo-car",
                              "date_captured": "2024-01-01", "location": "demo-town"})
        for channel, cal in rig.items():
            tables["calibrated_sensor"].append({
                "token": token(seed, "calibrated_sensor", s, channel),
                "sensor_token": token("sensor", channel),
                "translation": cal.translation,
                "rotation": cal.rotation,
                "camera_intrinsic": cal.camera_intrinsic,
            })

        start_us = EPOCH_US + seed * 86_400_000_000 + s * 3_600_000_000
        timing = rng_for(seed, "nuscenes", "timing", s)
        sample_tokens = [token(seed, "sample", s, k) for k in range(config.keyframes_per_scene)]
        for k, sample_token in enumerate(sample_tokens):
            lidar_us = start_us + int(round(k * 1e6 / config.keyframe_hz)) + int(timing.integers(-2000, 2001))
            tables["sample"].append({
                "token": sample_token,
                "timestamp": lidar_us,
                "prev": sample_tokens[k - 1] if k > 0 else "",
                "next": sample_tokens[k + 1] if k + 1 < len(sample_tokens) else "",
                "scene_token": scene_token,
            })
            for channel, cal in rig.items():
                jitter = 0 if channel == "LIDAR_TOP" else int(timing.integers(-CAMERA_JITTER_US, CAMERA_JITTER_US + 1))
                timestamp = lidar_us + cal.time_offset_us + jitter
                sd_token = token(seed, "sample_data", s, k, channel)
                # The pose as written (quaternion + translation) is the pose used to render.
                ego = street.trajectory.street_from_ego((timestamp - start_us) / 1e6)
                q, t, global_from_ego = as_written((global_from_street @ ego)[:3, :3], (global_from_street @ ego)[:3, 3])
                tables["ego_pose"].append({"token": sd_token, "timestamp": timestamp, "rotation": q, "translation": t})
                street_from_sensor = street_from_global @ global_from_ego @ cal.ego_from_sensor
                ext = "pcd.bin" if channel == "LIDAR_TOP" else "jpg"
                filename = f"samples/{channel}/{logfile}__{channel}__{timestamp}.{ext}"
                tables["sample_data"].append({
                    "token": sd_token,
                    "sample_token": sample_token,
                    "ego_pose_token": sd_token,
                    "calibrated_sensor_token": token(seed, "calibrated_sensor", s, channel),
                    "timestamp": timestamp,
                    "fileformat": "pcd" if channel == "LIDAR_TOP" else "jpg",
                    "is_key_frame": True,
                    "height": cal.height,
                    "width": cal.width,
                    "filename": filename,
                    "prev": token(seed, "sample_data", s, k - 1, channel) if k > 0 else "",
                    "next": token(seed, "sample_data", s, k + 1, channel) if k + 1 < len(sample_tokens) else "",
                })
                if channel == "LIDAR_TOP":
                    scan = scan_lidar(street.world, lidar, street_from_sensor, rng_for(seed, "nuscenes", "scan", s, k))
                    labels = np.where(scan.classes < 0, NUSCENES_NOISE_INDEX, NUSCENES_INDEX_OF_CLASS[np.maximum(scan.classes, 0)])
                    labels = labels.astype(np.uint8)
                    records = np.column_stack([scan.points, scan.intensity, scan.ring]).astype(np.float32)
                    records.tofile(root / filename)
                    seg_name = f"lidarseg/{VERSION}/{sd_token}_lidarseg.bin"
                    labels.tofile(root / seg_name)
                    tables["lidarseg"].append({"token": sd_token, "sample_data_token": sd_token, "filename": seg_name})
                    class_points += np.bincount(labels, minlength=len(class_points))
                    points_per_scan.append(len(labels))
                else:
                    image = render_camera(street.world, np.array(cal.camera_intrinsic), cal.width, cal.height,
                                          street_from_sensor, far=CAMERA_FAR)
                    write_jpeg(root / filename, image.rgb, config.jpeg_quality)
                    truth = np.where(image.classes < 0, NUSCENES_TRUTH_NOTHING,
                                     NUSCENES_INDEX_OF_CLASS[np.maximum(image.classes, 0)]).astype(np.uint8)
                    write_png(root / f"truth/{channel}/{sd_token}_class.png", truth)
                    write_png(root / f"truth/{channel}/{sd_token}_depth.png", depth_centimetres(image.depth))
            if progress is not None:
                progress.update(1)
        tables["scene"].append({
            "token": scene_token,
            "log_token": log_token,
            "nbr_samples": len(sample_tokens),
            "first_sample_token": sample_tokens[0],
            "last_sample_token": sample_tokens[-1],
            "name": scene_name,
            "description": f"Demo street {s + 1}, seed {seed}.",
        })
        log.debug("nuScenes %s written (%d keyframes)", scene_name, len(sample_tokens))

    map_token = token(seed, "map")
    _write_map(root / f"maps/{map_token}.png")
    tables["map"] = [{"token": map_token, "log_tokens": [r["token"] for r in tables["log"]],
                      "category": "semantic_prior", "filename": f"maps/{map_token}.png"}]
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    splits = {"train": scene_names[: config.nuscenes_train_scenes], "val": scene_names[config.nuscenes_train_scenes:]}
    (root / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")

    return {
        "version": VERSION,
        "scenes": len(scene_names),
        "keyframes": len(points_per_scan),
        "cameras": len(NUSCENES_CAMERA_NAMES),
        "camera_size": [config.camera_width, config.camera_height],
        "splits": splits,
        "points_per_scan": _stats(points_per_scan),
        "class_points": {name: int(n) for name, n in zip(NUSCENES_LIDARSEG_CATEGORIES, class_points) if n},
    }


def _write_map(path: Path) -> None:
    """A placeholder semantic-prior mask: the devkit only needs the file to exist; the
    demo pipeline never reads it."""
    write_png(path, np.zeros((64, 64), dtype=np.uint8))


def _stats(counts: list[int]) -> dict:
    a = np.array(counts, dtype=np.float64)
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "max": int(a.max()), "total": int(a.sum())}
