"""Training-state checkpoints: an interrupted distillation continues where it stopped.

A checkpoint is one folder, replaced atomically (`pipeline.store.atomic.atomic_output`), so a
kill at any moment leaves either the previous checkpoint or the new one, never a mix:

    state.safetensors   every tensor: `model/<key>` and `optimizer/<param index>/<slot>`
    state.json          the rest: format, fingerprint, epochs done, the optimiser's param
                        groups and non-tensor slots, the scheduler and GradScaler states,
                        and the per-step history so far

It holds no random-generator state: every draw of training is a function of (seed, epoch,
scan or rank) (`pipeline.training.sampling`), so the epoch count is the whole random state.

The fingerprint names the run a checkpoint belongs to (the caller hashes the params and
the data identity into it: `pipeline.training.data.run_fingerprint`). A checkpoint with
another fingerprint is ignored with a log line and overwritten by the next save, never mixed
into a different run.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.store.atomic import atomic_output
from pipeline.store.safetensors import load_safetensors, save_safetensors

log = logging.getLogger(__name__)

FORMAT = "igloss-distill-checkpoint"
VERSION = 1
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class TrainingState:
    """Everything training needs to continue after `epochs_done` whole epochs.

    model, optimizer, scheduler: `state_dict()`s; scaler: the GradScaler's, None without one;
    history: one dict per optimiser step so far (`StepRecord` fields).
    """

    epochs_done: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    history: list[dict[str, Any]]

    @classmethod
    def capture(cls, epochs_done: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None,
                history: list[dict[str, Any]]) -> TrainingState:
        return cls(epochs_done, model.state_dict(), optimizer.state_dict(), scheduler.state_dict(),
                   scaler.state_dict() if scaler else None, history)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None) -> None:
        """Load the state into freshly built training objects (the optimiser's lr included)."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(dict(self.scheduler))  # LambdaLR pops from the dict it gets
        if scaler:
            scaler.load_state_dict(self.scaler)


@dataclass(frozen=True)
class Checkpoints:
    """Where one run keeps its checkpoint, which run it is, and how often it saves."""

    folder: Path
    fingerprint: str
    every_epochs: int = 1

    def __post_init__(self) -> None:
        if self.every_epochs < 1:
            raise ValueError(f"every_epochs must be >= 1, got {self.every_epochs}")

    def due(self, epochs_done: int, epochs: int) -> bool:
        """Save after this epoch? Every `every_epochs` epochs, but not after the last one:
        the finished model is the student artifact itself."""
        return epochs_done < epochs and epochs_done % self.every_epochs == 0

    def save(self, state: TrainingState) -> None:
        tensors = {f"model/{key}": value for key, value in state.model.items()}
        optimizer_tensors, optimizer_rest = _split_optimizer(state.optimizer)
        tensors.update(optimizer_tensors)
        document = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                    "epochs_done": state.epochs_done, "optimizer": optimizer_rest,
                    "scheduler": state.scheduler, "scaler": state.scaler, "history": state.history}
        with atomic_output(self.folder) as tmp:
            tmp.mkdir()
            save_safetensors(tmp / TENSORS_FILE, tensors)
            (tmp / STATE_FILE).write_text(json.dumps(document, indent=1) + "\n")

    def load(self) -> TrainingState | None:
        """The saved state of this run, or None (no checkpoint, or one of another run)."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        document = json.loads(path.read_text())
        if (document.get("format"), document.get("version")) != (FORMAT, VERSION):
            log.info("%s is not a version %d %s; ignored, training starts afresh", self.folder, VERSION, FORMAT)
            return None
        if document["fingerprint"] != self.fingerprint:
            log.info("%s belongs to another run (params or data differ); ignored, training starts afresh",
                     self.folder)
            return None
        tensors, _ = load_safetensors(self.folder / TENSORS_FILE, framework="torch")
        model = {key.removeprefix("model/"): value for key, value in tensors.items() if key.startswith("model/")}
        return TrainingState(
            epochs_done=document["epochs_done"],
            model=model,
            optimizer=_join_optimizer(tensors, document["optimizer"]),
            scheduler=document["scheduler"],
            scaler=document["scaler"],
            history=document["history"],
        )

    def clear(self) -> None:
        """Delete the checkpoint (once the run's result is safely written)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser state dict -> (its tensors by flat name, the JSON-able rest)."""
    tensors, slots = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value
            else:
                slots.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "slots": slots}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `_split_optimizer`. JSON has no tuples: list values of the param groups
    (AdamW's `betas`) become tuples again, as the optimiser built them."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in rest["slots"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{key: tuple(value) if isinstance(value, list) and key != "params" else value
               for key, value in group.items()} for group in rest["param_groups"]]
    return {"state": state, "param_groups": groups}
