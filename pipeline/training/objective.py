"""The objective of ScaLR+ distillation: the normalised L2 loss (REFERENCE "Distillation").

For each point paired with a teacher feature, the L2 distance between the L2-normalised
student output and the L2-normalised teacher feature, averaged over pairs. For unit vectors
||s - t|| = sqrt(2 - 2 cos(s, t)), so the loss is a monotone function of the cosine distance.
"""

from __future__ import annotations

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
