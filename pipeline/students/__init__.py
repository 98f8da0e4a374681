"""3D point networks distilled from the 2D teacher (the "students"), behind one small interface.

Two architectures, chosen by `StudentParams.arch` (the `student:` section of params.yaml):

- `waffleiron`: WaffleIron as ScaLR+ builds it (loads released ScaLR / ScaLR+ checkpoints);
  `point_inputs` turns a raw scan into its inputs (voxels, kNN, grid cells).
- `sparse_unet`: a MinkUNet-style sparse conv UNet (spconv, imported only when built).

Code that trains or runs a student never asks which one it has. It needs three things:

    model = build_student(params.student.config)
    scan = prepare_input(model.config, points, stats, augmentation=..., rng=...)
    outputs = run_student(model, [scan, ...], device)     # one (n_kept, D) tensor per scan

Every prepared scan knows `point_index` (the original points the network sees, in output
order: use it to pick targets) and `back_projection` (for every original point, the row of
the output it takes: `outputs[0][scan.back_projection]` covers the whole scan).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from pipeline.students.point_inputs import (
    Augmentation,
    IntensityStats,
    PreparedScan,
    collate,
    prepare_scan,
)
from pipeline.students.sparse_unet import (
    SparseUNet,
    SparseUNetConfig,
    VoxelScan,
    collate_voxels,
    prepare_voxels,
)
from pipeline.students.inference import InferenceWaffleIron
from pipeline.students.waffleiron import WaffleIron, WaffleIronConfig

StudentArch = Literal["waffleiron", "sparse_unet"]
StudentConfig = WaffleIronConfig | SparseUNetConfig
Student = WaffleIron | SparseUNet
InferenceStudent = Student | InferenceWaffleIron  # what `run_student` runs
PreparedInput = PreparedScan | VoxelScan


@dataclass(frozen=True)
class StudentParams:
    """The `student:` params section: which architecture, and the settings of each.

    Only the sub-config named by `arch` is used; the other is kept so switching back and
    forth is one word. Defaults: the ScaLR+ release (WaffleIron 768 x 48) and MinkUNet18A.
    """

    arch: StudentArch = "waffleiron"
    waffleiron: WaffleIronConfig = field(default_factory=WaffleIronConfig)
    sparse_unet: SparseUNetConfig = field(default_factory=SparseUNetConfig)

    @property
    def config(self) -> StudentConfig:
        """The settings of the chosen architecture."""
        return self.waffleiron if self.arch == "waffleiron" else self.sparse_unet

    @property
    def out_channels(self) -> int:
        """The chosen student's output width (the teacher's feature width)."""
        return self.config.out_channels


def student_arch(config: StudentConfig) -> StudentArch:
    """The architecture a config describes (recorded in the student's config.json)."""
    if isinstance(config, WaffleIronConfig):
        return "waffleiron"
    if isinstance(config, SparseUNetConfig):
        return "sparse_unet"
    raise TypeError(f"not a student config: {type(config).__name__}")


def build_student(config: StudentConfig) -> Student:
    """A freshly initialised student of the architecture `config` describes."""
    if isinstance(config, WaffleIronConfig):
        return WaffleIron(config)
    if isinstance(config, SparseUNetConfig):
        return SparseUNet(config)
    raise TypeError(f"not a student config: {type(config).__name__}")


def prepare_input(
    config: StudentConfig,
    points: np.ndarray,
    intensity_stats: IntensityStats,
    *,
    augmentation: Augmentation | None = None,
    rng: np.random.Generator | None = None,
) -> PreparedInput:
    """One raw scan (M, >=4: x, y, z, intensity) -> the inputs of the student `config` describes.

    Without `augmentation`: the deterministic inference pre-processing. With it (and an
    explicit `rng`): the training augmentations (random voxel representative, rotation,
    flips, scaling, subsample to `augmentation.max_points`).
    """
    if isinstance(config, WaffleIronConfig):
        return prepare_scan(points, config, intensity_stats, augmentation=augmentation, rng=rng)
    if isinstance(config, SparseUNetConfig):
        return prepare_voxels(points, config, intensity_stats, augmentation=augmentation, rng=rng)
    raise TypeError(f"not a student config: {type(config).__name__}")


def run_student(model: InferenceStudent, scans: Sequence[PreparedInput], device: torch.device) -> list[torch.Tensor]:
    """Run the student on prepared scans as one batch: one (n_kept, out_channels) tensor per scan.

    Gradients flow when grad mode is on; wrap in `torch.inference_mode()` to predict. A
    WaffleIron may come as its folded inference build (`students.inference`), which takes the
    same inputs.
    """
    if isinstance(model, WaffleIron | InferenceWaffleIron):
        batch = collate(scans).to(device)
        return batch.unpad(model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy))
    if isinstance(model, SparseUNet):
        batch = collate_voxels(scans).to(device)
        return batch.split(model(batch.features, batch.coordinates, len(scans)))
    raise TypeError(f"not a student: {type(model).__name__}")


__all__ = [
    "InferenceStudent",
    "PreparedInput",
    "Student",
    "StudentArch",
    "StudentConfig",
    "StudentParams",
    "build_student",
    "prepare_input",
    "run_student",
    "student_arch",
]
