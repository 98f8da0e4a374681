"""The demo world generator: layout contract, real readers, determinism, calibration truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.demo_world import (
    DEMO_CLASS_NAMES,
    NUSCENES_LIDARSEG_CATEGORIES,
    DemoWorldConfig,
    render_exemplar,
    write_demo_world,
)
from pipeline.demo_world.__main__ import main as demo_world_main
from pipeline.demo_world.exemplars import BACKGROUND

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
TABLES = [
    "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
    "log", "scene", "sample", "sample_data", "sample_annotation", "map", "lidarseg",
]
SEED = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "world"
    summary = write_demo_world(out, DemoWorldConfig.preset("small", seed=SEED), show_progress=False)
    return out, summary


@pytest.fixture(scope="module")
def nusc(world):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-demo", dataroot=str(world[0] / "nuscenes"), verbose=False)


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _kitti_calib(path: Path) -> dict[str, np.ndarray]:
    calib = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":", 1)
        calib[key] = np.array(values.split(), dtype=np.float64).reshape(3, 4)
    return calib


def test_both_layouts_exist(world):
    out, summary = world
    cfg = DemoWorldConfig.preset("small")
    nus = out / "nuscenes"
    for table in TABLES:
        assert (nus / "v1.0-demo" / f"{table}.json").is_file(), table
    assert len(list((nus / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))) == cfg.nuscenes_scenes * cfg.keyframes_per_scene
    for cam in CAMERAS:
        assert len(list((nus / "samples" / cam).glob("*.jpg"))) == cfg.nuscenes_scenes * cfg.keyframes_per_scene
        assert len(list((nus / "truth" / cam).glob("*_class.png"))) == cfg.nuscenes_scenes * cfg.keyframes_per_scene
        assert len(list((nus / "truth" / cam).glob("*_depth.png"))) == cfg.nuscenes_scenes * cfg.keyframes_per_scene
    assert list((nus / "maps").glob("*.png"))
    assert json.loads((nus / "splits.json").read_text()) == {"train": ["scene-0001"], "val": ["scene-0002"]}

    kitti = out / "semantic_kitti"
    assert json.loads((kitti / "splits.json").read_text()) == {"train": ["00"], "val": ["01"]}
    for seq in ("00", "01"):
        base = kitti / "sequences" / seq
        for name in ("calib.txt", "poses.txt", "times.txt"):
            assert len((base / name).read_text().splitlines()) == (5 if name == "calib.txt" else cfg.kitti_frames_per_sequence)
        for frame in range(cfg.kitti_frames_per_sequence):
            for rel in (f"velodyne/{frame:06d}.bin", f"labels/{frame:06d}.label", f"image_2/{frame:06d}.png"):
                assert (base / rel).is_file(), rel
            assert (kitti / "truth" / seq / f"{frame:06d}_class.png").is_file()
            assert (kitti / "truth" / seq / f"{frame:06d}_depth.png").is_file()

    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    assert written["seed"] == SEED and written["size"] == "small"
    assert written["nuscenes"]["keyframes"] == 4 and written["semantic_kitti"]["frames"] == 4
    assert not list(out.parent.glob(".world.*")), "temporary directories must be gone"


def test_point_files_and_labels_agree(world):
    out, _ = world
    for path in (out / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"):
        assert path.stat().st_size % (5 * 4) == 0
    for path in (out / "semantic_kitti" / "sequences").glob("*/velodyne/*.bin"):
        size = path.stat().st_size
        assert size % (4 * 4) == 0
        labels = np.fromfile(path.parent.parent / "labels" / (path.stem + ".label"), dtype=np.uint32)
        assert len(labels) == size // 16
        points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
        assert np.isfinite(points).all() and points[:, 3].min() >= 0.0 and points[:, 3].max() <= 1.0
        semantic = set(np.unique(labels & 0xFFFF).tolist())
        assert semantic <= {1, 10, 11, 13, 18, 30, 40, 48, 50, 51, 70, 71, 72, 80, 99}
        assert {40, 50}.issubset(semantic)


def test_nuscenes_devkit_reads_it(world, nusc):
    out, summary = world
    assert len(nusc.sample) == 4 and len(nusc.scene) == 2
    assert [c["name"] for c in sorted(nusc.category, key=lambda c: c["index"])] == list(NUSCENES_LIDARSEG_CATEGORIES)
    assert sorted(c["index"] for c in nusc.category) == list(range(32))
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP", *CAMERAS}
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points = np.fromfile(nusc.get_sample_data_path(lidar["token"]), dtype=np.float32).reshape(-1, 5)
        labels = np.fromfile(Path(nusc.dataroot) / nusc.get("lidarseg", lidar["token"])["filename"], dtype=np.uint8)
        assert 10_000 < len(points) == len(labels)
        assert set(np.unique(points[:, 4]).astype(int)) <= set(range(32))  # ring index
        assert points[:, 3].min() >= 0.0 and points[:, 3].max() <= 255.0
        for cam in CAMERAS:
            sd = nusc.get("sample_data", sample["data"][cam])
            assert Path(nusc.get_sample_data_path(sd["token"])).is_file()
            # Cameras fire tens of milliseconds away from the lidar.
            assert 30_000 <= abs(sd["timestamp"] - lidar["timestamp"]) <= 100_000
            assert sd["ego_pose_token"] != lidar["ego_pose_token"]
            with Image.open(nusc.get_sample_data_path(sd["token"])) as im:
                assert im.size == (sd["width"], sd["height"])
            truth = np.array(Image.open(out / "nuscenes" / "truth" / cam / f"{sd['token']}_class.png"))
            depth = np.array(Image.open(out / "nuscenes" / "truth" / cam / f"{sd['token']}_depth.png"))
            assert truth.dtype == np.uint8 and depth.dtype == np.uint16
            assert truth.shape == depth.shape == (sd["height"], sd["width"])
            assert ((truth == 255) == (depth == 0)).all()
    # The devkit's own lidarseg statistics run on it.
    nusc.get_sample_lidarseg_stats(nusc.sample[0]["token"])
    assert summary["nuscenes"]["class_points"]["flat.driveable_surface"] > 0


def _project_nuscenes(nusc, sample, cam: str, use_ego_motion: bool):
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    def pose(rec, inverse=False):
        return transform_matrix(rec["translation"], Quaternion(rec["rotation"]), inverse=inverse)

    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    points = np.fromfile(nusc.get_sample_data_path(lidar["token"]), dtype=np.float32).reshape(-1, 5)
    labels = np.fromfile(Path(nusc.dataroot) / nusc.get("lidarseg", lidar["token"])["filename"], dtype=np.uint8)
    sd = nusc.get("sample_data", sample["data"][cam])
    lidar_cs, cam_cs = (nusc.get("calibrated_sensor", s["calibrated_sensor_token"]) for s in (lidar, sd))
    if use_ego_motion:
        cam_from_lidar = (
            pose(cam_cs, True) @ pose(nusc.get("ego_pose", sd["ego_pose_token"]), True)
            @ pose(nusc.get("ego_pose", lidar["ego_pose_token"])) @ pose(lidar_cs)
        )
    else:
        cam_from_lidar = pose(cam_cs, True) @ pose(lidar_cs)
    xyz = points[:, :3].astype(np.float64) @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]
    return xyz, labels, np.array(cam_cs["camera_intrinsic"]), sd


def _agreement(uvw, labels, truth_class, truth_depth_cm) -> tuple[int, int, int]:
    """Compare projected points with the camera truth.

    uvw: (N, 3) homogeneous pixel coordinates (K @ camera point, or P2 @ Tr @ point), so the
    pixel is floor(u / w), floor(v / w) and w is the camera depth. Returns (points in the
    image, of which the truth depth matches, of which the truth class matches too).
    """
    z = uvw[:, 2]
    front = z > 0.5
    u = np.floor(uvw[:, 0] / np.where(front, z, 1.0)).astype(np.int64)
    v = np.floor(uvw[:, 1] / np.where(front, z, 1.0)).astype(np.int64)
    h, w = truth_class.shape
    inside = front & (u >= 0) & (u < w) & (v >= 0) & (v < h) & (labels > 1)  # skip noise / outliers
    seen_depth = truth_depth_cm[v[inside], u[inside]].astype(np.float64) / 100.0
    depth_ok = np.abs(seen_depth - z[inside]) < 0.05 + 0.05 * z[inside]
    class_ok = truth_class[v[inside], u[inside]] == labels[inside]
    return int(inside.sum()), int(depth_ok.sum()), int((depth_ok & class_ok).sum())


def test_kitti_projection_matches_camera_truth(world):
    """Self-consistency of the KITTI calibration: pixel = P2 @ Tr @ point sees the point's class."""
    out, _ = world
    kitti = out / "semantic_kitti"
    totals = np.zeros(3, dtype=np.int64)
    for seq in ("00", "01"):
        calib = _kitti_calib(kitti / "sequences" / seq / "calib.txt")
        tr = np.vstack([calib["Tr"], [0.0, 0.0, 0.0, 1.0]])
        p2 = calib["P2"]
        for velo in sorted((kitti / "sequences" / seq / "velodyne").glob("*.bin")):
            points = np.fromfile(velo, dtype=np.float32).reshape(-1, 4)[:, :3].astype(np.float64)
            labels = np.fromfile(velo.parent.parent / "labels" / f"{velo.stem}.label", dtype=np.uint32) & 0xFFFF
            uvw = np.hstack([points, np.ones((len(points), 1))]) @ (p2 @ tr).T
            truth_class = np.array(Image.open(kitti / "truth" / seq / f"{velo.stem}_class.png"))
            truth_depth = np.array(Image.open(kitti / "truth" / seq / f"{velo.stem}_depth.png"))
            totals += _agreement(uvw, labels.astype(np.int64), truth_class, truth_depth)
    inside, depth_ok, class_ok = totals
    assert inside > 5000
    assert depth_ok / inside > 0.9
    assert class_ok / depth_ok >= 0.97


