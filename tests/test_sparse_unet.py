"""Sparse UNet student (spconv): config, voxels and the way back, forward, training, the chain."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from chain_runner import REPO, inside, run_stage, small_params, write_params
from conftest import TINY_SPARSE_UNET as TINY
from conftest import NUSCENES_INTENSITY, street

from stages.common import load_project_params
from pipeline.store.ragged import RaggedReader
from pipeline.students.inputs import (
    Augmentation,
    crop_to_fov,
    input_features,
)
from pipeline.students.sparse_unet import (
    SparseUNet,
    SparseUNetConfig,
    collate_voxels,
    prepare_voxels,
    voxel_coordinates,
)


def tiny_model(seed: int = 0) -> SparseUNet:
    torch.manual_seed(seed)
    model = SparseUNet(TINY)
    for module in model.modules():  # non-trivial statistics, so eval mode is not an identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def forward(model: SparseUNet, scans) -> list[torch.Tensor]:
    batch = collate_voxels(scans)
    return batch.split(model(batch.features, batch.coordinates, len(scans)))


# --------------------------------------------------------------------------- config


def test_defaults_are_minkunet18a() -> None:
    config = SparseUNetConfig()
    assert (config.stem_channels, config.stem_kernel, config.blocks_per_stage) == (32, 5, 2)
    assert config.encoder_channels == (32, 64, 128, 256)
    assert config.decoder_channels == (128, 128, 96, 96)
    assert config.voxel_size == 0.05 and config.out_channels == 1024
    model = SparseUNet(config)
    assert len(model.down) == len(model.up) == 4
    assert all(len(stage) == 2 for stage in (*model.encoder, *model.decoder))
    assert tuple(model.stem.weight.shape) == (32, 5, 5, 5, 5)  # spconv's (out, kx, ky, kz, in)
    # Decoder blocks see the upsampled features and the encoder's skip: 128 + 128 at 1/8 resolution.
    assert model.decoder[0][0].conv1.in_channels == 128 + 128
    assert model.decoder[3][0].conv1.in_channels == 96 + 32
    assert model.head.out_features == 1024


def test_config_round_trips_through_json_and_rejects_bad_values() -> None:
    assert SparseUNetConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="decoder_channels"):
        SparseUNetConfig(encoder_channels=(8, 16), decoder_channels=(8,))
    with pytest.raises(ValueError, match="voxel_size"):
        SparseUNetConfig(voxel_size=0)
    with pytest.raises(ValueError, match="unknown"):
        SparseUNetConfig.from_dict({"widht": 3})


def test_grid_shape_halves_exactly_at_every_level() -> None:
    assert TINY.grid_shape == (80, 80, 32)  # 16 m / 0.2 m = 80; 4 m / 0.2 m = 20 -> 32
    assert SparseUNetConfig().grid_shape == (2560, 2560, 320)


# --------------------------------------------------------------------------- voxels


def test_inference_voxels_keep_one_point_each_and_every_point_finds_its_voxel() -> None:
    points = street(5000)
    points = np.concatenate([points, points + [0.01, 0, 0, 0]])  # every voxel holds two points or more
    scan = prepare_voxels(points, TINY, NUSCENES_INTENSITY)

    assert len(np.unique(scan.coordinates, axis=0)) == scan.num_points  # no voxel twice
    np.testing.assert_allclose(scan.features, input_features(points[scan.point_index, :3],
                                                             points[scan.point_index, 3], NUSCENES_INTENSITY))
    assert np.array_equal(scan.coordinates, voxel_coordinates(points[scan.point_index], TINY))
    # Points in the FOV take their own voxel, the others the nearest kept point.
    inside = crop_to_fov(points[:, :3], TINY.fov)
    assert 0 < inside.sum() < len(points)
    own = voxel_coordinates(points[inside], TINY)
    assert np.array_equal(scan.coordinates[scan.back_projection[inside]], own)
    outside = np.flatnonzero(~inside)
    kept_xyz = points[scan.point_index, :3]
    distances = np.linalg.norm(points[outside, None, :3] - kept_xyz[None], axis=2)
    assert np.array_equal(scan.back_projection[outside], distances.argmin(axis=1))
    # Each voxel keeps its first point (inference is deterministic).
    assert np.all(scan.point_index[scan.back_projection[inside]] <= np.flatnonzero(inside))


def test_training_voxels_are_those_of_the_augmented_cloud() -> None:
    points = street(6000, seed=1)
    augmentation = Augmentation(max_points=700)
    a = prepare_voxels(points, TINY, NUSCENES_INTENSITY, augmentation=augmentation, rng=np.random.default_rng(3))
    b = prepare_voxels(points, TINY, NUSCENES_INTENSITY, augmentation=augmentation, rng=np.random.default_rng(3))
    assert np.array_equal(a.point_index, b.point_index) and np.array_equal(a.features, b.features)
    assert a.num_points == 700
    assert len(np.unique(a.coordinates, axis=0)) == 700
    # The features describe the rotated / flipped / scaled cloud, and the voxels are its voxels.
    assert not np.allclose(a.features[:, 1:4], points[a.point_index, :3])
    assert np.array_equal(a.coordinates, voxel_coordinates(a.features[:, 1:4], TINY))
    with pytest.raises(ValueError, match="rng"):
        prepare_voxels(points, TINY, NUSCENES_INTENSITY, augmentation=augmentation)


def test_bad_scans_are_refused() -> None:
    with pytest.raises(ValueError, match="field of view"):
        prepare_voxels(np.array([[100.0, 0, 0, 1]] * 5), TINY, NUSCENES_INTENSITY)
    with pytest.raises(ValueError, match="non-finite"):
        prepare_voxels(np.array([[np.nan, 0, 0, 1]] * 5), TINY, NUSCENES_INTENSITY)


# --------------------------------------------------------------------------- network


def test_one_output_per_voxel_and_batching_changes_nothing() -> None:
    model = tiny_model().eval()
    scans = [prepare_voxels(street(n, seed), TINY, NUSCENES_INTENSITY) for seed, n in ((0, 3000), (1, 1800))]
    with torch.no_grad():
        together = forward(model, scans)
        for scan, output in zip(scans, together):
            assert output.shape == (scan.num_points, TINY.out_channels)
            torch.testing.assert_close(output, forward(model, [scan])[0], rtol=1e-5, atol=1e-5)


def test_cpu_runs_every_conv_with_the_native_algorithm() -> None:
    spconv = pytest.importorskip("spconv.pytorch")
    model = tiny_model()
    assert len(model.cuda_algorithms) == len(model.sparse_convs) > 0
    with torch.no_grad():
        forward(model, [prepare_voxels(street(500), TINY, NUSCENES_INTENSITY)])
    assert all(conv.algo == spconv.ConvAlgo.Native for conv in model.sparse_convs)


def test_gradients_reach_every_parameter() -> None:
    model = tiny_model().train()
    scans = [prepare_voxels(street(n, n), TINY, NUSCENES_INTENSITY) for n in (2500, 2000)]
    torch.cat(forward(model, scans)).square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_two_optimisation_steps_reduce_a_cosine_loss() -> None:
    model = tiny_model(seed=5).train()
    scan = prepare_voxels(street(3000, 9), TINY, NUSCENES_INTENSITY)
    generator = torch.Generator().manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(scan.num_points, TINY.out_channels, generator=generator), dim=1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.03)

    def loss() -> torch.Tensor:
        return (1 - torch.nn.functional.cosine_similarity(forward(model, [scan])[0], target, dim=1)).mean()

    losses = []
    for _ in range(2):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
        losses.append(value.item())
    with torch.no_grad():
        losses.append(loss().item())
    assert losses[2] < losses[1] < losses[0]


# --------------------------------------------------------------------------- integration


def test_waffleiron_users_never_import_spconv() -> None:
    code = (
        "import sys\n"
        "import stages.distill, stages.point_features, stages.convert_checkpoint, pipeline.training.loop\n"
        "from pipeline.students.sparse_unet import SparseUNetConfig\n"
        "from stages.common import load_project_params\n"
        "load_project_params('params.yaml').student.waffleiron.build()\n"
        "SparseUNetConfig()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('spconv', 'cumm'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_sparse_student_distills_and_writes_point_features(chain, tmp_path) -> None:
    folder = tmp_path / "sparse"
    shutil.copytree(chain, folder, symlinks=True)
    params = small_params()
    params["student"]["arch"] = "sparse_unet"
    params["distill"]["epochs"] = 2  # the small world has 2 training scans: 2 steps of batch 2
    write_params(folder, params)
    with inside(folder):
        for stage in ("distill", "point_features", "label", "evaluate"):
            run_stage(stage)

    described = json.loads((folder / "cache/student/config.json").read_text())
    assert described["arch"] == "sparse_unet"
    assert SparseUNetConfig.from_dict(described["config"]) == load_project_params(folder / "params.yaml").student.sparse_unet
    steps = (folder / "plots/distill/train_loss.csv").read_text().splitlines()[1:]
    assert len(steps) == 2
    features, labels = RaggedReader(folder / "cache/point_features/val"), RaggedReader(chain / "cache/predictions/val")
    for scan_id in features.scan_ids:
        feature = features.read(scan_id)["feature"]
        assert feature.shape == (len(labels.read(scan_id)["label"]), 192) and np.isfinite(feature).all()
    metrics = json.loads((folder / "metrics/metrics.json").read_text())
    assert 0.0 <= metrics["3d"]["miou"] <= 1.0
