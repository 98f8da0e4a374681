"""The dataset index (issue 16, section 1): stages depend on the files they read, not on the dataset.

Readers name a scan's files without reading them (`ScanReader.files`), and exactly the files
`read` opens; the index lists them with size and mtime, the same bytes for the same files. In a
DVC workspace whose dataset lies outside the project (as a real one does): files no stage reads
(sweeps, radar) rerun nothing; a changed table reruns the index by itself; a file replaced in
place reruns exactly the stages that read its kind once the index is forced (README, "Run on
real data": `dvc repro -f -s dataset_index`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from chain_runner import REPO, dvc_ok, scratch_clone, small_params
from realdata import MISSING, REALDATA, place_kitti_scan, write_nuscenes_keyframe

from pipeline.datasets import DatasetConfig, open_reader
from pipeline.datasets.base import DatasetError
from pipeline.datasets.index import KINDS, index_split, write_index

NUSCENES = ("nuscenes", "nuscenes", "v1.0-demo")
KITTI = ("semantic_kitti", "semantic_kitti", "unused")


def dataset(world: Path, layout: tuple[str, str, str]) -> DatasetConfig:
    format_name, folder, version = layout
    return DatasetConfig(format=format_name, root=str(world / folder), version=version)


def index_bytes(config: DatasetConfig, folder: Path, splits=("train", "val")) -> dict[str, bytes]:
    index = {kind: {} for kind in KINDS}
    for split in splits:
        entries = index_split(open_reader(config, split), config, split, progress=False)
        for kind in KINDS:
            index[kind][split] = entries[kind]
    write_index(folder, index)
    return {kind: (folder / f"{kind}.json").read_bytes() for kind in KINDS}


# --------------------------------------------------------------------------- readers and the index


@pytest.mark.parametrize("layout", [NUSCENES, KITTI], ids=lambda layout: layout[0])
@pytest.mark.parametrize("kind", ["points", "labels", "image"])
def test_the_files_a_reader_names_are_the_ones_read_opens(small_world, tmp_path, layout, kind):
    """Damaging the file `files()` names for a scan makes `read()` of that scan fail naming it."""
    world = tmp_path / "world"
    shutil.copytree(small_world / layout[1], world / layout[1])
    reader = open_reader(dataset(world, layout), "val")
    scan_id = reader.scan_ids[-1]
    files = reader.files(scan_id)
    assert [camera.image_path for camera in reader.read(scan_id).cameras] == list(files.images)
    target = {"points": files.points, "labels": files.labels, "image": files.images[0]}[kind]
    if kind == "image":
        target.unlink()
    else:
        with open(target, "ab") as handle:  # no longer a whole number of records / one label per point
            handle.write(b"\0\0\0")
    with pytest.raises(DatasetError, match=str(target)):
        reader.read(scan_id)


@pytest.mark.parametrize("layout", [NUSCENES, KITTI], ids=lambda layout: layout[0])
def test_the_index_changes_with_the_files_stages_read_and_only_with_them(small_world, tmp_path, layout):
    world = tmp_path / "world"
    shutil.copytree(small_world / layout[1], world / layout[1])
    config = dataset(world, layout)
    reader = open_reader(config, "val")
    files = reader.files(reader.scan_ids[0])
    first = index_bytes(config, tmp_path / "a")
    assert index_bytes(config, tmp_path / "b") == first  # deterministic
    points = json.loads(first["points"])
    assert sorted(points) == ["train", "val"] and all(points[s]["files"] for s in points)
    listed = {row[1]: row[2:] for row in points["val"]["files"]}
    relative = files.points.relative_to(world / layout[1]).as_posix()
    assert listed[relative] == [files.points.stat().st_size, files.points.stat().st_mtime_ns]

    # files no stage reads: nuScenes sweeps and radar, anything else in the dataset folder
    for extra in ("sweeps/LIDAR_TOP/x__LIDAR_TOP__1.pcd.bin", "sweeps/CAM_FRONT/x__CAM_FRONT__1.jpg",
                  "samples/RADAR_FRONT/x__RADAR_FRONT__1.pcd", "notes.txt"):
        (world / layout[1] / extra).parent.mkdir(parents=True, exist_ok=True)
        (world / layout[1] / extra).write_bytes(b"new")
    assert index_bytes(config, tmp_path / "c") == first

    # a file rewritten in place (same bytes, later mtime) changes its kind's index, and only that
    for kind, path in (("points", files.points), ("labels", files.labels), ("cameras", files.images[0])):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        changed = index_bytes(config, tmp_path / f"after-{kind}")
        assert [k for k in KINDS if changed[k] != first[k]] == [kind]
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert index_bytes(config, tmp_path / "d") == first


def test_a_missing_listed_file_stops_the_index_naming_it(small_world, tmp_path):
    shutil.copytree(small_world / "nuscenes", tmp_path / "nuscenes")
    config = dataset(tmp_path, NUSCENES)
    reader = open_reader(config, "val")
    missing = reader.files(reader.scan_ids[0]).labels
    missing.unlink()
    with pytest.raises(DatasetError, match=str(missing)):
        index_split(reader, config, "val", progress=False)


@pytest.mark.skipif(not REALDATA.is_dir(), reason=MISSING)
def test_the_index_of_the_real_scans(tmp_path):
    """The real nuScenes keyframe: its lidar file and six images (no lidarseg); the real
    SemanticKITTI scan: point and label file, no image (no image_2/, no calib.txt)."""
    nuscenes = DatasetConfig(format="nuscenes", root=str(write_nuscenes_keyframe(tmp_path / "nuscenes")),
                             version="v1.0-mini")
    entries = index_split(open_reader(nuscenes, "val"), nuscenes, "val", progress=False)
    assert [row[1].split("/")[1] for row in entries["points"]["files"]] == ["LIDAR_TOP"]
    assert entries["points"]["files"][0][2] == 34_688 * 5 * 4
    assert len(entries["cameras"]["files"]) == 6 and entries["labels"]["files"] == []
    kitti = DatasetConfig(format="semantic_kitti", root=str(place_kitti_scan(tmp_path / "kitti")))
    entries = index_split(open_reader(kitti, "val"), kitti, "val", progress=False)
    assert [row[1] for kind in KINDS for row in entries[kind]["files"]] == [
        "sequences/08/velodyne/000000.bin", "sequences/08/labels/000000.label"]


# --------------------------------------------------------------------------- dvc.yaml


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_stages_that_read_scans_depend_on_the_index_never_on_the_dataset_folder():
    for name, stage in dvc_stages().items():
        body = stage.get("do", stage)
        deps = body.get("deps", [])
        if name == "dataset_index":
            assert [d for d in deps if "dataset." in d] == ["${dataset.root}/${dataset.version}"]
            assert "data/demo" in deps, "a regenerated demo world (same tables, new images) must reindex"
            continue
        assert not [d for d in deps if "dataset." in d], f"{name} depends on dataset files: DVC would hash them"
        if "open_reader" in (REPO / "stages" / f"{name}.py").read_text():
            assert any(d.startswith("cache/dataset_index") for d in deps), f"{name} reads scans, not in its deps"


def test_in_the_demo_the_index_follows_the_demo_world(tmp_path):
    folder = scratch_clone(tmp_path / "project", small_params())
    edges = {line.strip().rstrip(";") for line in dvc_ok(folder, "dag", "--dot").splitlines() if "->" in line}
    assert '"demo_world" -> "dataset_index"' in edges
    readers = {"assignments", "teacher_features", "distill", "point_features", "evaluate"}
    assert {f'"dataset_index" -> "{name}"' for name in readers} <= edges


# --------------------------------------------------------------------------- in a DVC workspace


def changed_stages(folder: Path) -> set[str]:
    return set(json.loads(dvc_ok(folder, "status", "dvc.yaml", "--json") or "{}"))


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def workspace(small_world, tmp_path_factory) -> tuple[Path, Path]:
    """A scratch project whose dataset is a copy of the small world's nuScenes part outside the
    project (as a real dataset), after one full `dvc repro`."""
    root = tmp_path_factory.mktemp("dataset-index")
    world = root / "nuscenes"
    shutil.copytree(small_world / "nuscenes", world)
    params = small_params()
    params["dataset"]["root"] = str(world)
    folder = scratch_clone(root / "project", params)
    dvc_ok(folder, "repro")
    assert changed_stages(folder) == set()
    return folder, world


def force_index(folder: Path) -> set[str]:
    """What the README says to do after replacing dataset files; returns the stages it ran."""
    return ran_stages(dvc_ok(folder, "repro", "-f", "-s", "dataset_index"))


def test_files_no_stage_reads_rerun_nothing(workspace):
    folder, world = workspace
    added = []
    for channel, name in (("LIDAR_TOP", "pcd.bin"), ("CAM_FRONT", "jpg"), ("RADAR_FRONT", "pcd")):
        for part in ("sweeps", "samples") if channel.startswith("RADAR") else ("sweeps",):
            path = world / part / channel / f"extra__{channel}__1.{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * 20)
            added.append(path)
    try:
        assert changed_stages(folder) == set()
        assert "Running stage" not in dvc_ok(folder, "repro")
        assert force_index(folder) == {"dataset_index"}
        assert changed_stages(folder) == set()  # the index came out byte for byte the same
    finally:
        for path in added:
            path.unlink()


@pytest.mark.parametrize("kind, readers", [
    ("points", {"assignments", "distill", "point_features", "label", "evaluate"}),  # label: region pooling
    ("labels", {"evaluate"}),
    # distill: with `distill.teacher_source: online` it runs the teacher on the camera images itself
    ("cameras", {"assignments", "teacher_features", "extra_teacher_features", "distill", "evaluate"}),
])
def test_a_file_replaced_in_place_reruns_the_stages_that_read_it(workspace, kind, readers):
    """Same bytes with a later mtime stand for a replaced file (a real change would rerun the chain)."""
    folder, world = workspace
    config = DatasetConfig(format="nuscenes", root=str(world), version="v1.0-demo")
    reader = open_reader(config, "val")
    files = reader.files(reader.scan_ids[0])
    path = {"points": files.points, "labels": files.labels, "cameras": files.images[2]}[kind]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert changed_stages(folder) == set()  # DVC does not look at the dataset's files ...
        assert force_index(folder) == {"dataset_index"}  # ... the forced index does
        assert changed_stages(folder) == readers
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        force_index(folder)
    assert changed_stages(folder) == set()


def test_a_changed_table_reruns_the_index_by_itself(workspace):
    folder, world = workspace
    table = world / "v1.0-demo" / "log.json"
    original, stat = table.read_bytes(), table.stat()
    table.write_bytes(original + b"\n")
    try:
        assert changed_stages(folder) == {"dataset_index"}
        assert ran_stages(dvc_ok(folder, "repro", "dataset_index")) == {"dataset_index"}
        # the camera geometry comes from the tables: what reads cameras reruns
        assert {"assignments", "teacher_features"} <= changed_stages(folder)
    finally:
        table.write_bytes(original)
        os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        force_index(folder)
    assert changed_stages(folder) == set()
