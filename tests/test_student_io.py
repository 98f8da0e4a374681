"""The student folder (config.json of every architecture, errors that name the file), the
`student:` params section, and released ScaLR checkpoints (full size, the point_features param,
the conversion command). Build / prepare / run / save / load of every architecture: test_students."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from chain_runner import inside, run_stage, small_params, write_params
from conftest import TINY_SPARSE_UNET, TINY_WAFFLEIRON, predict, randomise_batchnorms, save_scalr_layout, street

from pipeline.config import ConfigError
from stages.common import load_project_params
from pipeline.datasets import open_reader
from pipeline.store.ragged import RaggedReader
from pipeline.students import StudentConfig
from pipeline.students.io import (
    load_scalr_student,
    load_student,
    read_student_config,
)
from pipeline.students.waffleiron import CheckpointError, WaffleIron, WaffleIronConfig

# A small WaffleIron for the demo world: its field of view and the teacher width of the small chain.
DEMO_WAFFLEIRON = WaffleIronConfig(width=16, depth=2, grids=((32, 32), (32, 4), (32, 4)),
                                   fov=((-48.0, -48.0, -4.0), (48.0, 48.0, 4.0)), head_hidden=32, out_channels=192,
                                   drop_path=0.0)


# --------------------------------------------------------------------------- the params section


def test_student_config_picks_the_chosen_architecture() -> None:
    params = StudentConfig(arch="sparse_unet", waffleiron=TINY_WAFFLEIRON, sparse_unet=TINY_SPARSE_UNET)
    assert params.config is TINY_SPARSE_UNET and params.out_channels == TINY_SPARSE_UNET.out_channels
    assert dataclasses.replace(params, arch="waffleiron").config is TINY_WAFFLEIRON


def test_params_file_has_both_sections_and_names_bad_keys(tmp_path) -> None:
    params = load_project_params(write_params(tmp_path, small_params()))
    assert params.student.arch == "waffleiron" and params.student.out_channels == 192
    assert params.student.sparse_unet.out_channels == 192 and params.point_features.checkpoint is None
    flat = small_params(student={"width": 32})  # the layout before students had several architectures
    with pytest.raises(ConfigError, match=r"student.width: unknown key; allowed keys: arch, waffleiron, sparse_unet"):
        load_project_params(write_params(tmp_path, flat))
    with pytest.raises(ConfigError, match=r"student.arch: 'pointnet' is not allowed"):
        load_project_params(write_params(tmp_path, small_params(student={"arch": "pointnet"})))


# --------------------------------------------------------------------------- the student folder


def test_config_json_of_a_bare_waffleiron_config_still_loads(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_WAFFLEIRON.to_dict()))  # written before the sparse student existed
    assert read_student_config(path) == TINY_WAFFLEIRON


def test_bad_student_folders_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model.safetensors: student file is missing"):
        load_student(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"arch": "pointnet", "config": {}}))
    with pytest.raises(ValueError, match=rf"{path}: unknown student arch 'pointnet'"):
        read_student_config(path)
    path.write_text(json.dumps({"arch": "sparse_unet", "config": {"widht": 3}}))
    with pytest.raises(ValueError, match=rf"{path}: not a valid sparse_unet student config"):
        read_student_config(path)


# --------------------------------------------------------------------------- ScaLR checkpoints


def test_full_size_scalr_checkpoint_loads_strictly_and_computes_what_its_model_computes(tmp_path) -> None:
    """The ScaLR+ release architecture (width 768, depth 48, head 2048 -> 1024), random weights,
    saved as ScaLR's DDP trainer saves them. A full-size forward pass costs minutes on a CPU
    (48 mixes of 768-channel 256 x 256 planes, and 48 x 2 768 x 768 GEMMs per point), so the
    outputs are compared on a 400-point scan, in WaffleIrons with 16x smaller grids: the weights
    do not depend on the grid size. The 34k-point memory figure is measured outside the tests."""
    release = WaffleIronConfig()
    torch.manual_seed(0)
    source = randomise_batchnorms(WaffleIron(release))
    path = tmp_path / "ckpt_last.pth"
    save_scalr_layout(path, source.state_dict())

    loaded, metadata = load_scalr_student(path, release)  # what point_features runs for `checkpoint`

    assert metadata == {"source": "ScaLR checkpoint ckpt_last.pth", "epoch": "65"}
    expected = source.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert not loaded.training

    small = dataclasses.replace(release, grids=((16, 16), (16, 2), (16, 2)))
    points = np.random.default_rng(0).uniform([-50, -50, -3, 0], [50, 50, 5, 100], (400, 4)).astype(np.float32)
    outputs = []
    for model in (source, loaded):
        twin = WaffleIron(small)
        twin.load_state_dict(model.state_dict(), strict=True)
        outputs.append(predict(twin, points))
    assert outputs[0].shape == (400, 1024)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


def test_convert_checkpoint_command_writes_a_student_folder(tmp_path) -> None:
    from stages.convert_checkpoint import main as convert

    torch.manual_seed(1)
    source = randomise_batchnorms(WaffleIron(DEMO_WAFFLEIRON))
    checkpoint = tmp_path / "ckpt_last.pth"
    save_scalr_layout(checkpoint, source.state_dict())
    params = small_params()
    params["student"]["waffleiron"] = json.loads(json.dumps(DEMO_WAFFLEIRON.to_dict()))
    params_file = write_params(tmp_path, params)

    convert([str(checkpoint), str(tmp_path / "student"), "--params", str(params_file)])

    model, metadata = load_student(tmp_path / "student")
    assert model.config == DEMO_WAFFLEIRON and metadata["source"] == "ScaLR checkpoint ckpt_last.pth"
    points = street(2000, seed=2) * [5, 5, 1, 1]
    torch.testing.assert_close(predict(model, points), predict(source, points))
    with pytest.raises(CheckpointError, match="ckpt_last.pth: model_point does not match"):
        convert([str(checkpoint), str(tmp_path / "release"), "--release"])
    assert not (tmp_path / "release").exists()


def test_point_features_runs_a_scalr_checkpoint_without_distillation(chain, tmp_path) -> None:
    folder = tmp_path / "scalr"
    shutil.copytree(chain, folder, symlinks=True)
    shutil.rmtree(folder / "cache/student")  # not needed with a checkpoint
    shutil.rmtree(folder / "cache/point_features")
    torch.manual_seed(2)
    source = randomise_batchnorms(WaffleIron(DEMO_WAFFLEIRON))
    save_scalr_layout(tmp_path / "ckpt_last.pth", source.state_dict())
    params = small_params(point_features={"checkpoint": str(tmp_path / "ckpt_last.pth")})
    params["student"]["waffleiron"] = json.loads(json.dumps(DEMO_WAFFLEIRON.to_dict()))
    write_params(folder, params)

    with inside(folder):
        run_stage("point_features")
        store = RaggedReader(folder / "cache/point_features/val")
        reader = open_reader(load_project_params(folder / "params.yaml").dataset, "val")
        scan_id = store.scan_ids[0]
        expected = predict(source, reader.read(scan_id).points).half().numpy()
    assert store.attributes["student_teacher"] == "ScaLR checkpoint ckpt_last.pth"
    # The stage runs the folded inference build in fp32: the module's features up to float rounding.
    np.testing.assert_allclose(store.read(scan_id)["feature"].astype(np.float32), expected.astype(np.float32),
                               rtol=2e-3, atol=2e-3)

    params["student"]["arch"] = "sparse_unet"
    write_params(folder, params)
    with inside(folder), pytest.raises(ConfigError, match="point_features.checkpoint is a ScaLR"):
        run_stage("point_features")
