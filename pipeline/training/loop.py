"""The distillation loop: a student (WaffleIron or sparse UNet) learns to reproduce teacher features.

The loop knows nothing of files: it gets a list of scan ids and a function that loads one
`DistillSample` (points, and the teacher target of every (point, camera) pair;
`pipeline.training.data`), and reads the `distill:` params section (`DistillConfig`) as it
is. Each step draws `batch_size` scans (`pipeline.training.sampling`), picks the camera that
teaches each and the points the network sees (`pipeline.training.recipe`), pre-processes them
with the training augmentations (random voxel representative, cut to `max_points` by
`distill.cap`, rotation, flips, scaling), runs the student, and minimises the normalised L2
loss (`pipeline.training.objective`) over every kept point that has a teacher target, with the
schedule of `pipeline.training.schedule`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.distributed import World
from pipeline.kill_switch import kill_point
from pipeline.precision import autocast, enable_gradient_checkpointing, grad_scaler
from pipeline.seeding import epoch_scan_rng
from pipeline.students import Student
from pipeline.students.inputs import Augmentation
from pipeline.training.checkpoint import Checkpoints, TrainingState
from pipeline.training.config import DistillConfig
from pipeline.training.data import DistillSample
from pipeline.training.recipe import TrainingView, training_view
from pipeline.training.ddp import all_reduce_max, all_reduce_sum, data_parallel
from pipeline.training.objective import multi_head_loss, normalized_l2_loss
from pipeline.training.sampling import epoch_order, global_batches, rank_share, steps_per_epoch, torch_seed
from pipeline.training.schedule import build_optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecord:
    step: int
    epoch: int
    lr: float
    loss: float
    pairs: int


def training_batch(
    views: Sequence[TrainingView],
    model: Student,
    augmentation: Augmentation | None,
    rngs: Sequence[np.random.Generator],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student outputs and teacher targets of every taught point of a batch: two (P, D).

    views: what each scan shows the network (`pipeline.training.recipe.training_view`).
    rngs: one generator per view, so a scan's augmentation does not depend on the others of
    its batch (or on which rank draws it).
    """
    prepared = [model.config.prepare(v.points, v.intensity_stats, augmentation=augmentation, rng=rng)
                for v, rng in zip(views, rngs, strict=True)]
    student, teacher = [], []
    for view, scan, output in zip(views, prepared, model.run_batch(prepared, device)):
        rows = view.target_row[scan.point_index]
        taught = rows >= 0
        student.append(output[torch.from_numpy(taught).to(device)])
        teacher.append(view.targets(rows[taught]).to(device))
    return torch.cat(student), torch.cat(teacher)


def distill_student(
    model: Student,
    scan_ids: Sequence[str],
    load_sample: Callable[[str], DistillSample],
    config: DistillConfig,
    device: torch.device,
    on_step: Callable[[StepRecord], None] | None = None,
    checkpoints: Checkpoints | None = None,
    world: World | None = None,
    heads: Sequence[tuple[int, float]] | None = None,
) -> list[StepRecord]:
    """Train `model` in place as `config` says; returns one record per optimiser step of the run.

    checkpoints: continue from this run's checkpoint if there is one, and save one every
        `checkpoints.every_epochs` epochs (rank 0 writes it).
    world: this process's rank among W (from `pipeline.distributed.launched`; None: one). Each
        rank draws its share of every global batch (`pipeline.training.sampling`); together
        they take the steps one process would, up to float rounding (drop-path masks aside:
        each rank draws its own). Records hold the loss and pair count of the whole batch.
    heads: with several teachers, (width, weight) of each teacher's head, in output column order
        (`pipeline.training.objective.multi_head_loss`); None: one head, the plain loss.
    """
    if not scan_ids:
        raise ValueError("distillation needs at least one training scan")
    world = world or World(device=device)
    if config.batch_size < world.size:
        raise ValueError(f"batch_size {config.batch_size} is the global batch: it must be at least the "
                         f"number of processes, {world.size}")
    steps = steps_per_epoch(len(scan_ids), config.batch_size, config.drop_last)
    if steps == 0:
        raise ValueError(f"distill.drop_last drops every batch: {len(scan_ids)} training scans are fewer than "
                         f"distill.batch_size {config.batch_size}")
    optimizer, scheduler = build_optimizer(model, config, steps)
    scaler = grad_scaler(config.precision, device)
    augmentation = Augmentation(max_points=config.max_points, cap=config.cap) if config.augment else None
    model.to(device).train()
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    history: list[StepRecord] = []
    state = checkpoints.load() if checkpoints else None
    if state:
        state.restore(model, optimizer, scheduler, scaler)
        history = [StepRecord(**record) for record in state.history]
        log.info("resuming from %s after epoch %d of %d", checkpoints.folder, state.epochs_done, config.epochs)
    start_epoch = state.epochs_done if state else 0
    if all_reduce_max(start_epoch, device) != -all_reduce_max(-start_epoch, device):
        raise RuntimeError(f"the ranks found different checkpoints in {checkpoints.folder}; "
                           "the checkpoint folder must be on a filesystem every rank shares")

    def step(views: list[TrainingView], rngs: list[np.random.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        return training_batch(views, model, augmentation, rngs, device)

    progress = tqdm(total=config.epochs * steps, initial=len(history), desc="distill", unit="step",
                    disable=not world.is_main)
    with data_parallel(model, step, world) as run_step:
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(torch_seed(config.seed, epoch, world.rank))  # drop-path draws
            for batch in global_batches(epoch_order(config.seed, epoch, len(scan_ids)), config.batch_size,
                                        config.drop_last):
                share = [int(i) for i in rank_share(batch, world.rank, world.size)]
                views = [training_view(load_sample(scan_ids[i]), config, epoch, i) for i in share]
                with autocast(config.precision, device):
                    student, teacher = run_step(views, [epoch_scan_rng(config.seed, epoch, i) for i in share])
                pairs = len(student)
                if not pairs:
                    mean = student.sum()  # 0, still a graph
                elif heads is None:
                    mean = normalized_l2_loss(student, teacher)
                else:
                    mean = multi_head_loss(student, teacher, heads)
                loss_sum, total_pairs = all_reduce_sum([mean.item() * pairs, pairs], device)
                if total_pairs == 0:
                    raise ValueError(f"epoch {epoch}: a batch has no point with a teacher target; "
                                     "check the assignments (no camera sees these scans?)")
                # The loss is the mean over the whole batch's pairs. DDP averages the ranks'
                # gradients, so each rank's mean is weighted by W times its share of the pairs
                # (exactly 1.0 for one process).
                loss = mean * (world.size * pairs / total_pairs)
                optimizer.zero_grad(set_to_none=True)
                if scaler:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                record = StepRecord(len(history), epoch, scheduler.get_last_lr()[0], loss_sum / total_pairs,
                                    int(total_pairs))
                scheduler.step()
                history.append(record)
                kill_point("distill", len(history))
                if on_step:
                    on_step(record)
                progress.update()
                progress.set_postfix(loss=f"{record.loss:.4f}", epoch=epoch)
            if checkpoints and world.is_main and checkpoints.due(epoch + 1, config.epochs):
                checkpoints.save(TrainingState.capture(epoch + 1, model, optimizer, scheduler, scaler,
                                                       [asdict(record) for record in history]))
    progress.close()
    model.eval()
    return history
