"""Real sensor files (../shared/realdata/, written by nobody on this project) laid out as datasets.

`write_nuscenes_keyframe(root)` writes nuScenes tables (the v1.0-mini layout) for the one real
keyframe of `nuscenes_keyframe/`, from its `calibration.json`, with symlinks (never copies) to
the real `.pcd.bin` and `.jpg` under `samples/`, so the project's devkit-based reader opens it as
any dataroot. `place_kitti_scan(root)` links the real SemanticKITTI scan and its labels as
`sequences/08/{velodyne,labels}/000000.*` (08 is the official val sequence), with no `image_2/`
and no `calib.txt`, as most users have SemanticKITTI.

    python tests/realdata.py OUT    # OUT/nuscenes (a dataroot) and OUT/params.yaml, for bench/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.demo_world.classes import NUSCENES_LIDARSEG_CATEGORIES  # noqa: E402
from pipeline.demo_world.seeding import token  # noqa: E402
from pipeline.demo_world.transforms import quaternion_from_matrix  # noqa: E402

REALDATA = REPO.parent / "shared" / "realdata"
NUSCENES_KEYFRAME = REALDATA / "nuscenes_keyframe"
KITTI_SCAN = REALDATA / "semantic_kitti_scan"
MISSING = f"{REALDATA} is absent: the real sensor files (shared/realdata/README.md) are not on this machine"

VERSION = "v1.0-mini"
SCENE = "scene-0061"  # the keyframe's scene in nuScenes v1.0-mini
LOG_FILE = "n015-2018-07-24-11-22-45+0800"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
# calibration.json has no LIDAR_TOP sample_data token: this one is made up (stable).
LIDAR_TOKEN = token("realdata", "LIDAR_TOP")
IMAGE_SIZE = (1600, 900)  # (width, height) of every nuScenes camera


def calibration() -> dict:
    """The `sample` entry of calibration.json (matrices as float64 arrays)."""
    sample = json.loads((NUSCENES_KEYFRAME / "calibration.json").read_text())["sample"]
    as_array = lambda value: np.asarray(value, dtype=np.float64)  # noqa: E731
    return {
        "token": sample["token"],
        "timestamp": sample["timestamp"],
        "ego2global": as_array(sample["ego2global"]),
        "lidar2ego": as_array(sample["lidar_points"]["lidar2ego"]),
        "lidar_path": sample["lidar_points"]["lidar_path"],
        "images": {name: {"cam2img": as_array(cam["cam2img"]), "cam2ego": as_array(cam["cam2ego"]),
                          "lidar2cam": as_array(cam["lidar2cam"]), "timestamp": cam["timestamp"],
                          "token": cam["sample_data_token"], "path": cam["img_path"]}
                   for name, cam in sample["images"].items()},
    }


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation nearest a 3x3 matrix (the file's matrices are float32, not exactly orthonormal)."""
    u, _, vt = np.linalg.svd(matrix)
    return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt


def pose(transform: np.ndarray) -> dict:
    """A calibrated_sensor / ego_pose record's rotation (w, x, y, z) and translation."""
    return {"rotation": quaternion_from_matrix(nearest_rotation(transform[:3, :3])),
            "translation": [float(v) for v in transform[:3, 3]]}


def camera_ego_pose(calib: dict, camera: str) -> np.ndarray:
    """ego2global at the camera's timestamp (shared/realdata/README.md):
    ego2global @ lidar2ego @ inv(lidar2cam) @ inv(cam2ego)."""
    cam = calib["images"][camera]
    return calib["ego2global"] @ calib["lidar2ego"] @ np.linalg.inv(cam["lidar2cam"]) @ np.linalg.inv(cam["cam2ego"])


def microseconds(seconds: float) -> int:
    return int(round(seconds * 1e6))


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target)


