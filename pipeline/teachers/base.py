"""What every 2D teacher offers the pipeline, and the params sections of the stages that run one.

IGLOSS uses one frozen teacher for two jobs, and both must see exactly the same network:

* **camera images**: each image becomes a (D, h, w) map of patch features
  (`Teacher.patch_features`), from which each lidar point takes its target
  (`pipeline.teachers.upsampling`);
* **templates**: each prototype image becomes one vector (`Teacher.encode_templates`,
  REFERENCE "Template (prototype) features").

Stages and pipeline code hold a `Teacher` (this protocol) and never ask which kind it is;
`pipeline.teachers.build_teacher` is the one place that chooses the implementation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from pipeline.config_loading import require
from pipeline.teachers.images import ImageLike


class TeacherError(RuntimeError):
    """The teacher cannot be built. The message names the model and, where relevant, the file."""


class Teacher(Protocol):
    """A frozen image encoder giving patch features, and one vector per template image.

    Its input geometry: camera images are resized to `input_size` and templates to
    `template_size` (H, W), both multiples of `patch_size`; features have `embed_dim`
    channels. `teacher_id` identifies the features it produces (artifact metadata), so a
    cache made by another teacher is recognised.
    """

    @property
    def teacher_id(self) -> str: ...

    @property
    def input_size(self) -> tuple[int, int]: ...

    @property
    def template_size(self) -> tuple[int, int]: ...

    @property
    def patch_size(self) -> int: ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) patch grid of a camera image at the input size."""
        ...

    def load_image(self, source: ImageLike, expected_size: tuple[int, int] | None = None) -> torch.Tensor:
        """A camera image resized to the input size: (3, H, W) float32 in [0, 1]. expected_size:
        the (H, W) its calibration is for; an image of another size is an error naming it."""
        ...

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float images in [0, 1] -> (B, embed_dim, H / patch, W / patch) float32."""
        ...

    def encode_templates(self, images: Sequence[ImageLike], batch_size: int = 8) -> np.ndarray:
        """One vector per template image: (M, embed_dim) float32."""
        ...


@dataclass(frozen=True)
class TemplateFeaturesConfig:
    """The `template_features` stage: prototype images the teacher encodes per batch."""

    batch_size: int = 8

    def __post_init__(self) -> None:
        require(self, positive=("batch_size",))


@dataclass(frozen=True)
class TeacherFeaturesConfig:
    """The `teacher_features` stage (and `extra_teacher_features`): camera images the teacher
    encodes per batch, and how the patch features are stored (`pipeline.teachers.patch_encoding`):
    fp16 (lossless for the fp16 targets) or int8 (one int8 per channel and a float32 scale per
    patch, max|x| / 127: about half the bytes, the error at most half a step)."""

    batch_size: int = 6
    encoding: Literal["fp16", "int8"] = "fp16"

    def __post_init__(self) -> None:
        require(self, positive=("batch_size",))


def file_sha256(path: str | Path, length: int = 16) -> str:
    """Hex SHA-256 of a file (first `length` characters), read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
