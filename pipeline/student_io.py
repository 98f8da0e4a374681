"""The student artifact: `model.safetensors` (weights) + `config.json` (architecture).

Weights are safetensors, never pickle; the architecture is the JSON of `WaffleIronConfig`,
so the student can be rebuilt without the params that trained it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.store import load_safetensors, save_safetensors
from pipeline.students.waffleiron import WaffleIron, WaffleIronConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_student(folder: Path, model: WaffleIron, metadata: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_safetensors(folder / WEIGHTS_FILE, state, metadata)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")


def load_student(folder: Path, device: torch.device | str = "cpu") -> tuple[WaffleIron, dict[str, str]]:
    """Rebuild the student from its folder; returns (model in eval mode, weights metadata)."""
    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: student file is missing (run the distill stage)")
    config = WaffleIronConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    model = WaffleIron(config)
    state, metadata = load_safetensors(folder / WEIGHTS_FILE, framework="torch")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), metadata
