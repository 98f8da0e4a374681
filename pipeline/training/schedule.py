"""The optimiser and learning-rate schedule of ScaLR+ distillation.

* Schedule: linear warmup for `warmup_epochs`, then reciprocal-square-root decay with a
  timescale of `rsqrt_timescale_epochs`, multiplied from the cooldown start
  (`DistillConfig.cooldown_start_epoch`: `cooldown_epochs` before the end) by a linear ramp
  that reaches 0 at the end of training (the big_vision "rsqrt" schedule with cooldown that
  ScaLR uses).
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

    * warmup, step < W: (step + 1) / W. The first update gets a small positive lr
      (lr / W), not 0, so no step is wasted; the last warmup update gets the full lr.
    * then 1 / sqrt(1 + (step - W) / T): 1 at step W, so the curve is continuous at its
      maximum, and decreasing after;
    * from the cooldown start C on, also times (E - step) / (E - C): linear to 0 at the
      end E = epochs * steps_per_epoch (the factor is 0 at step E and beyond).

    W, T, C are the epoch settings times steps_per_epoch (not rounded).
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
    warmup = config.warmup_epochs * steps_per_epoch
    timescale = config.rsqrt_timescale_epochs * steps_per_epoch
    cooldown = config.cooldown_start_epoch * steps_per_epoch
    end = config.epochs * steps_per_epoch
    if step >= end:
        return 0.0
    if step < warmup:
        factor = min(1.0, (step + 1) / warmup)
    else:
        factor = 1.0 / math.sqrt(1.0 + (step - warmup) / timescale)
    if step >= cooldown and end > cooldown:
        factor *= (end - step) / (end - cooldown)
    return factor


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
