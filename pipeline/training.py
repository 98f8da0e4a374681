"""The distillation loop: a WaffleIron student learns to reproduce teacher features.

The loop knows nothing of files: it gets a list of scan ids and a function that loads one
`DistillSample` (points, and the teacher target of every assigned point). Each step draws
`batch_size` scans, pre-processes them with the training augmentations (random voxel
representative, rotation, flips, scaling, subsample), runs the student, and minimises the
normalised L2 loss over every kept point that has a teacher target.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.assignments import combine_taps
from pipeline.distillation import ScheduleConfig, build_optimizer, normalized_l2_loss
from pipeline.students.point_inputs import (
    Augmentation,
    IntensityStats,
    collate,
    prepare_scan,
)
from pipeline.students.waffleiron import WaffleIron

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSample:
    """One training scan and its teacher targets, kept in their compact cached form.

    points: float32 (N, 4) x, y, z, intensity.
    target_row: int64 (N,) assignment row that teaches each point, -1 when none does.
    patch_features: (U, D) teacher features of the patches the assignments read.
    tap, weight: (A, 4) per assignment row, the rows of `patch_features` it combines and their
        weights (`pipeline.assignments.combine_taps`). Targets are only built for the points a
        training step keeps, a few thousand of the scan's tens of thousands.
    """

    points: np.ndarray
    target_row: np.ndarray
    patch_features: torch.Tensor
    tap: torch.Tensor
    weight: torch.Tensor

    def targets(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), D) float32 teacher features of the given assignment rows."""
        index = torch.from_numpy(rows)
        return combine_taps(self.patch_features, self.tap[index], self.weight[index])


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int
    batch_size: int
    schedule: ScheduleConfig
    augmentation: Augmentation | None
    seed: int


@dataclass(frozen=True)
class StepRecord:
    step: int
    epoch: int
    lr: float
    loss: float
    pairs: int


def training_batch(
    samples: Sequence[DistillSample],
    model: WaffleIron,
    stats: IntensityStats,
    augmentation: Augmentation | None,
    rng: np.random.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student outputs and teacher targets of every taught point of a batch: two (P, D)."""
    prepared = [prepare_scan(s.points, model.config, stats, augmentation=augmentation, rng=rng) for s in samples]
    batch = collate(prepared).to(device)
    outputs = model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy)
    student, teacher = [], []
    for sample, scan, output in zip(samples, prepared, batch.unpad(outputs)):
        rows = sample.target_row[scan.point_index]
        taught = rows >= 0
        student.append(output[torch.from_numpy(taught).to(device)])
        teacher.append(sample.targets(rows[taught]).to(device))
    return torch.cat(student), torch.cat(teacher)


def distill_student(
    model: WaffleIron,
    scan_ids: Sequence[str],
    load_sample: Callable[[str], DistillSample],
    settings: TrainingSettings,
    stats: IntensityStats,
    device: torch.device,
    on_step: Callable[[StepRecord], None] | None = None,
) -> list[StepRecord]:
    """Train `model` in place; returns one record per optimiser step."""
    if not scan_ids:
        raise ValueError("distillation needs at least one training scan")
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)  # drop-path draws
    steps_per_epoch = math.ceil(len(scan_ids) / settings.batch_size)
    optimizer, scheduler = build_optimizer(model, settings.schedule, steps_per_epoch)
    model.to(device).train()
    history: list[StepRecord] = []
    progress = tqdm(total=settings.epochs * steps_per_epoch, desc="distill", unit="step")
    for epoch in range(settings.epochs):
        order = rng.permutation(len(scan_ids))
        for start in range(0, len(order), settings.batch_size):
            samples = [load_sample(scan_ids[i]) for i in order[start:start + settings.batch_size]]
            student, teacher = training_batch(samples, model, stats, settings.augmentation, rng, device)
            if len(student) == 0:
                raise ValueError(f"epoch {epoch}: a batch has no point with a teacher target; "
                                 "check the assignments (no camera sees these scans?)")
            loss = normalized_l2_loss(student, teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = StepRecord(len(history), epoch, scheduler.get_last_lr()[0], loss.item(), len(student))
            scheduler.step()
            history.append(record)
            if on_step:
                on_step(record)
            progress.update()
            progress.set_postfix(loss=f"{record.loss:.4f}", epoch=epoch)
    progress.close()
    model.eval()
    return history
