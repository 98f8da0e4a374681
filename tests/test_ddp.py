"""Distributed distillation: two gloo processes on the CPU train the student one process trains.

Also the precision and memory params of distill (bf16, fp16, gradient checkpointing).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from chain_runner import REPO, inside, run_stage, small_params, write_params

from stages.common import load_project_params
from pipeline.seeding import epoch_scan_rng
from pipeline.store.safetensors import load_safetensors
from pipeline.training.sampling import epoch_order, global_batches, rank_share


def distill_folder(chain: Path, folder: Path, **distill) -> Path:
    """A copy of the finished small chain with changed distill params, its student removed."""
    shutil.copytree(chain, folder, symlinks=True)
    params = small_params()
    params["distill"].update(distill)
    write_params(folder, params)
    shutil.rmtree(folder / "cache/student")
    return folder


def student(folder: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(folder / "cache/student/model.safetensors", framework="torch")[0]


def loss_log(folder: Path) -> list[dict[str, str]]:
    with (folder / "plots/distill/train_loss.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_ranks_share_every_global_batch_and_draw_its_augmentations():
    order = epoch_order(seed=0, epoch=3, num_scans=10)
    assert sorted(order) == list(range(10))
    assert not np.array_equal(order, epoch_order(seed=0, epoch=4, num_scans=10))
    for batch in global_batches(order, batch_size=4):  # 4, 4, then 2 scans
        for world_size in (1, 2):
            shares = [rank_share(batch, rank, world_size) for rank in range(world_size)]
            assert sorted(np.concatenate(shares)) == sorted(batch)
    assert [list(rank_share(np.array([7]), rank, 2)) for rank in (0, 1)] == [[7], [7]]  # short: repeated
    # A scan's augmentation depends on (seed, epoch, scan), not on the rank or the batch.
    assert (epoch_scan_rng(0, 3, 5).random() == epoch_scan_rng(0, 3, 5).random()
            != epoch_scan_rng(0, 4, 5).random())


def initial_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The student before training, initialised as the distill stage does."""
    params = load_project_params(folder / "params.yaml")
    torch.manual_seed(params.distill.seed)
    return params.student.config.build().state_dict()


def test_two_processes_train_as_one(chain, tmp_path):
    """The small world has 2 training scans: batch 2 for 2 epochs is 2 steps, one scan per rank.

    Equal up to float rounding, which this network amplifies: a 1e-7 change in the forward pass
    flips a few ReLU / max-over-neighbours kinks (each worth ~1/P of the gradient, P ~ 3600
    taught points), and Adam's first steps move every weight by about lr whatever its gradient's
    size, so weights with a near-zero gradient (embed.conv2.0.bias has none at all: a BatchNorm
    follows) move by float noise. Measured: the difference from the single process is 9e-4 of
    the training update; one process run with 1 thread instead of 2 differs by 6e-4; two ranks
    averaging their means (no weighting by pairs) differ by 5e-2. The losses, smooth in the
    weights, agree to 1e-7.
    """
    # The ScaLR+ recipe (params.yaml's demo keeps our first one): each rank draws the camera of
    # its scans, crops them to that camera's points and cuts a ball, as the single process does.
    scalr = dict(epochs=2, camera="per_scan_epoch", points="taught", cap="ball", schedule="reference", drop_last=True)
    single = distill_folder(chain, tmp_path / "single", **scalr)
    with inside(single):
        run_stage("distill")

    double = distill_folder(chain, tmp_path / "double", **scalr)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "stages.distill"], cwd=double, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("[distill] done in") == 1, "only rank 0 logs"
    assert not (double / "cache/distill_checkpoint").exists()

    log_one, log_two = loss_log(single), loss_log(double)
    assert len(log_one) == len(log_two) == 2
    for row_one, row_two in zip(log_one, log_two):
        assert (row_two["pairs"], row_two["lr"]) == (row_one["pairs"], row_one["lr"])
        assert float(row_two["loss"]) == pytest.approx(float(row_one["loss"]), rel=1e-6)

    one, two, start = student(single), student(double), initial_weights(single)
    assert one.keys() == two.keys()
    floats = [key for key in one if one[key].is_floating_point()]
    update = torch.cat([(one[key] - start[key]).flatten() for key in floats]).norm()
    difference = torch.cat([(two[key] - one[key]).flatten() for key in floats]).norm()
    assert difference < 1e-2 * update, f"{difference / update:.2e} of the update"
    for key in set(one) - set(floats):  # BatchNorm step counts
        assert torch.equal(one[key], two[key]), key


def test_gradient_checkpointing_trains_the_same_student(chain, tmp_path):
    folder = distill_folder(chain, tmp_path / "run", gradient_checkpointing=True)
    with inside(folder):
        run_stage("distill")
    reference = student(chain)
    for key, value in student(folder).items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-6, msg=key)


def test_bf16_trains_on_the_cpu(chain, tmp_path):
    folder = distill_folder(chain, tmp_path / "run", precision="bf16")
    with inside(folder):
        run_stage("distill")
    (row,) = loss_log(folder)
    (reference,) = loss_log(chain)
    assert row["pairs"] == reference["pairs"]
    assert float(row["loss"]) == pytest.approx(float(reference["loss"]), abs=0.02)  # bf16: ~3 digits


def test_fp16_on_the_cpu_names_the_param(chain, tmp_path):
    folder = distill_folder(chain, tmp_path / "run", precision="fp16")
    with inside(folder), pytest.raises(ValueError, match=r"params.yaml: distill.precision is fp16, which needs CUDA"):
        run_stage("distill")
