"""The student artifact: `model.safetensors` (weights) + `config.json` (architecture).

Weights are safetensors, never pickle. config.json names the architecture and holds its
config, `{"arch": <a key of ARCHITECTURES>, "config": {...}}`, so the student can be rebuilt
without the params that trained it. A released ScaLR / ScaLR+ checkpoint becomes such a
folder through `load_scalr_student` + `save_student` (`python -m stages.convert_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.store.safetensors import load_safetensors, read_safetensors_metadata, save_safetensors
from pipeline.students import ARCHITECTURES, ArchitectureConfig, Student
from pipeline.students.waffleiron import (
    WaffleIron,
    WaffleIronConfig,
    load_scalr_checkpoint,
)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_student(folder: Path, model: Student, metadata: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_safetensors(folder / WEIGHTS_FILE, state, metadata)
    description = {"arch": model.config.arch, "config": model.config.to_dict()}
    (folder / CONFIG_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def read_student_config(path: Path) -> ArchitectureConfig:
    """The architecture recorded in a student's config.json; errors name the file."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if "arch" not in data:  # written before students had several architectures: a bare WaffleIronConfig
        data = {"arch": WaffleIronConfig.arch, "config": data}
    if data["arch"] not in ARCHITECTURES:
        expected = " or ".join(map(repr, ARCHITECTURES))
        raise ValueError(f"{path}: unknown student arch {data['arch']!r}; expected {expected}")
    try:
        return ARCHITECTURES[data["arch"]].from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a valid {data['arch']} student config: {error}") from None


def load_student(folder: Path, device: torch.device | str = "cpu") -> tuple[Student, dict[str, str]]:
    """Rebuild the student from its folder; returns (model in eval mode, weights metadata)."""
    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: student file is missing (run the distill stage)")
    model = read_student_config(folder / CONFIG_FILE).build()
    state, metadata = load_safetensors(folder / WEIGHTS_FILE, framework="torch")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), metadata


def student_heads(folder: Path) -> list[dict] | None:
    """The heads of a student distilled from several teachers, as its weights' metadata records
    them (`name`, `dim`, `weight` of each, in output column order); None for one teacher."""
    metadata = read_safetensors_metadata(Path(folder) / WEIGHTS_FILE)
    return json.loads(metadata["heads"]) if "heads" in metadata else None


def load_scalr_student(
    checkpoint: str | Path, config: WaffleIronConfig, allow_unsafe_pickle: bool = False
) -> tuple[WaffleIron, dict[str, str]]:
    """A WaffleIron of `config` with the weights of a ScaLR / ScaLR+ `ckpt_last.pth`, in eval mode.

    Loaded strictly (`waffleiron.load_scalr_checkpoint`: weights_only, `module.` stripped, every
    key and shape must match `config`). Returns (model, metadata for `save_student`).
    """
    model = WaffleIron(config)
    epoch = load_scalr_checkpoint(checkpoint, model, allow_unsafe_pickle=allow_unsafe_pickle)
    metadata = {"source": f"ScaLR checkpoint {Path(checkpoint).name}", "epoch": "" if epoch is None else str(epoch)}
    return model.eval(), metadata
