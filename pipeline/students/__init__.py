"""3D point networks distilled from the 2D teacher (the "students"), behind one small contract.

The architectures, one module (or package) each, listed in `ARCHITECTURES`:

- `waffleiron`: WaffleIron as ScaLR+ builds it (loads released ScaLR / ScaLR+ checkpoints);
- `sparse_unet`: a MinkUNet-style sparse conv UNet (spconv, imported only when built).

`StudentConfig` is the `student:` params section: `arch` names the architecture, and one
sub-section per architecture holds its config. Code that trains or runs a student never asks
which one it has; every architecture keeps the contract below (`ArchitectureConfig`,
`Student`):

    config = params.student.config                         # the chosen architecture's config
    model = config.build()
    scan = config.prepare(points, stats, augmentation=..., rng=...)
    outputs = model.run_batch([scan, ...], device)         # one (n_kept, D) tensor per scan
    fast = model.for_inference(precision)                  # runs batches too, for prediction

Every prepared scan knows `point_index` (the original points the network sees, in output
order: use it to pick targets) and `back_projection` (for every original point, the row of
the output it takes: `outputs[0][scan.back_projection]` covers the whole scan).

Beside them: `inputs` (the pre-processing steps the students share), `io` (the student folder:
weights + config.json) and `features` (the student's feature of every point of a split).

A new architecture is its module, one entry in `ARCHITECTURES`, one field of `StudentConfig`
named as its `arch`, and its sub-section in params.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import numpy as np
import torch

from pipeline.datasets.base import IntensityStats
from pipeline.students.inputs import Augmentation
from pipeline.students.sparse_unet import SparseUNetConfig
from pipeline.students.waffleiron import WaffleIronConfig


class PreparedInput(Protocol):
    """One scan prepared for a student; besides what its network reads, callers use these."""

    point_index: np.ndarray  # int64 (n_kept,): the original index of each point, in output order
    back_projection: np.ndarray  # int64 (M,): for every original point, the output row it takes

    @property
    def num_points(self) -> int: ...


class InferenceStudent(Protocol):
    """What runs prepared scans: a student, or its inference build (`Student.for_inference`)."""

    config: ArchitectureConfig

    def run_batch(self, scans: Sequence[PreparedInput], device: torch.device) -> list[torch.Tensor]:
        """The scans as one batch: one (n_kept, out_channels) tensor per scan. Gradients flow
        when grad mode is on; wrap in `torch.inference_mode()` to predict."""
        ...


class Student(InferenceStudent, Protocol):
    """A student model: an `nn.Module` (trained, saved and loaded through its state_dict)."""

    def for_inference(self, precision: Literal["auto", "fp32", "bf16"]) -> InferenceStudent:
        """The fastest equivalent for prediction (a new model, or this one where there is none)."""
        ...


class ArchitectureConfig(Protocol):
    """The settings of one architecture: a frozen dataclass, its `student.<arch>` params
    sub-section and the `config` of a student's config.json."""

    arch: ClassVar[str]  # its key in ARCHITECTURES, params.yaml and config.json
    out_channels: int

    def build(self) -> Student:
        """A freshly initialised model of this config."""
        ...

    def prepare(
        self,
        points: np.ndarray,
        intensity_stats: IntensityStats,
        augmentation: Augmentation | None = None,
        rng: np.random.Generator | None = None,
    ) -> PreparedInput:
        """One raw scan (M, >=4: x, y, z, intensity) -> this model's inputs.

        Without `augmentation`: the deterministic inference pre-processing. With it (and an
        explicit `rng`): the training augmentations (random voxel representative, rotation,
        flips, scaling, cut to `augmentation.max_points` by `augmentation.cap`).
        """
        ...

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, values: Mapping) -> ArchitectureConfig: ...


ARCHITECTURES: dict[str, type[ArchitectureConfig]] = {
    WaffleIronConfig.arch: WaffleIronConfig,
    SparseUNetConfig.arch: SparseUNetConfig,
}

# The names of the table, as the Literal that params validation checks `student.arch` against.
StudentArch = Literal[tuple(ARCHITECTURES)]


@dataclass(frozen=True)
class StudentConfig:
    """The `student:` params section: which architecture, and the settings of each.

    One field per entry of `ARCHITECTURES`, named as its arch. Only the sub-config named by
    `arch` is used; the others are kept so switching back and forth is one word. Defaults:
    the ScaLR+ release (WaffleIron 768 x 48) and MinkUNet18A.
    """

    arch: StudentArch = "waffleiron"
    waffleiron: WaffleIronConfig = field(default_factory=WaffleIronConfig)
    sparse_unet: SparseUNetConfig = field(default_factory=SparseUNetConfig)

    @property
    def config(self) -> ArchitectureConfig:
        """The settings of the chosen architecture."""
        return getattr(self, self.arch)

    @property
    def out_channels(self) -> int:
        """The chosen student's output width (the teacher's feature width)."""
        return self.config.out_channels


__all__ = [
    "ARCHITECTURES",
    "ArchitectureConfig",
    "InferenceStudent",
    "PreparedInput",
    "Student",
    "StudentArch",
    "StudentConfig",
]
