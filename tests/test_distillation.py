"""Distillation loss and learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.training.config import DistillConfig
from pipeline.training.objective import normalized_l2_loss
from pipeline.training.schedule import build_optimizer, lr_factor


def test_loss_is_zero_for_identical_directions_with_finite_gradient():
    teacher = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    scaled = (teacher * (torch.rand(10, 1) * 5 + 0.5)).requires_grad_(True)
    assert normalized_l2_loss(scaled, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_l2_loss(scaled, teacher.half()).item() == pytest.approx(0.0, abs=1e-3)
    same = teacher.clone().requires_grad_(True)
    loss = normalized_l2_loss(same, teacher)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(same.grad).all()


def test_loss_is_a_monotone_function_of_cosine():
    angles = torch.linspace(0, math.pi, 9)
    teacher = torch.tensor([[1.0, 0.0, 0.0]]).repeat(9, 1)
    student = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(9)], dim=1) * 3.0
    losses = [normalized_l2_loss(student[i:i + 1], teacher[i:i + 1]).item() for i in range(9)]
    assert all(a < b for a, b in zip(losses, losses[1:]))
    expected = torch.sqrt(2 - 2 * torch.cos(angles))
    np.testing.assert_allclose(losses, expected.numpy(), atol=1e-6)
    # The mean over pairs.
    assert normalized_l2_loss(student, teacher).item() == pytest.approx(expected.mean().item(), abs=1e-6)


def test_shifted_schedule_key_points():
    config = DistillConfig(schedule="shifted")  # 65 epochs, warmup 1, timescale 0.45, cooldown from 63
    spe = 100
    factors = [lr_factor(s, spe, config) for s in range(65 * spe + 1)]
    assert factors[0] == pytest.approx(1 / 100)  # small positive first update
    assert factors[99] == 1.0 and factors[100] == 1.0  # max at the end of the warmup
    assert max(factors) == 1.0
    assert all(a < b for a, b in zip(factors[:100], factors[1:100]))  # warmup increases
    assert all(a > b for a, b in zip(factors[100:], factors[101:]))  # then decreases
    # rsqrt decay: after one timescale (45 steps) the factor is 1/sqrt(2).
    assert factors[145] == pytest.approx(1 / math.sqrt(2))
    # Continuous at the cooldown start, 0 at the end.
    rsqrt_at = lambda s: 1 / math.sqrt(1 + (s - 100) / 45)  # noqa: E731
    assert factors[6300] == pytest.approx(rsqrt_at(6300))
    assert factors[6400] == pytest.approx(rsqrt_at(6400) * 100 / 200)
    assert factors[6500] == 0.0 and lr_factor(10**6, spe, config) == 0.0


def test_schedule_without_warmup_or_cooldown():
    for schedule in ("reference", "shifted"):
        config = DistillConfig(epochs=2, warmup_epochs=0, cooldown_epochs=0, schedule=schedule)
        assert lr_factor(0, 10, config) == 1.0
        assert lr_factor(19, 10, config) == pytest.approx(1 / math.sqrt(1 + 19 / 4.5))
    with pytest.raises(ValueError, match="cooldown_epochs"):
        DistillConfig(epochs=5, cooldown_epochs=-1)


def test_build_optimizer_applies_the_schedule():
    model = torch.nn.Linear(4, 3)
    config = DistillConfig(epochs=3, warmup_epochs=1, cooldown_epochs=1)
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch=4)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 0.03
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(seen, [0.002 * lr_factor(s, 4, config) for s in range(12)])
    assert optimizer.param_groups[0]["lr"] == 0.0


def test_cooldown_starts_cooldown_epochs_before_the_end_but_never_inside_the_warmup():
    assert DistillConfig(epochs=65, cooldown_epochs=2).cooldown_start_epoch == 63
    assert DistillConfig(epochs=1, warmup_epochs=1.0, cooldown_epochs=2).cooldown_start_epoch == 1.0
    with pytest.raises(ValueError, match="warmup_epochs"):
        DistillConfig(epochs=2, warmup_epochs=3)