def test_nuscenes_projection_needs_ego_motion(world, nusc):
    """With the full lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera chain the truth agrees;
    dropping the ego poses measurably misplaces points."""
    out, _ = world
    results = {}
    for use_motion in (True, False):
        totals = np.zeros(3, dtype=np.int64)
        for sample in nusc.sample:
            for cam in CAMERAS:
                xyz, labels, k, sd = _project_nuscenes(nusc, sample, cam, use_motion)
                truth_class = np.array(Image.open(out / "nuscenes" / "truth" / cam / f"{sd['token']}_class.png"))
                truth_depth = np.array(Image.open(out / "nuscenes" / "truth" / cam / f"{sd['token']}_depth.png"))
                totals += _agreement(xyz @ k.T, labels.astype(np.int64), truth_class, truth_depth)
        results[use_motion] = totals
    inside, depth_ok, class_ok = results[True]
    assert depth_ok / inside > 0.85 and class_ok / depth_ok >= 0.97
    static_inside, static_depth_ok, _ = results[False]
    assert static_depth_ok / static_inside < depth_ok / inside - 0.1


def test_generation_is_deterministic(world, tmp_path):
    out, _ = world
    again = tmp_path / "again"
    assert demo_world_main(["--out", str(again), "--size", "small", "--seed", str(SEED)]) == 0
    first, second = _file_hashes(out), _file_hashes(again)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_exemplars():
    for name in DEMO_CLASS_NAMES:
        image = render_exemplar(name, seed=1, size=48)
        assert image.size == (48, 48) and image.mode == "RGB"
        pixels = np.array(image)
        # The object fills most of the frame (a template averages over every pixel).
        assert (np.abs(pixels.astype(int) - np.array(BACKGROUND)).sum(axis=2) > 30).mean() > 0.7, name
    car = np.array(render_exemplar("car", seed=5, size=64))
    assert np.array_equal(car, np.array(render_exemplar("car", seed=5, size=64)))
    assert not np.array_equal(car, np.array(render_exemplar("car", seed=6, size=64)))
    with pytest.raises(ValueError, match="only knows the demo world's classes.*diffusers"):
        render_exemplar("a unicorn", seed=0, size=32)


def test_config_presets():
    assert DemoWorldConfig.preset("default").nuscenes_scenes * DemoWorldConfig.preset("default").keyframes_per_scene == 40
    with pytest.raises(ValueError, match="unknown demo world size"):
        DemoWorldConfig.preset("huge")
    with pytest.raises(ValueError, match="nuscenes_train_scenes"):
        DemoWorldConfig(nuscenes_scenes=2, nuscenes_train_scenes=3)