def write_nuscenes_keyframe(root: Path) -> Path:
    """A nuScenes dataroot at `root` holding the real keyframe (one scene, one sample, no
    lidarseg) in both of our splits (`splits.json`: train and val are that scene); returns root."""
    root = Path(root)
    calib = calibration()
    sensor = lambda channel: token("realdata", "sensor", channel)  # noqa: E731
    calibrated = lambda channel: token("realdata", "calibrated_sensor", channel)  # noqa: E731
    log_token, scene_token, map_token = token("realdata", "log"), token("realdata", "scene"), token("realdata", "map")
    tables: dict[str, list[dict]] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
        "scene", "sample", "sample_data", "sample_annotation", "map")}
    tables["category"] = [{"token": token("category", name), "name": name, "description": name, "index": i}
                          for i, name in enumerate(NUSCENES_LIDARSEG_CATEGORIES)]
    tables["log"] = [{"token": log_token, "logfile": LOG_FILE, "vehicle": "n015", "date_captured": "2018-07-24",
                      "location": "singapore-onenorth"}]
    tables["map"] = [{"token": map_token, "log_tokens": [log_token], "category": "semantic_prior",
                      "filename": f"maps/{map_token}.png"}]
    tables["scene"] = [{"token": scene_token, "log_token": log_token, "nbr_samples": 1, "name": SCENE,
                        "first_sample_token": calib["token"], "last_sample_token": calib["token"],
                        "description": "the real keyframe of shared/realdata/nuscenes_keyframe"}]
    tables["sample"] = [{"token": calib["token"], "timestamp": microseconds(calib["timestamp"]), "prev": "",
                         "next": "", "scene_token": scene_token}]
    sensors = {"LIDAR_TOP": (calib["lidar2ego"], [], calib["ego2global"], LIDAR_TOKEN, calib["timestamp"],
                             calib["lidar_path"])}
    for camera in CAMERAS:
        cam = calib["images"][camera]
        sensors[camera] = (cam["cam2ego"], cam["cam2img"].tolist(), camera_ego_pose(calib, camera), cam["token"],
                           cam["timestamp"], cam["path"])
    for channel, (to_ego, intrinsic, ego_to_global, sd_token, seconds, filename) in sensors.items():
        lidar = channel == "LIDAR_TOP"
        tables["sensor"].append({"token": sensor(channel), "channel": channel,
                                 "modality": "lidar" if lidar else "camera"})
        tables["calibrated_sensor"].append({"token": calibrated(channel), "sensor_token": sensor(channel),
                                            "camera_intrinsic": intrinsic, **pose(to_ego)})
        tables["ego_pose"].append({"token": sd_token, "timestamp": microseconds(seconds), **pose(ego_to_global)})
        sample_file = f"samples/{channel}/{filename}"
        link(NUSCENES_KEYFRAME / filename, root / sample_file)
        tables["sample_data"].append({
            "token": sd_token, "sample_token": calib["token"], "ego_pose_token": sd_token,
            "calibrated_sensor_token": calibrated(channel), "timestamp": microseconds(seconds),
            "fileformat": "pcd" if lidar else "jpg", "is_key_frame": True,
            "height": 0 if lidar else IMAGE_SIZE[1], "width": 0 if lidar else IMAGE_SIZE[0],
            "filename": sample_file, "prev": "", "next": ""})
    (root / VERSION).mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (root / "maps").mkdir(exist_ok=True)
    from PIL import Image

    Image.new("L", (8, 8)).save(root / "maps" / f"{map_token}.png")  # the devkit only needs the file
    (root / "splits.json").write_text(json.dumps({"train": [SCENE], "val": [SCENE]}) + "\n")
    return root


def place_kitti_scan(root: Path, sequence: str = "08", frame: str = "000000") -> Path:
    """A SemanticKITTI root holding the real scan and its labels as sequence `sequence`, frame
    `frame`, without `image_2/` or `calib.txt`; returns root."""
    folder = Path(root) / "sequences" / sequence
    link(KITTI_SCAN / "000964.bin", folder / "velodyne" / f"{frame}.bin")
    link(KITTI_SCAN / "000964.label", folder / "labels" / f"{frame}.label")
    return Path(root)


def keyframe_params(dataroot: Path) -> dict:
    """presets/nuscenes.yaml on the keyframe's dataroot (release student and geometry)."""
    import yaml

    params = yaml.safe_load((REPO / "presets" / "nuscenes.yaml").read_text())
    params["dataset"].update(root=str(dataroot), version=VERSION)
    return params


if __name__ == "__main__":
    import yaml

    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/realdata.py OUT")
    if not REALDATA.is_dir():
        raise SystemExit(MISSING)
    out = Path(sys.argv[1])
    dataroot = write_nuscenes_keyframe(out / "nuscenes")
    (out / "params.yaml").write_text(yaml.safe_dump(keyframe_params(dataroot.resolve()), sort_keys=False))
    print(f"wrote {dataroot} and {out / 'params.yaml'}")
