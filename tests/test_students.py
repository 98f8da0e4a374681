"""The student contract, for every entry of `pipeline.students.ARCHITECTURES`: the table, the
params section and the tiny configs agree; each architecture builds, prepares a scan, runs a
batch, back-propagates, predicts through its inference build, and saves and loads its folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import get_args

import numpy as np
import torch
import yaml
from conftest import NUSCENES_INTENSITY, TINY_STUDENTS, predict, randomise_batchnorms, street

from pipeline.students import ARCHITECTURES, StudentArch, StudentConfig
from pipeline.students.inputs import Augmentation
from pipeline.students.io import load_student, save_student

CPU = torch.device("cpu")
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def test_the_table_the_params_section_and_the_tiny_configs_agree() -> None:
    for name, config_class in ARCHITECTURES.items():
        assert config_class.arch == name
    assert get_args(StudentArch) == tuple(ARCHITECTURES)
    # One field of the `student:` section per architecture, named as it, defaulting to its config.
    fields = {field.name: field for field in dataclasses.fields(StudentConfig)}
    assert list(fields) == ["arch", *ARCHITECTURES]
    for name, config_class in ARCHITECTURES.items():
        assert type(fields[name].default_factory()) is config_class
        assert type(StudentConfig(arch=name).config) is config_class
    assert set(yaml.safe_load(PARAMS_FILE.read_text())["student"]) == {"arch", *ARCHITECTURES}
    assert set(TINY_STUDENTS) == set(ARCHITECTURES)
    assert all(type(config).arch == name for name, config in TINY_STUDENTS.items())


def test_builds_prepares_runs_and_backpropagates(tiny_student_config) -> None:
    config = tiny_student_config
    model = config.build()
    assert isinstance(model, torch.nn.Module) and model.config is config

    points = [street(1500, seed) for seed in (0, 1)]
    scans = [config.prepare(p, NUSCENES_INTENSITY, augmentation=Augmentation(max_points=400),
                            rng=np.random.default_rng(0)) for p in points]
    outputs = model.train().run_batch(scans, CPU)
    for scan, output, p in zip(scans, outputs, points):
        assert scan.num_points <= 400 and output.shape == (scan.num_points, config.out_channels)
        assert scan.point_index.shape == (scan.num_points,)
        assert scan.back_projection.shape == (len(p),) and scan.back_projection.max() < scan.num_points
    torch.cat(outputs).sum().backward()  # gradients flow through the contract
    assert all(parameter.grad is not None for parameter in model.parameters())
    assert predict(model, points[0]).shape == (1500, config.out_channels)


def test_inference_build_computes_the_same_features(tiny_student_config) -> None:
    torch.manual_seed(0)
    model = randomise_batchnorms(tiny_student_config.build()).eval()
    fast = model.for_inference("fp32")
    assert fast.config == model.config
    points = street(2000, seed=3)
    torch.testing.assert_close(predict(fast, points), predict(model, points), rtol=1e-4, atol=1e-5)


def test_student_folder_round_trip(tiny_student_config, tmp_path) -> None:
    torch.manual_seed(0)
    model = randomise_batchnorms(tiny_student_config.build())
    save_student(tmp_path, model, {"teacher": "tiny"})

    assert json.loads((tmp_path / "config.json").read_text())["arch"] == tiny_student_config.arch
    loaded, metadata = load_student(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config and metadata["teacher"] == "tiny"
    points = street(2000, seed=4)
    torch.testing.assert_close(predict(loaded, points), predict(model, points))
