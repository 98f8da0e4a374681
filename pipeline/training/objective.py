"""The objective of ScaLR+ distillation: the normalised L2 loss (REFERENCE "Distillation").

For each point paired with a teacher feature, the L2 distance between the L2-normalised
student output and the L2-normalised teacher feature, averaged over pairs. For unit vectors
||s - t|| = sqrt(2 - 2 cos(s, t)), so the loss is a monotone function of the cosine distance.

With several teachers the student has one head per teacher (`multi_head_loss`): the loss is
the weighted sum of each head's loss against its own teacher (`distill.teacher_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def multi_head_loss(student: torch.Tensor, teacher: torch.Tensor, heads: Sequence[tuple[int, float]]) -> torch.Tensor:
    """The loss of a student with one head per teacher: sum_t weight_t * `normalized_l2_loss` of
    head t, the heads being consecutive column blocks of (P, sum of widths) features.

    heads: (width, weight) of each teacher, in column order. One head of weight 1 is exactly
    `normalized_l2_loss`.
    """
    if sum(width for width, _ in heads) != student.shape[-1]:
        raise ValueError(f"heads of widths {[w for w, _ in heads]} do not add up to the {student.shape[-1]} "
                         "student channels")
    if len(heads) == 1 and heads[0][1] == 1.0:
        return normalized_l2_loss(student, teacher)
    total, start = None, 0
    for width, weight in heads:
        term = weight * normalized_l2_loss(student[:, start:start + width], teacher[:, start:start + width])
        total = term if total is None else total + term
        start += width
    return total
