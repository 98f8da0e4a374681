"""The optimiser and learning-rate schedule of ScaLR+ distillation.

* Schedule (`lr_factor`): linear warmup for `warmup_epochs`, then reciprocal-square-root decay
  with a timescale of `rsqrt_timescale_epochs`, then from the cooldown start
  (`DistillConfig.cooldown_start_epoch`: `cooldown_epochs` before the end) a linear cool-down
  to 0 at the end of training. `distill.schedule` picks how the two ends are written:
  `reference` as ScaLR+ (`../shared/REFERENCE.md`), `shifted` as this project first did.
* Optimiser: AdamW (lr 0.002, weight decay 0.03 on every parameter) with the schedule
  as a `LambdaLR`, stepped once per optimiser step.

Both read the `distill:` params section, `DistillConfig`, as it is.
"""

from __future__ import annotations

import math

import torch

from pipeline.training.config import DistillConfig


def lr_factor(step: int, steps_per_epoch: int, config: DistillConfig) -> float:
    """Multiplier of the base lr for the update made at (0-based) optimiser step `step`.

    With W, T, C the warmup, timescale and cooldown start in steps (the epoch settings times
    steps_per_epoch, not rounded), E = epochs * steps_per_epoch the end, and
    r(k) = 1 / sqrt(1 + (k - W) / T) the rsqrt decay (1 at k = W):

    `schedule: reference` (ScaLR+):
    * warmup, k < W: k / W (0 at the first step, so the first update changes nothing);
    * W <= k < C: r(k);
    * C <= k < E: r(C) * (E - k) / (E - C): the lr falls linearly from its value at the
      cool-down start to 0 at the end ("cools down linearly to 0 from epoch 63").

    `schedule: shifted` (this project's first schedule):
    * warmup, k < W: (k + 1) / W: the first update gets lr / W, the last warmup update the
      full lr;
    * W <= k < C: r(k);
    * C <= k < E: r(k) * (E - k) / (E - C): the rsqrt decay goes on under the linear ramp.

    Both are 1 at k = W, continuous at C, and 0 from E on.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
    warmup = config.warmup_epochs * steps_per_epoch
    timescale = config.rsqrt_timescale_epochs * steps_per_epoch
    cooldown = config.cooldown_start_epoch * steps_per_epoch
    end = config.epochs * steps_per_epoch
    reference = config.schedule == "reference"

    def rsqrt(k: float) -> float:
        return 1.0 / math.sqrt(1.0 + (k - warmup) / timescale)

    if step >= end:
        return 0.0
    if step < warmup:
        return step / warmup if reference else min(1.0, (step + 1) / warmup)
    if step < cooldown:
        return rsqrt(step)
    ramp = (end - step) / (end - cooldown)  # C <= step < E
    return (rsqrt(cooldown) if reference else rsqrt(step)) * ramp


def build_optimizer(
    model: torch.nn.Module, config: DistillConfig, steps_per_epoch: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over all trainable parameters and its per-step LambdaLR schedule.

    Call `scheduler.step()` after each `optimizer.step()`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, config))
    return optimizer, scheduler
