"""Shared fixtures: the small demo world, generated once per test session (per xdist worker).

Also the tiny students every student test uses (`TINY_STUDENTS`, one per architecture, and the
`tiny_student_config` fixture over `pipeline.students.ARCHITECTURES`), with the scans and
checkpoints they run on; test modules import these from here, never from each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pipeline  # noqa: E402,F401  (applies the torchvision shim before any test imports timm)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """The `small` demo world (both formats); read-only for tests: copy it before changing files."""
    from pipeline.demo_world import DemoWorldConfig, write_demo_world

    root = tmp_path_factory.mktemp("world") / "demo"
    write_demo_world(root, DemoWorldConfig.preset("small", seed=0))
    return root


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Path:
    """The whole chain run once, in process, on the small world (`chain_runner.small_params()`).

    Read-only for tests: copy the folder (`shutil.copytree(chain, ..., symlinks=True)`) before
    running a stage in it.
    """
    from chain_runner import run_chain, small_params

    folder = tmp_path_factory.mktemp("chain")
    run_chain(folder, small_params())
    return folder


# --------------------------------------------------------------------------- tiny students

from pipeline.datasets import DATASET_FORMATS  # noqa: E402
from pipeline.students import ARCHITECTURES, ArchitectureConfig  # noqa: E402
from pipeline.students.sparse_unet import SparseUNetConfig  # noqa: E402
from pipeline.students.waffleiron import WaffleIronConfig  # noqa: E402

NUSCENES_INTENSITY = DATASET_FORMATS["nuscenes"].intensity

TINY_WAFFLEIRON = WaffleIronConfig(
    width=16,
    depth=3,
    grids=((8, 8), (8, 4), (8, 4)),
    fov=((-4.0, -4.0, -1.0), (4.0, 4.0, 1.0)),
    num_neighbors=4,
    drop_path=0.0,
    head_hidden=32,
    out_channels=8,
)
TINY_SPARSE_UNET = SparseUNetConfig(
    stem_channels=8,
    stem_kernel=3,
    encoder_channels=(8, 16, 16, 24),
    decoder_channels=(16, 16, 8, 8),
    blocks_per_stage=1,
    voxel_size=0.2,
    fov=((-8.0, -8.0, -2.0), (8.0, 8.0, 2.0)),
    out_channels=12,
)
# One tiny config per entry of ARCHITECTURES (test_students checks that none is missing).
TINY_STUDENTS: dict[str, ArchitectureConfig] = {
    WaffleIronConfig.arch: TINY_WAFFLEIRON,
    SparseUNetConfig.arch: TINY_SPARSE_UNET,
}


@pytest.fixture(params=list(ARCHITECTURES))
def tiny_student_config(request) -> ArchitectureConfig:
    """The tiny config of each architecture in turn."""
    return TINY_STUDENTS[request.param]


def random_points(num_points: int, seed: int) -> np.ndarray:
    """A scan of (num_points, 4) x, y, z, intensity spread over TINY_WAFFLEIRON's field of view."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-3.8, -3.8, -0.9], [3.8, 3.8, 0.9], size=(num_points, 3))
    intensity = rng.uniform(0, 100, size=(num_points, 1))
    return np.hstack([xyz, intensity]).astype(np.float32)


def street(num_points: int, seed: int = 0) -> np.ndarray:
    """(num_points, 4) x, y, z, intensity: a ground plane with boxes, some points outside
    TINY_SPARSE_UNET's FOV (and more outside TINY_WAFFLEIRON's)."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-9, -9, -1.5], [9, 9, 1.5], size=(num_points, 3))
    xyz[: num_points // 2, 2] = -1.5 + rng.normal(0, 0.02, num_points // 2)  # dense ground
    return np.hstack([xyz, rng.uniform(0, 100, size=(num_points, 1))]).astype(np.float32)


def randomise_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():  # non-trivial statistics, so a lost buffer shows
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def save_scalr_layout(path, state_dict, **extra) -> None:
    """Write a checkpoint the way ScaLR's DDP trainer does (`module.` keys, 5 entries)."""
    payload = {
        "epoch": 65,
        "model_point": {f"module.{key}": value for key, value in state_dict.items()},
        "optim": {"state": {}, "param_groups": [{"lr": 0.002, "weight_decay": 0.03, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 10, "_step_count": 11},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
    }
    payload.update(extra)
    torch.save(payload, path)


def predict(model, points: np.ndarray) -> torch.Tensor:
    """Features of every original point of a scan, on the CPU, as the point_features stage computes them."""
    scan = model.config.prepare(points, NUSCENES_INTENSITY)
    with torch.inference_mode():
        return model.eval().run_batch([scan], torch.device("cpu"))[0][torch.from_numpy(scan.back_projection)]
