"""Training precision and activation memory: mixed precision and gradient checkpointing.

* `fp32`: plain float32, the default and the reference.
* `bf16`: the forward pass under `torch.autocast` with bfloat16 (CPU or CUDA). bfloat16
  keeps float32's exponent range, so gradients need no scaling.
* `fp16`: autocast with float16 and a `torch.amp.GradScaler`, which scales the loss so
  small gradients do not underflow and skips a step whose gradients overflowed. CUDA
  only: float16 autocast on the CPU is slow and unsupported by many kernels.

Weights, optimiser state and the loss (`normalized_l2_loss` computes in float32) stay
float32 in every mode.

Gradient checkpointing keeps only block inputs in the forward pass and recomputes the
rest in the backward pass: less memory for about a third more compute. A student supports
it through a boolean `checkpointing` attribute on its block stacks (WaffleIron's backbone).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, setting: str = "precision") -> None:
    """Raise ValueError naming `setting` for a precision this device cannot train in."""
    if precision not in ("fp32", *_DTYPES):
        raise ValueError(f"{setting} must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"{setting} is fp16, which needs CUDA (a GradScaler); this run trains on "
                         f"{device.type}: use bf16 or fp32")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context to run the forward pass in: autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16, None otherwise (fp32 and bf16 need no loss scaling)."""
    check_precision(precision, device)
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Switch on activation recomputation in every block stack of `model` that offers it."""
    stacks = [m for m in model.modules() if isinstance(getattr(m, "checkpointing", None), bool)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no block stack with a `checkpointing` switch; "
                         "train it without gradient checkpointing")
    for stack in stacks:
        stack.checkpointing = True
