"""safetensors files with byte-identical output for identical inputs.

`save_safetensors` / `load_safetensors`: tensors (numpy arrays or torch tensors) plus a
str -> str metadata dict, written atomically (`pipeline.store.atomic`). The safetensors
library writes metadata in random order; `safetensors_bytes` rewrites the header in sorted
order. No pickle anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save as _save_numpy
from safetensors.torch import save as _save_torch

from pipeline.store.atomic import atomic_output


def _metadata_strings(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """str values as they are; anything else JSON-encoded (sorted keys, compact)."""
    out = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"safetensors metadata keys must be str, got {key!r}")
        out[key] = value if isinstance(value, str) else json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return out


def safetensors_bytes(
    tensors: Mapping[str, np.ndarray | torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> bytes:
    """Serialise to safetensors with a deterministic header.

    The library lays out the tensors deterministically but stores metadata in a hash map
    (random order per call), so the metadata is added here, sorted, by rewriting the
    header: 8-byte little-endian header length, JSON header padded with spaces to a
    multiple of 8, then the tensor bytes unchanged (their offsets are relative to the
    end of the header).
    """
    if any(isinstance(v, torch.Tensor) for v in tensors.values()):
        as_torch = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)))
                    for k, v in tensors.items()}
        raw = _save_torch({k: v.detach().cpu().contiguous() for k, v in as_torch.items()})
    else:
        raw = _save_numpy({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0]))
    ordered = {"__metadata__": dict(sorted(_metadata_strings(metadata).items()))}
    ordered.update(entries)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + length:]


def save_safetensors(
    path: str | Path,
    tensors: Mapping[str, np.ndarray | torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    scratch: str | Path | None = None,
) -> None:
    """Write tensors (numpy arrays or torch tensors) and metadata atomically (through `scratch`,
    see `pipeline.store.atomic`).

    Metadata values that are not str are JSON-encoded; decode them with json.loads.
    """
    data = safetensors_bytes(tensors, metadata)
    with atomic_output(path, scratch) as tmp:
        tmp.write_bytes(data)


def load_safetensors(
    path: str | Path, framework: str = "numpy"
) -> tuple[dict[str, np.ndarray | torch.Tensor], dict[str, str]]:
    """Read (tensors, metadata). framework: "numpy" or "torch" (CPU tensors)."""
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
    with safe_open(str(path), framework="np" if framework == "numpy" else "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = dict(handle.metadata() or {})
    return tensors, metadata


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """Only the metadata dict of a safetensors file (reads the header, not the tensors)."""
    with safe_open(str(path), framework="np") as handle:
        return dict(handle.metadata() or {})
