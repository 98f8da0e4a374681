"""The math of ScaLR+ distillation: the loss, the learning-rate schedule, the optimiser.

* Loss (REFERENCE "Distillation"): for each point paired with a teacher feature, the
  L2 distance between the L2-normalised student output and the L2-normalised teacher
  feature, averaged over pairs. For unit vectors ||s - t|| = sqrt(2 - 2 cos(s, t)), so
  the loss is a monotone function of the cosine distance.
* Schedule: linear warmup for `warmup_epochs`, then reciprocal-square-root decay with a
  timescale of `rsqrt_timescale_epochs`, multiplied from `cooldown_start_epoch` by a
  linear ramp that reaches 0 at the end of training (the big_vision "rsqrt" schedule
  with cooldown that ScaLR uses).
* Optimiser: AdamW (lr 0.002, weight decay 0.03 on every parameter) with the schedule
  as a `LambdaLR`, stepped once per optimiser step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def normalized_l2_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """mean_p || s_p / |s_p| - t_p / |t_p| || over P pairs of (P, D) features.

    Computed in float32 whatever the input dtypes (teacher features are stored fp16),
    so the loss is stable under autocast.
    """
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(f"student and teacher must both be (P, D), got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    s = F.normalize(student.float(), dim=1, eps=eps)
    t = F.normalize(teacher.float(), dim=1, eps=eps)
    return (s - t).norm(dim=1).mean()


@dataclass(frozen=True)
class ScheduleConfig:
    """Optimiser and learning-rate schedule of the distillation (ScaLR+ defaults)."""

    epochs: int = 65
    warmup_epochs: float = 1.0
    rsqrt_timescale_epochs: float = 0.45
    cooldown_start_epoch: float = 63.0
    lr: float = 0.002
    weight_decay: float = 0.03

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0 <= self.warmup_epochs <= self.cooldown_start_epoch <= self.epochs:
            raise ValueError(
                "need 0 <= warmup_epochs <= cooldown_start_epoch <= epochs, got "
                f"{self.warmup_epochs}, {self.cooldown_start_epoch}, {self.epochs}")
        if self.rsqrt_timescale_epochs <= 0:
            raise ValueError(f"rsqrt_timescale_epochs must be > 0, got {self.rsqrt_timescale_epochs}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


def lr_factor(step: int, steps_per_epoch: int, config: ScheduleConfig) -> float:
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
    model: torch.nn.Module, config: ScheduleConfig, steps_per_epoch: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over all trainable parameters and its per-step LambdaLR schedule.

    Call `scheduler.step()` after each `optimizer.step()`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, config))
    return optimizer, scheduler
