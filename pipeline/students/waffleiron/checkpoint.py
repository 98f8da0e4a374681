"""Released ScaLR / ScaLR+ checkpoints (`ckpt_last.pth`): read safely, filtered, loaded strictly.

`load_scalr_checkpoint` reads the `model_point` weights with `torch.load(weights_only=True)`,
strips the `module.` prefix of DistributedDataParallel (`strip_module_prefix`) and loads
them into a `model.WaffleIron`, whose module names match ScaLR's; every missing, unexpected
or mis-shaped key stops with a `CheckpointError` naming the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the leading `module.` that DistributedDataParallel adds to every key."""
    stripped = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if len(stripped) != len(state_dict):
        raise ValueError("state_dict has both `module.<key>` and `<key>` for some key")
    return stripped


def _list_keys(keys: set[str], limit: int = 20) -> str:
    shown = sorted(keys)[:limit]
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(shown) + more


# How a torch.save file begins: a zip archive (torch >= 1.6), or the legacy format's pickled
# magic number (protocol 2+: PROTO n, LONG1 of 10 bytes, then the number).
_ZIP_SIGNATURE = b"PK\x03\x04"
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _not_a_checkpoint(path: Path) -> str | None:
    """Why `path` cannot be a torch.save file, judged from its first bytes; None when it may be."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        return "the file is empty"
    if head.startswith(_ZIP_SIGNATURE):
        return None
    if head[:1] == b"\x80" and head[2:4] == b"\x8a\x0a" and head[4:14] == _LEGACY_MAGIC:
        return None
    return (f"neither the zip archive nor the legacy file torch.save writes: its {path.stat().st_size} bytes "
            f"begin {head[:8]!r}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _damage(error: BaseException) -> str:
    """What torch.load said of a damaged file, without its advice on weights_only."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported operand" in line:
            return line
    said = [line for line in lines if "weights_only" not in line and "WeightsUnpickler" not in line]
    first = said[0] if said else (lines[0] if lines else "no message")
    return first.split(". ")[0].rstrip(".")  # torch's first sentence; the rest is advice


def load_scalr_checkpoint(path: str | Path, model: nn.Module, allow_unsafe_pickle: bool = False) -> int | None:
    """Load the `model_point` weights of a ScaLR / ScaLR+ `ckpt_last.pth` into `model`, strictly.

    The file is a torch pickle of {epoch, model_point, optim, scheduler, scaler}. It is read
    with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers.
    A file needing full unpickling (which can run arbitrary code) is refused unless
    `allow_unsafe_pickle=True`. A `module.` prefix (DDP) is stripped. Any missing or
    unexpected key, or any shape mismatch, raises `CheckpointError` listing them and the path.
    Returns the epoch recorded in the file (None if absent).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    reason = _not_a_checkpoint(path)
    if reason is not None:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({reason})")
    try:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "Unsupported operand" in str(error):  # not a pickle opcode: damaged, not unsafe
                raise
            if not allow_unsafe_pickle:
                raise CheckpointError(
                    f"{path}: torch.load(weights_only=True) refuses this file ({_first_line(error)}). Full "
                    "unpickling can run arbitrary code; pass allow_unsafe_pickle=True only for a file you trust."
                ) from error
            payload = torch.load(path, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as error:  # a truncated archive, a damaged pickle: EOFError, RuntimeError, ...
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a damaged one "
                              f"({type(error).__name__}: {_damage(error)})") from error

    if not isinstance(payload, Mapping) or "model_point" not in payload:
        found = sorted(payload)[:10] if isinstance(payload, Mapping) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a ScaLR checkpoint dict with key 'model_point', found {found}")
    state = strip_module_prefix(payload["model_point"])

    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{path}: model_point does not match the model."]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_list_keys(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}")
        if mismatched:
            more = f" ... (+{len(mismatched) - 20} more)" if len(mismatched) > 20 else ""
            lines.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched[:20]) + more)
        lines.append("Check width, depth, grids and head of the WaffleIronConfig against the checkpoint.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    epoch = payload.get("epoch")
    return int(epoch) if epoch is not None else None


__all__ = ["CheckpointError", "load_scalr_checkpoint", "strip_module_prefix"]
