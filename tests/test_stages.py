"""Every stage's main, in process, on the small demo world in a temporary directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from chain_runner import (
    inside,
    run_chain,
    run_stage,
    small_params,
    tree_hash,
    write_params,
)

from pipeline.config import ConfigError
from stages.common import load_project_params
from pipeline.store.ragged import RaggedReader
from pipeline.store.safetensors import load_safetensors


def test_every_stage_writes_its_artifact(chain):
    params = load_project_params(chain / "params.yaml")
    for class_name in params.class_names:
        manifest = json.loads((chain / "cache/prototypes" / class_name / "manifest.json").read_text())
        assert len(manifest["images"]) == 2 and manifest["source"] == "procedural"
    tensors, metadata = load_safetensors(chain / "cache/template_features/templates.safetensors")
    assert tensors["features"].shape == (2 * len(params.class_names), 192)
    assert json.loads(metadata["class_names"]) == list(params.class_names)
    for split in ("train", "val"):
        assignments = RaggedReader(chain / "cache/assignments" / split)
        taps = RaggedReader(chain / "cache/teacher_features" / split / "taps")
        assert assignments.num_rows == taps.num_rows > 0
    assert (chain / "cache/student/model.safetensors").is_file()
    loss_log = (chain / "plots/distill/train_loss.csv").read_text().splitlines()
    assert loss_log[0] == "step,epoch,lr,loss,pairs" and len(loss_log) > 1
    features = RaggedReader(chain / "cache/point_features/val")
    predictions = RaggedReader(chain / "cache/predictions/val")
    for scan_id in features.scan_ids:
        assert len(features.read(scan_id)["feature"]) == len(predictions.read(scan_id)["label"])
    metrics = json.loads((chain / "metrics/metrics.json").read_text())
    assert set(metrics) == {"3d", "3d_visible", "2d_baseline", "dropped_points", "scans"}  # no `notes`
    assert metrics["dropped_points"] == {"point_features": 0, "label": 0, "labelled": 0}
    assert metrics["scans"] == {"total": len(predictions), "unlabelled": 0, "without_camera": 0}
    for result in ("3d", "3d_visible", "2d_baseline"):
        assert 0.0 <= metrics[result]["miou"] <= 1.0
    for picture in ("evaluate/per_class_iou.png", "evaluate/confusion_3d.png", "evaluate/bev_0.png",
                    "prototypes/contact_sheet.png"):
        assert (chain / "plots" / picture).stat().st_size > 10_000


def test_chain_is_deterministic(chain, tmp_path):
    run_chain(tmp_path / "again", small_params())
    for artifact in ("cache/prototypes", "cache/template_features", "cache/assignments", "metrics/metrics.json"):
        first, second = chain / artifact, tmp_path / "again" / artifact
        if first.is_file():
            assert first.read_bytes() == second.read_bytes(), artifact
        else:
            assert tree_hash(first) == tree_hash(second), artifact


# ----------------------------------------------------------------------------- bad input


def test_empty_vocabulary_is_refused(tmp_path):
    path = write_params(tmp_path, small_params(vocabulary={}))
    with pytest.raises(ConfigError, match="params.yaml: vocabulary: is empty"):
        load_project_params(path)


def test_unknown_evaluation_label_is_named(tmp_path):
    vocabulary = small_params()["vocabulary"]
    vocabulary["pole"]["label"] = "lamppost"
    path = write_params(tmp_path, small_params(vocabulary=vocabulary))
    with pytest.raises(ConfigError, match=r"vocabulary.pole.label: 'lamppost' is not an evaluation class"):
        load_project_params(path)


def test_unknown_params_key_is_named(tmp_path):
    params = small_params()
    params["distill"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"params.yaml: distill.learning_rate: unknown key"):
        load_project_params(write_params(tmp_path, params))


def test_class_with_no_prototype_images_stops_before_writing(tmp_path):
    folder_root = tmp_path / "authors"
    (folder_root / "0_road").mkdir(parents=True)
    prototypes = dict(small_params()["prototypes"], source="folder", folder=str(folder_root))
    write_params(tmp_path, small_params(prototypes=prototypes))
    with inside(tmp_path), pytest.raises(ValueError, match="0_road"):
        run_stage("prototypes", "road")
    assert not (tmp_path / "cache/prototypes").exists()


def test_teacher_weights_of_another_architecture_are_refused(chain, tmp_path):
    from safetensors.torch import save_file

    from pipeline.teachers import (
        ArchitectureOverridesConfig,
        TeacherConfig,
        TeacherError,
        TimmViTTeacher,
    )

    other = TimmViTTeacher(TeacherConfig(input_size=(28, 28), template_size=(28, 28),
                                  overrides=ArchitectureOverridesConfig(depth=1, embed_dim=64, num_heads=2)))
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, wrong)
    params = small_params()
    params["teacher"]["weights"] = str(wrong)
    write_params(tmp_path, params)
    shutil.copytree(chain / "cache/prototypes", tmp_path / "cache/prototypes")
    with inside(tmp_path), pytest.raises(TeacherError, match=r"wrong.safetensors does not fit"):
        run_stage("template_features")
    assert not (tmp_path / "cache/template_features").exists()


# ----------------------------------------------------------------------------- sabotage


def baseline_miou(folder: Path) -> float:
    return json.loads((folder / "metrics/metrics.json").read_text())["2d_baseline"]["miou"]


def copy_chain(chain: Path, folder: Path) -> Path:
    shutil.copytree(chain, folder, symlinks=True)
    return folder


def test_wrong_camera_transform_drops_the_2d_baseline(chain, tmp_path, monkeypatch):
    """Each camera given its neighbour's extrinsics (a mislabelled channel) must ruin the 2D
    baseline: the metric can fail."""
    import dataclasses

    import pipeline.datasets

    honest_open_reader = pipeline.datasets.open_reader

    def sabotaged_open_reader(*args, **kwargs):
        reader = honest_open_reader(*args, **kwargs)
        honest_read = reader.read

        def read(scan_id):
            record = honest_read(scan_id)
            shifted = record.cameras[1:] + record.cameras[:1]
            record.cameras = [dataclasses.replace(c, lidar_to_camera=s.lidar_to_camera)
                              for c, s in zip(record.cameras, shifted)]
            return record

        reader.read = read
        return reader

    folder = copy_chain(chain, tmp_path / "sabotaged")
    for module in ("assignments", "teacher_features"):
        monkeypatch.setattr(f"stages.{module}.open_reader", sabotaged_open_reader)
    with inside(folder):
        for stage in ("assignments", "teacher_features", "label", "evaluate"):
            run_stage(stage)
    honest, sabotaged = baseline_miou(chain), baseline_miou(folder)
    assert sabotaged <= honest - 0.3, (honest, sabotaged)


def test_shuffled_teacher_features_drop_the_2d_baseline(chain, tmp_path):
    from pipeline.store.ragged import RaggedWriter

    folder = copy_chain(chain, tmp_path / "shuffled")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        path = folder / "cache/teacher_features" / split / "patches"
        store = RaggedReader(path)
        scans = {scan_id: store.read(scan_id) for scan_id in store.scan_ids}
        shutil.rmtree(path)
        with RaggedWriter(path, store.columns, attributes=store.attributes) as writer:
            for scan_id, rows in scans.items():
                writer.append(scan_id, feature=rows["feature"][rng.permutation(len(rows["feature"]))],
                              patch_id=rows["patch_id"])
    with inside(folder):
        for stage in ("label", "evaluate"):
            run_stage(stage)
    honest, sabotaged = baseline_miou(chain), baseline_miou(folder)
    assert sabotaged <= honest - 0.3, (honest, sabotaged)


# ----------------------------------------------------------------------------- prototype sources


def test_prototypes_stage_draws_with_a_tiny_diffusers_pipeline(tmp_path):
    from tiny_diffusers import save_tiny_pipeline

    model = save_tiny_pipeline(tmp_path / "tiny-sd")
    prototypes = dict(small_params()["prototypes"], source="diffusers",
                      diffusers=dict(model=str(model), steps=2, height=32, width=32, dtype="fp32", batch_size=2))
    write_params(tmp_path, small_params(prototypes=prototypes))
    with inside(tmp_path):
        run_stage("prototypes", "car")
    manifest = json.loads((tmp_path / "cache/prototypes/car/manifest.json").read_text())
    assert manifest["source"] == "diffusers"
    assert [image["prompt"] for image in manifest["images"]] == ["a photo of a car"] * 2
    assert all(image["generator"] == str(model) and image["width"] == 32 for image in manifest["images"])


def test_prototypes_stage_reads_the_authors_folder_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "authors"
    for index, name in ((0, "road"), (7, "car")):
        (root / f"{index}_{name}").mkdir(parents=True)
        for i, size in enumerate((128, 300)):
            Image.new("RGB", (size, size), (40 * i + 10, 90, 200)).save(root / f"{index}_{name}" / f"000{i:02d}.png")
    prototypes = dict(small_params()["prototypes"], source="folder", folder=str(root))
    write_params(tmp_path, small_params(prototypes=prototypes))
    with inside(tmp_path):
        run_stage("prototypes", "car")
    manifest = json.loads((tmp_path / "cache/prototypes/car/manifest.json").read_text())
    assert manifest["source"] == "folder"
    assert [image["width"] for image in manifest["images"]] == [128, 300]
    assert [image["generator"] for image in manifest["images"]] == ["7_car/00000.png", "7_car/00001.png"]
