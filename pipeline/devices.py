"""Choosing the torch device: code runs on the CPU and uses CUDA when present."""

from __future__ import annotations

from typing import Literal

import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]


def resolve_device(choice: DeviceChoice | str, setting: str = "device") -> torch.device:
    """"auto" -> CUDA when torch sees it, else CPU; "cuda" without CUDA is an error naming `setting`."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"{setting} must be auto, cpu or cuda, got {choice!r}")
    return torch.device(choice)
