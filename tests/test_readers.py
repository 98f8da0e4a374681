"""Dataset readers on the demo world: devkit agreement, truth checks, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets.base import DatasetError
from pipeline.datasets.nuscenes import NuScenesReader
from pipeline.datasets.semantic_kitti import SemanticKittiReader
from pipeline.geometry import project_to_cameras

VERSION = "v1.0-demo"


def truth_agreement(reader, raw_labels, truth_files, tested=None) -> tuple[float, int]:
    """Share of visible points whose rendered class at their projected pixel is their own class.

    A point is visible in a camera when its depth matches the rendered depth at its pixel
    (it is the first surface along that ray). Visibility is always judged with `reader`'s
    (correct) calibration; the pixels checked come from `tested` (default: the same reader),
    so a wrong projection cannot hide its errors by making points "invisible".
    """
    tested = tested or reader
    correct = total = 0
    for scan_id in reader.scan_ids:
        record, tested_record = reader.read(scan_id), tested.read(scan_id)
        raw = raw_labels(scan_id)
        for camera, tested_camera in zip(record.cameras, tested_record.cameras):
            class_file, depth_file = truth_files(scan_id, camera)
            truth_class = np.asarray(Image.open(class_file))
            truth_depth = np.asarray(Image.open(depth_file)).astype(np.float64) / 100.0
            pairs = project_to_cameras(record.points[:, :3], [camera])
            u = np.floor(pairs.pixel[:, 0]).astype(int)
            v = np.floor(pairs.pixel[:, 1]).astype(int)
            visible = np.abs(truth_depth[v, u] - pairs.depth) < np.maximum(0.25, 0.02 * pairs.depth)
            checked = project_to_cameras(record.points[:, :3], [tested_camera])
            checked_uv = np.full((len(record.points), 2), -1)
            checked_uv[checked.point_index] = np.floor(checked.pixel).astype(int)
            uv = checked_uv[pairs.point_index[visible]]
            seen = uv[:, 0] >= 0  # a point projected out of the image counts as wrong
            labels = raw[pairs.point_index[visible]]
            correct += int((truth_class[uv[seen, 1], uv[seen, 0]] == labels[seen]).sum())
            total += int(visible.sum())
    return correct / total, total


def nuscenes_truth(reader):
    def raw_labels(scan_id):
        return np.fromfile(reader.root / reader.nusc.get("lidarseg", scan_id)["filename"], dtype=np.uint8)

    sample_data_by_file = {s["filename"]: s["token"] for s in reader.nusc.sample_data}

    def truth_files(scan_id, camera):
        token = sample_data_by_file[str(camera.image_path.relative_to(reader.root))]
        folder = reader.root / "truth" / camera.name
        return folder / f"{token}_class.png", folder / f"{token}_depth.png"

    return raw_labels, truth_files


def shifted_pixels(reader_a, reader_b) -> float:
    """Median pixel distance between the projections of two readers of the same data."""
    distances = []
    for scan_id in reader_a.scan_ids:
        a, b = reader_a.read(scan_id), reader_b.read(scan_id)
        for cam_a, cam_b in zip(a.cameras, b.cameras):
            pa = project_to_cameras(a.points[:, :3], [cam_a], min_depth=3.0)
            pb = project_to_cameras(b.points[:, :3], [cam_b], min_depth=3.0)
            common, ia, ib = np.intersect1d(pa.point_index, pb.point_index, return_indices=True)
            distances.append(np.linalg.norm(pa.pixel[ia] - pb.pixel[ib], axis=1))
    return float(np.median(np.concatenate(distances)))


@pytest.fixture(scope="module")
def nuscenes_val(small_world):
    return NuScenesReader(small_world / "nuscenes", VERSION, "val")


def test_nuscenes_records(nuscenes_val):
    record = nuscenes_val.read(nuscenes_val.scan_ids[0])
    assert record.points.dtype == np.float32 and record.points.shape[1] == 4
    assert record.labels.shape == (len(record.points),)
    assert set(np.unique(record.labels)) <= set(range(16)) | {255}
    assert [c.name for c in record.cameras] == ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT",
                                                "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
    for camera in record.cameras:
        assert camera.image_path.is_file()
        assert not np.allclose(camera.lidar_to_camera, np.eye(4))


def test_devkit_lidarseg_paths_exist(nuscenes_val):
    for scan_id in nuscenes_val.scan_ids:
        assert (nuscenes_val.root / nuscenes_val.nusc.get("lidarseg", scan_id)["filename"]).is_file()


def test_projection_agrees_with_devkit_map_pointcloud_to_image(nuscenes_val, monkeypatch):
    """The devkit's own chain (rotate/translate through the global frame) gives our pixels.

    The devkit keeps points in float32, which costs it up to ~2e-3 px at global coordinates
    of hundreds of metres (and can flip a point across an image border), so its chain is run
    on float64 points here; then it agrees with ours to 1e-3 px on every point.
    """
    from nuscenes.nuscenes import NuScenesExplorer
    from nuscenes.utils.data_classes import LidarPointCloud

    original = LidarPointCloud.from_file.__func__
    monkeypatch.setattr(LidarPointCloud, "from_file", classmethod(
        lambda cls, path: cls(original(cls, path).points.astype(np.float64))))
    explorer = NuScenesExplorer(nuscenes_val.nusc)
    for scan_id in nuscenes_val.scan_ids:
        record = nuscenes_val.read(scan_id)
        sample = nuscenes_val.nusc.get("sample", nuscenes_val.nusc.get("sample_data", scan_id)["sample_token"])
        for camera in record.cameras:
            devkit_points, _, _ = explorer.map_pointcloud_to_image(scan_id, sample["data"][camera.name], min_dist=1.0)
            ours = project_to_cameras(record.points[:, :3], [camera], min_depth=1.0, min_pixel=1.0)
            assert len(ours) == devkit_points.shape[1] > 0
            np.testing.assert_allclose(ours.pixel, devkit_points[:2].T, atol=1e-3)


def test_nuscenes_projection_matches_rendered_truth(nuscenes_val):
    agreement, visible = truth_agreement(nuscenes_val, *nuscenes_truth(nuscenes_val))
    assert visible > 1000
    assert agreement >= 0.97, agreement


def test_ignoring_ego_motion_is_measurably_wrong(small_world, nuscenes_val):
    naive = NuScenesReader(small_world / "nuscenes", VERSION, "val", ego_motion_compensation=False)
    right, _ = truth_agreement(nuscenes_val, *nuscenes_truth(nuscenes_val))
    wrong, _ = truth_agreement(nuscenes_val, *nuscenes_truth(nuscenes_val), tested=naive)
    assert wrong < right - 0.1, (right, wrong)  # measured: 0.999 against 0.749
    assert shifted_pixels(nuscenes_val, naive) > 1.0


def test_semantic_kitti_projection_matches_rendered_truth(small_world):
    reader = SemanticKittiReader(small_world / "semantic_kitti", "val")
    record = reader.read(reader.scan_ids[0])
    assert record.points.shape[1] == 4 and record.labels.shape == (len(record.points),)
    assert set(np.unique(record.labels)) <= set(range(19)) | {255}

    def raw_labels(scan_id):
        sequence, frame = scan_id.split("/")
        return np.fromfile(reader.root / "sequences" / sequence / "labels" / f"{frame}.label", np.uint32) & 0xFFFF

    def truth_files(scan_id, camera):
        sequence, frame = scan_id.split("/")
        folder = reader.root / "truth" / sequence
        return folder / f"{frame}_class.png", folder / f"{frame}_depth.png"

    agreement, visible = truth_agreement(reader, raw_labels, truth_files)
    assert visible > 1000
    assert agreement >= 0.97, agreement


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def world_copy(small_world, tmp_path):
    return shutil.copytree(small_world, tmp_path / "demo")


def test_missing_root_and_version_are_named(tmp_path, small_world):
    with pytest.raises(DatasetError, match="nuScenes dataset root does not exist"):
        NuScenesReader(tmp_path / "nowhere", VERSION, "val")
    with pytest.raises(DatasetError, match=r"v1.0-trainval: nuScenes version folder is missing"):
        NuScenesReader(small_world / "nuscenes", "v1.0-trainval", "val")
    with pytest.raises(DatasetError, match="SemanticKITTI dataset root does not exist"):
        SemanticKittiReader(tmp_path / "nowhere", "val")
    with pytest.raises(DatasetError, match="no split 'test'"):
        SemanticKittiReader(small_world / "semantic_kitti", "test")


def test_truncated_point_file_is_named(world_copy):
    reader = SemanticKittiReader(world_copy / "semantic_kitti", "val")
    path = world_copy / "semantic_kitti" / "sequences" / (reader.scan_ids[0].replace("/", "/velodyne/") + ".bin")
    data = path.read_bytes()
    path.write_bytes(data[:-6])
    with pytest.raises(DatasetError, match=rf"{path.name}: size {len(data) - 6} bytes is not a multiple of the 16-byte"):
        reader.read(reader.scan_ids[0])


def test_label_count_mismatch_is_named(world_copy):
    reader = NuScenesReader(world_copy / "nuscenes", VERSION, "val")
    scan_id = reader.scan_ids[0]
    path = reader.root / reader.nusc.get("lidarseg", scan_id)["filename"]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=rf"{path.name}: holds \d+ labels but its point file holds \d+ points"):
        reader.read(scan_id)


def test_missing_camera_image_is_named(world_copy):
    reader = NuScenesReader(world_copy / "nuscenes", VERSION, "val")
    record = reader.read(reader.scan_ids[0])
    record.cameras[2].image_path.unlink()
    with pytest.raises(DatasetError, match=rf"{record.cameras[2].image_path.name}: camera image is missing"):
        reader.read(reader.scan_ids[0])


def test_non_finite_points_are_dropped_counted_and_reported(world_copy, caplog):
    reader = SemanticKittiReader(world_copy / "semantic_kitti", "val")
    scan_id = reader.scan_ids[0]
    clean = reader.read(scan_id)
    path = world_copy / "semantic_kitti" / "sequences" / (scan_id.replace("/", "/velodyne/") + ".bin")
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    points[[3, 10, 11], 0] = [np.nan, np.inf, -np.inf]
    points.tofile(path)
    with caplog.at_level("WARNING"):
        record = reader.read(scan_id)
    assert record.dropped_points == 3
    assert len(record.points) == len(clean.points) - 3
    assert len(record.labels) == len(record.points)
    np.testing.assert_array_equal(record.labels, np.delete(clean.labels, [3, 10, 11]))
    assert "dropped 3 of" in caplog.text and path.name in caplog.text
