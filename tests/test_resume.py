"""Resumable distillation: a killed run continues from its checkpoint and ends where an
uninterrupted run ends, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from chain_runner import REPO, inside, run_stage, small_params, write_params

from pipeline.training.checkpoint import Checkpoints, TrainingState
from pipeline.training.config import DistillConfig
from pipeline.training.schedule import build_optimizer

# Run the distill stage, but die by SIGKILL (no cleanup, as `kill -9` or a lost node) right
# after the checkpoint of the first epoch is written.
KILLED_AFTER_EPOCH_1 = """
import os, signal
from pipeline.training.checkpoint import Checkpoints
save = Checkpoints.save
def save_then_die(self, state):
    save(self, state)
    if state.epochs_done == 1:
        os.kill(os.getpid(), signal.SIGKILL)
Checkpoints.save = save_then_die
from stages.distill import main
main([])
"""


def distill_folder(chain: Path, folder: Path, epochs: int) -> Path:
    """A copy of the finished small chain, set up to rerun distill for `epochs` epochs."""
    shutil.copytree(chain, folder, symlinks=True)
    params = small_params()
    params["distill"].update(epochs=epochs, checkpoint_every_epochs=1)
    write_params(folder, params)
    shutil.rmtree(folder / "cache/student")  # as dvc repro does before it reruns the stage
    (folder / "plots/distill/train_loss.csv").unlink()
    return folder


def test_killed_distill_resumes_to_the_same_weights(chain, tmp_path, capsys):
    uninterrupted = distill_folder(chain, tmp_path / "uninterrupted", epochs=3)
    with inside(uninterrupted):
        run_stage("distill")
    assert not (uninterrupted / "cache/distill_checkpoint").exists(), "a finished run leaves no checkpoint"

    killed = distill_folder(chain, tmp_path / "killed", epochs=3)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", KILLED_AFTER_EPOCH_1], cwd=killed, env=env,
                            capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    state = json.loads((killed / "cache/distill_checkpoint/state.json").read_text())
    assert state["epochs_done"] == 1 and len(state["history"]) == 1
    assert not (killed / "cache/student").exists()

    capsys.readouterr()
    with inside(killed):
        run_stage("distill")
    assert "resuming from cache/distill_checkpoint after epoch 1 of 3" in capsys.readouterr().err
    assert not (killed / "cache/distill_checkpoint").exists()
    for artifact in ("cache/student/model.safetensors", "plots/distill/train_loss.csv"):
        assert (killed / artifact).read_bytes() == (uninterrupted / artifact).read_bytes(), artifact


def test_checkpoint_of_other_params_is_ignored(chain, tmp_path, capsys):
    folder = distill_folder(chain, tmp_path / "run", epochs=2)
    stale = Checkpoints(folder / "cache/distill_checkpoint", fingerprint="another run")
    stale.save(TrainingState(1, {}, {"state": {}, "param_groups": []}, {}, None, [{"step": 0}]))
    capsys.readouterr()
    with inside(folder):
        run_stage("distill")
    log = capsys.readouterr().err
    assert "belongs to another run (params or data differ); ignored" in log and "resuming" not in log
    assert len((folder / "plots/distill/train_loss.csv").read_text().splitlines()) == 1 + 2


def test_checkpoint_restores_every_training_object_exactly(tmp_path):
    """Two more steps after save + load into fresh objects = two more steps straight on."""

    def build(seed: int):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
        optimizer, scheduler = build_optimizer(model, DistillConfig(epochs=4, cooldown_epochs=1), 2)
        return model, optimizer, scheduler

    def train(model, optimizer, scheduler, steps: int) -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            model(torch.randn(5, 3)).square().mean().backward()
            optimizer.step()
            scheduler.step()

    model, optimizer, scheduler = build(0)
    train(model, optimizer, scheduler, 3)
    checkpoints = Checkpoints(tmp_path / "checkpoint", fingerprint="run")
    checkpoints.save(TrainingState.capture(1, model, optimizer, scheduler, None, [{"step": 0}]))
    resumed = build(1)  # other initial weights: all must come from the checkpoint
    loaded = checkpoints.load()
    loaded.restore(*resumed, None)
    assert loaded.epochs_done == 1 and loaded.history == [{"step": 0}]
    torch.manual_seed(7)
    train(model, optimizer, scheduler, 2)
    torch.manual_seed(7)
    train(*resumed, 2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed[0].state_dict()[key]), key
    assert optimizer.param_groups[0]["lr"] == resumed[1].param_groups[0]["lr"]
    assert scheduler.state_dict() == resumed[2].state_dict()

    assert Checkpoints(tmp_path / "checkpoint", fingerprint="other run").load() is None
    checkpoints.clear()
    assert checkpoints.load() is None


def test_checkpoint_folder_survives_dvc_repro():
    """`dvc repro` deletes a stage's outs (persist ones aside) before it reruns the stage, so
    the checkpoint must lie outside every out; and no out of distill may persist, which
    would switch off the run cache of the pipeline's most expensive stage."""
    from stages.distill import CHECKPOINT

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for entry in body.get("outs", []) + body.get("plots", []) + body.get("metrics", []):
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            assert not (CHECKPOINT == Path(path) or Path(path) in CHECKPOINT.parents), f"{name} owns {path}"
            assert not (name == "distill" and options.get("persist")), f"distill out {path} persists"


@pytest.mark.parametrize("every, due", [(1, [1, 2]), (2, [2])])
def test_checkpoints_are_due_every_n_epochs_but_not_after_the_last(every, due, tmp_path):
    checkpoints = Checkpoints(tmp_path, fingerprint="run", every_epochs=every)
    assert [done for done in range(1, 4) if checkpoints.due(done, epochs=3)] == due
