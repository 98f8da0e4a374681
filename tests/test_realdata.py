"""Real sensor files (../shared/realdata/, issue 12 section 2) through our readers and stages.

One real nuScenes keyframe (34,688 points, six 1600x900 images, mmdetection3d's calibration, no
lidarseg) laid out as a nuScenes dataroot by `realdata.write_nuscenes_keyframe`, and one real
SemanticKITTI scan with its labels (no image, no calib) placed as sequence 08. The teacher and
the students are random (no real weights exist here): these tests check geometry, formats,
readers, label maps and that the stages run at the release geometry, not semantics.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from chain_runner import inside, run_stage
from realdata import (
    CAMERAS,
    IMAGE_SIZE,
    MISSING,
    REALDATA,
    REPO,
    calibration,
    keyframe_params,
    place_kitti_scan,
    write_nuscenes_keyframe,
)

from pipeline.datasets import DATASET_FORMATS, DatasetConfig, open_reader
from pipeline.datasets.base import IGNORE_LABEL
from pipeline.geometry import project_to_cameras
from pipeline.store.ragged import RaggedReader
from pipeline.students.io import save_student
from pipeline.students.waffleiron import WaffleIronConfig

pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=MISSING)

KEYFRAME_POINTS = 34_688
KITTI_POINTS = 120_485
TINY_TEACHER = {"depth": 1, "embed_dim": 32, "num_heads": 2}  # on the ViT-L/14 name: patch 14, random
PIXEL_TOLERANCE = 0.01

# The official SemanticKITTI learning map (semantic-kitti.yaml, `learning_map`), written here
# independently of pipeline/datasets/semantic_kitti.yaml: raw id -> 0 (ignored) or 1..19 in the
# order car, bicycle, motorcycle, truck, other-vehicle, person, bicyclist, motorcyclist, road,
# parking, sidewalk, other-ground, building, fence, vegetation, trunk, terrain, pole, traffic-sign.
KITTI_LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
    48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
    252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}


@pytest.fixture(scope="module")
def keyframe_root(tmp_path_factory):
    return write_nuscenes_keyframe(tmp_path_factory.mktemp("realdata") / "nuscenes")


@pytest.fixture(scope="module")
def keyframe(keyframe_root):
    """The keyframe read through `open_reader`, as every stage reads it."""
    dataset = DatasetConfig(format="nuscenes", root=str(keyframe_root), version="v1.0-mini")
    reader = open_reader(dataset, "val")
    assert len(reader.scan_ids) == 1
    return reader.read(reader.scan_ids[0])


def file_projection(points: np.ndarray, camera: str, min_depth: float = 1.0):
    """Pixels (u, v), depth and the in-image mask of every point by the file's own `lidar2cam`
    and `cam2img` (mmdetection3d's, which nobody here wrote), with the rule of
    `project_to_cameras`: depth > min_depth, 0 < u < W - 1, 0 < v < H - 1."""
    cam = calibration()["images"][camera]
    in_camera = np.c_[points[:, :3].astype(np.float64), np.ones(len(points))] @ cam["lidar2cam"].T
    depth = in_camera[:, 2]
    image = in_camera[:, :3] @ cam["cam2img"].T
    uv = image[:, :2] / depth[:, None]
    width, height = IMAGE_SIZE
    inside_image = (depth > min_depth) & (uv[:, 0] > 0) & (uv[:, 0] < width - 1) & (uv[:, 1] > 0) & \
                   (uv[:, 1] < height - 1)
    border = np.minimum.reduce([np.abs(uv[:, 0]), np.abs(uv[:, 0] - (width - 1)), np.abs(uv[:, 1]),
                                np.abs(uv[:, 1] - (height - 1))]) < PIXEL_TOLERANCE
    return uv, depth, inside_image, border | (np.abs(depth - min_depth) < 1e-6)


def pixel_errors(record) -> dict[str, float]:
    """Per camera: the largest distance (px) between our pixel and the file's, over the points
    both put in the image; the point sets must agree except at the image border."""
    pairs = project_to_cameras(record.points[:, :3], record.cameras, min_depth=1.0)
    errors = {}
    for index, camera in enumerate(record.cameras):
        ours = pairs.camera_index == index
        uv, _, expected, border = file_projection(record.points, camera.name)
        got = np.zeros(len(record.points), dtype=bool)
        got[pairs.point_index[ours]] = True
        assert not ((got ^ expected) & ~border).any(), camera.name  # same points, up to border ties
        pixel = np.full((len(record.points), 2), np.nan)
        pixel[pairs.point_index[ours]] = pairs.pixel[ours]
        both = got & expected
        errors[camera.name] = float(np.abs(pixel[both] - uv[both]).max())
    return errors


# ------------------------------------------------------------------------------ nuScenes keyframe


def test_keyframe_reads_as_any_dataroot(keyframe, keyframe_root):
    assert len(keyframe.points) == KEYFRAME_POINTS and keyframe.dropped is None
    assert keyframe.labels is None  # no lidarseg: unlabelled, not an error
    assert [c.name for c in keyframe.cameras] == list(CAMERAS)
    for camera in keyframe.cameras:
        assert (camera.width, camera.height) == IMAGE_SIZE
        assert camera.image_path.is_symlink()
        assert camera.image_path.resolve().parent == (REALDATA / "nuscenes_keyframe").resolve()
        with Image.open(camera.image_path) as image:
            assert image.size == IMAGE_SIZE
    assert next((keyframe_root / "samples" / "LIDAR_TOP").iterdir()).is_symlink()


def test_every_point_lands_on_the_pixel_of_the_files_own_calibration(keyframe):
    """Our tables -> devkit -> reader's lidar_to_camera -> geometry.project_to_cameras gives the
    pixel that mmdetection3d's lidar2cam and cam2img give, within 0.01 px, for every point."""
    errors = pixel_errors(keyframe)
    counts = {}
    for camera in keyframe.cameras:
        counts[camera.name] = int(file_projection(keyframe.points, camera.name)[2].sum())
    seen = np.zeros(len(keyframe.points), dtype=bool)
    for camera in keyframe.cameras:
        seen |= file_projection(keyframe.points, camera.name)[2]
    print(f"points per camera: {counts}; {int(seen.sum())} of {len(seen)} points seen by some camera, "
          f"largest pixel error per camera: {errors}")
    assert max(errors.values()) < PIXEL_TOLERANCE, errors
    for name, count in counts.items():  # a ring of six cameras: each sees a share, none all or none
        assert 0.05 * KEYFRAME_POINTS < count < 0.25 * KEYFRAME_POINTS, (name, count)
    assert 0.4 < seen.mean() < 0.8  # the 32-beam lidar sees far below and behind the cameras' view


def test_pixel_check_fails_without_ego_motion_compensation(keyframe_root):
    """The check above can fail: with the lidar's ego pose for the cameras (the classic mistake:
    the car moves between the lidar and each camera's trigger) the pixels are off by far more."""
    dataset = DatasetConfig(format="nuscenes", root=str(keyframe_root), version="v1.0-mini")
    reader = open_reader(dataset, "val", ego_motion_compensation=False)
    record = reader.read(reader.scan_ids[0])
    pairs = project_to_cameras(record.points[:, :3], record.cameras, min_depth=1.0)
    worst = 0.0
    for index, camera in enumerate(record.cameras):
        ours = pairs.camera_index == index
        uv = file_projection(record.points, camera.name)[0][pairs.point_index[ours]]
        worst = max(worst, float(np.abs(pairs.pixel[ours] - uv).max()))
    assert worst > 100 * PIXEL_TOLERANCE


def write_prototype_folder(root, vocabulary, per_class: int = 2):
    """Noise images in the authors' layout `<index>_<class>/0000k.png`, one folder per class."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(vocabulary):
        folder = root / f"{index}_{name}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(folder / f"{k:05d}.png")
    return root


def shrink(params: dict, prototypes) -> dict:
    """A preset with a tiny random teacher and student, the release geometry kept (teacher input
    size, student grids, FOV and 0.1 m voxels), CPU precisions and one distillation epoch."""
    write_prototype_folder(prototypes, params["vocabulary"])
    params["prototypes"].update(source="folder", folder=str(prototypes), images_per_class=2)
    params["teacher"].update(weights=None, overrides=TINY_TEACHER, template_size=[224, 224], precision="fp32",
                             device="cpu")
    params["student"]["waffleiron"].update(width=16, depth=3, head_hidden=32, out_channels=TINY_TEACHER["embed_dim"],
                                           drop_path=0.0)
    params["distill"].update(epochs=1, batch_size=1, precision="fp32")
    params["point_features"]["precision"] = "fp32"
    params["evaluate"]["preview_scans"] = 1
    return params


def run_stages(folder, params: dict, stages: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for pipeline_file in (REPO / "dvc.yaml", *REPO.glob("*/dvc.yaml")):  # the stage-owned sections they declare
        link = folder / pipeline_file.relative_to(REPO)
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(pipeline_file)
    with inside(folder):
        for stage in stages:
            if stage == "prototypes":
                for name in params["vocabulary"]:
                    run_stage("prototypes", name)
            else:
                run_stage(stage)


@pytest.fixture(scope="module")
def keyframe_chain(keyframe_root, tmp_path_factory):
    """The real-data stages on the keyframe with the nuScenes preset's geometry (train = val =
    the keyframe's scene, splits.json)."""
    folder = tmp_path_factory.mktemp("keyframe_chain")
    params = shrink(keyframe_params(keyframe_root), folder / "authors_prototypes")
    assert params["teacher"]["input_size"] == [448, 896]
    run_stages(folder, params, ["prototypes", "template_features", "assignments", "teacher_features", "distill",
                                "point_features", "label", "evaluate"])
    return folder


def test_real_stages_run_on_the_keyframe_at_the_release_geometry(keyframe_chain, keyframe):
    folder = keyframe_chain
    scan_id = keyframe.scan_id
    # assignments: the pairs and pixels at the teacher's 448x896 input, by the file's own calibration
    assignments = RaggedReader(folder / "cache/assignments/val").read(scan_id)
    assert assignments["pixel"].dtype == np.uint16 and len(assignments["point_index"]) > 0.4 * KEYFRAME_POINTS
    expected_points = set()
    for index, camera in enumerate(keyframe.cameras):
        uv, _, seen, _ = file_projection(keyframe.points, camera.name)
        expected_points |= set(np.flatnonzero(seen))
        rows = assignments["camera"] == index
        points = assignments["point_index"][rows]
        assert seen[points].all(), camera.name  # every row is a pair the file's calibration puts in the image
        expected = np.stack([np.floor(np.floor(uv[points, 0]) * 896 / 1600),
                             np.floor(np.floor(uv[points, 1]) * 448 / 900)], axis=1)
        exact = (assignments["pixel"][rows] == expected).all(axis=1)
        assert exact.mean() > 0.999 and (np.abs(assignments["pixel"][rows] - expected) <= 1).all(), camera.name
        np.testing.assert_array_equal(assignments["patch"][rows], assignments["pixel"][rows][:, ::-1] // 14)
    assert set(assignments["point_index"].tolist()) == expected_points  # every seen point, nothing else
    # teacher features: a 32 x 64 patch grid (448x896 / 14), one tap row per assignment row
    taps = RaggedReader(folder / "cache/teacher_features/val/taps")
    assert taps.attributes["grid"] == [32, 64] and len(taps.read(scan_id)["tap"]) == len(assignments["point_index"])
    # the student keeps the release input geometry
    student = json.loads((folder / "cache/student/config.json").read_text())["config"]
    assert student["voxel_size"] == 0.1 and student["fov"] == [[-64, -64, -8], [64, 64, 8]]
    assert student["grids"] == [[256, 256], [256, 32], [256, 32]]
    # point features: one finite row per raw point
    features = RaggedReader(folder / "cache/point_features/val").read(scan_id)
    assert features["feature"].shape == (KEYFRAME_POINTS, TINY_TEACHER["embed_dim"]) and features["valid"].all()
    assert np.isfinite(features["feature"].astype(np.float32)).all()
    stats = DATASET_FORMATS["nuscenes"].intensity  # points after 0.1 m voxelisation and the FOV crop
    kept = WaffleIronConfig().prepare(keyframe.points, stats).num_points
    xyz = keyframe.points[:, :3].astype(np.float64)  # the rule: first point of each 0.1 m voxel, then the FOV
    _, first = np.unique(((xyz - xyz.min(axis=0)) / 0.1).astype(np.int64), axis=0, return_index=True)
    inside_fov = np.all((np.abs(xyz[first, :2]) < 64 - 1e-4), axis=1) & (np.abs(xyz[first, 2]) < 8 - 1e-4)
    near = int((np.linalg.norm(xyz, axis=1) < 1.0).sum())
    print(f"keyframe: {KEYFRAME_POINTS} points, {kept} after 0.1 m voxelisation and the FOV crop "
          f"({near} points lie within 1 m of the lidar: self-returns that share a few voxels)")
    assert kept == int(inside_fov.sum())
    # labels: every point; the 2D baseline exactly at the points some camera sees
    predictions = RaggedReader(folder / "cache/predictions/val").read(scan_id)
    assert (predictions["label"] != IGNORE_LABEL).all()
    baseline_seen = np.flatnonzero(predictions["baseline"] != IGNORE_LABEL)
    np.testing.assert_array_equal(baseline_seen, sorted(expected_points))


def test_unlabelled_keyframe_is_evaluated_as_having_no_labels(keyframe_chain):
    metrics = json.loads((keyframe_chain / "metrics/metrics.json").read_text())
    assert metrics["scans"] == {"total": 1, "unlabelled": 1, "without_camera": 0}
    assert "split 'val' has no labels" in metrics["notes"]
    for result in ("3d", "3d_visible", "2d_baseline"):
        assert metrics[result]["num_points"] == 0 and metrics[result]["miou"] is None
    assert (keyframe_chain / "plots/evaluate/per_class_iou.png").is_file()
    from stages.report import format_table

    assert "note: split 'val' has no labels" in format_table(metrics)


# ------------------------------------------------------------------ SemanticKITTI without images


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    return place_kitti_scan(tmp_path_factory.mktemp("kitti") / "semantic_kitti")


def test_kitti_scan_without_camera_reads_with_the_official_learning_map(kitti_root):
    reader = open_reader(DatasetConfig(format="semantic_kitti", root=str(kitti_root)), "val")  # 08: official val
    assert reader.scan_ids == ["08/000000"]
    record = reader.read("08/000000")
    assert record.cameras == [] and len(record.points) == KITTI_POINTS
    raw = np.fromfile(REALDATA / "semantic_kitti_scan" / "000964.label", dtype=np.uint32)
    semantic = raw & 0xFFFF
    assert (raw >> 16).any() and (semantic == 252).any()  # instance bits and a moving class to fold
    official = np.vectorize(KITTI_LEARNING_MAP.__getitem__)(semantic)
    expected = np.bincount(official, minlength=20)[1:]  # 0 is ignored
    got = np.bincount(record.labels[record.labels != IGNORE_LABEL], minlength=19)
    print("per-class points:", dict(zip(reader.label_map.classes, got.tolist())))
    np.testing.assert_array_equal(got, expected)
    assert int((record.labels == IGNORE_LABEL).sum()) == int((official == 0).sum())


def test_kitti_sequence_with_calib_but_no_images_has_no_camera(tmp_path):
    root = place_kitti_scan(tmp_path / "semantic_kitti")
    (root / "sequences/08/calib.txt").write_text("P2: 700 0 600 0 0 700 180 0 0 0 1 0\n"
                                                 "Tr: 0 -1 0 0 0 0 -1 0 1 0 0 0\n")
    assert open_reader(DatasetConfig(format="semantic_kitti", root=str(root)), "val").read("08/000000").cameras == []
    (root / "sequences/08/image_2").mkdir()  # with both, every scan needs its image
    with pytest.raises(ValueError, match=r"image_2/000000.png: camera image is missing"):
        open_reader(DatasetConfig(format="semantic_kitti", root=str(root)), "val").read("08/000000")


def test_kitti_lidar_only_stages_label_and_evaluate_without_images(kitti_root, tmp_path, capfd):
    """assignments and teacher_features find no camera, label labels every point from the lidar,
    and evaluate scores the 3D labels and reports the 2D baseline as having no camera."""
    params = yaml.safe_load((REPO / "presets" / "semantic_kitti.yaml").read_text())
    params["dataset"].update(root=str(kitti_root), distill_split="val", eval_split="val")
    params = shrink(params, tmp_path / "authors_prototypes")
    folder = tmp_path / "project"
    torch.manual_seed(0)
    student = WaffleIronConfig.from_dict(params["student"]["waffleiron"]).build()  # tiny, release geometry
    save_student(folder / "cache/student", student, {"teacher": "random"})  # no camera: nothing to distil from
    run_stages(folder, params, ["prototypes", "template_features", "assignments", "teacher_features",
                                "point_features", "label", "evaluate"])
    said = capfd.readouterr().err  # each stage's summary line says the scan has no camera
    assert "[assignments]" in said and "1 scans without a camera" in said
    assert "val: 1 scans (1 without a camera)" in said  # teacher_features
    assert "1 scans with no point seen by a camera" in said  # label
    assert "1 of 1 scans of split 'val' have no camera" in said  # evaluate
    assert RaggedReader(folder / "cache/assignments/val").read("08/000000")["point_index"].size == 0
    predictions = RaggedReader(folder / "cache/predictions/val").read("08/000000")
    assert (predictions["label"] != IGNORE_LABEL).all() and (predictions["baseline"] == IGNORE_LABEL).all()
    metrics = json.loads((folder / "metrics/metrics.json").read_text())
    assert metrics["scans"] == {"total": 1, "unlabelled": 0, "without_camera": 1}
    assert "1 of 1 scans of split 'val' have no camera" in metrics["notes"]
    labels = np.fromfile(REALDATA / "semantic_kitti_scan" / "000964.label", dtype=np.uint32) & 0xFFFF
    labelled = int(sum((labels == raw).sum() for raw, index in KITTI_LEARNING_MAP.items() if index))
    assert metrics["3d"]["num_points"] == labelled and metrics["3d"]["miou"] is not None
    for result in ("3d_visible", "2d_baseline"):
        assert metrics[result]["num_points"] == 0 and metrics[result]["miou"] is None
