"""Compatibility shim: let the CUDA build of torchvision import on a CPU-only torch.

torchvision 0.28.0 is the only release that fits torch 2.13, and it is a CUDA build. On a
CPU-only torch its Python module registers fake kernels for `torchvision::nms` and
`torchvision::qnms` without their C++ schemas being loaded, so `import torchvision` fails
with "operator torchvision::nms does not exist". timm and the transformers image processors
import torchvision, so the whole 2D stack would be unusable.

Defining the two schemas first is enough: the import succeeds, and torchvision's C++ ops
raise if ever called (nothing in this pipeline calls them). The shim is active only when
torch has no CUDA and torchvision has not been imported yet; on a CUDA torch it does nothing.
"""

from __future__ import annotations

import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# Kept alive for the process: dropping the Library object would unregister the schemas.
_torchvision_fragment: torch.library.Library | None = None


def install_torchvision_schemas() -> bool:
    """Register the missing torchvision op schemas; returns True when the shim was applied."""
    global _torchvision_fragment
    if torch.version.cuda is not None or "torchvision" in sys.modules or _torchvision_fragment:
        return False
    try:
        fragment = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            fragment.define(schema)
    except RuntimeError:
        # A torchvision build with working CPU ops already registered them.
        return False
    _torchvision_fragment = fragment
    return True
