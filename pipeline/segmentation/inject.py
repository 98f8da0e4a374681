"""DITR's injection: the frozen teacher features of each point's camera enter the network
(seed 003, DITR).

- `InjectedSparseUNet`: each voxel of the input takes the max over the teacher features of its
  points that a camera sees (zero where none does); each decoder stage max-pools these into its
  own, coarser voxels and adds them to its features through linear + BatchNorm + GELU.
- `InjectedWaffleIron`: WaffleIron has no decoder; each kept point takes the max over the
  teacher features of the points it stands for, added the same way after a few evenly spaced
  blocks (`injected_blocks`).

The network's head is the classifier. At test time the teacher features are injected too: a
point no camera sees gets zeros, as in training wherever no camera saw. `build_injected` picks
the network for a student architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.segmentation.data import SegmentationScan
from pipeline.segmentation.models import Prepared
from pipeline.students import ArchitectureConfig
from pipeline.students.inputs import Augmentation
from pipeline.students.sparse_unet import SparseUNet, SparseUNetConfig, collate_voxels, prepare_voxels
from pipeline.students.waffleiron import WaffleIron, WaffleIronConfig
from pipeline.students.waffleiron.inputs import collate


def pooled_teacher(scan: SegmentationScan, back_projection: np.ndarray, count: int) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """(count, Dt) the max teacher feature over the visible points each kept row stands for
    (zeros where none is visible), and (count,) bool: some visible point pooled into it."""
    if scan.teacher is None or scan.visible is None:
        raise ValueError(f"scan {scan.scan_id}: injection needs the teacher features of its points")
    rows = torch.from_numpy(back_projection[scan.visible])
    seen = torch.zeros(count, dtype=torch.bool)
    seen[rows] = True
    return max_pool_rows(torch.from_numpy(scan.teacher[scan.visible]), rows, count), seen


def injection(teacher_dim: int, width: int) -> nn.Sequential:
    """DITR's projection of the teacher features into a stage: linear + BatchNorm + GELU."""
    return nn.Sequential(nn.Linear(teacher_dim, width), nn.BatchNorm1d(width), nn.GELU())


def max_pool_rows(values: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """(count, D): row r is the max of the `values` rows whose `rows` entry is r; zeros where none is."""
    pooled = values.new_zeros(count, values.shape[1])
    if len(rows):
        pooled.scatter_reduce_(0, rows.unsqueeze(1).expand(-1, values.shape[1]), values, "amax", include_self=False)
    return pooled


def voxel_keys(coordinates: torch.Tensor, level: int, grid_shape: Sequence[int], shift: int = 0) -> torch.Tensor:
    """One int64 key per (scan, x, y, z) row of a grid at `level` halvings of `grid_shape`, the
    coordinates halved `shift` times first (input voxels -> their voxel at that level: each
    stride-2 conv maps c to c // 2)."""
    c = coordinates.long()
    sx, sy, sz = (size >> level for size in grid_shape)
    return ((c[:, 0] * sx + (c[:, 1] >> shift)) * sy + (c[:, 2] >> shift)) * sz + (c[:, 3] >> shift)


class InjectedSparseUNet(nn.Module):
    """A sparse UNet of `config` with `num_classes` outputs and an injection per decoder stage."""

    def __init__(self, config: SparseUNetConfig, teacher_dim: int, num_classes: int) -> None:
        super().__init__()
        self.config = replace(config, out_channels=num_classes)
        self.unet = SparseUNet(self.config)
        self.injections = nn.ModuleList(  # decoder_channels[i] is the width at level levels - 1 - i
            injection(teacher_dim, width) for width in config.decoder_channels)

    def prepare(self, scan: SegmentationScan, augmentation: Augmentation | None,
                rng: np.random.Generator | None) -> Prepared:
        voxels = prepare_voxels(scan.points, self.config, scan.intensity_stats, augmentation=augmentation, rng=rng)
        pooled, seen = pooled_teacher(scan, voxels.back_projection, voxels.num_points)
        return Prepared((voxels, pooled, seen), voxels.point_index, voxels.back_projection)

    def logits(self, prepared: Sequence[Prepared], device: torch.device) -> list[torch.Tensor]:
        batch = collate_voxels([p.inputs[0] for p in prepared]).to(device)
        pooled = torch.cat([p.inputs[1] for p in prepared]).to(device)
        seen = torch.cat([p.inputs[2] for p in prepared]).to(device)
        levels = len(self.config.encoder_channels)
        grid = self.config.grid_shape
        seen_keys = {level: voxel_keys(batch.coordinates[seen], level, grid, shift=level) for level in range(levels)}

        def inject(level: int, x):
            keys, order = torch.sort(voxel_keys(x.indices, level, grid))
            rows = order[torch.searchsorted(keys, seen_keys[level])]
            features = max_pool_rows(pooled[seen], rows, len(keys))
            return x.replace_feature(x.features + self.injections[levels - 1 - level](features))

        return batch.split(self.unet(batch.features, batch.coordinates, len(prepared), decoder_hook=inject))


def injected_blocks(depth: int, count: int = 3) -> tuple[int, ...]:
    """`count` evenly spaced blocks of `depth` (the last always among them) after which
    WaffleIron receives the teacher features."""
    count = min(count, depth)
    return tuple(sorted({round(depth * (i + 1) / count) - 1 for i in range(count)}))


class InjectedWaffleIron(nn.Module):
    """A WaffleIron of `config` with a linear head to `num_classes` and an injection after each
    of `injected_blocks(config.depth)`."""

    def __init__(self, config: WaffleIronConfig, teacher_dim: int, num_classes: int) -> None:
        super().__init__()
        self.config = replace(config, head="linear", out_channels=num_classes)
        self.net = WaffleIron(self.config)
        self.blocks = injected_blocks(config.depth)
        self.injections = nn.ModuleList(injection(teacher_dim, config.width) for _ in self.blocks)

    def prepare(self, scan: SegmentationScan, augmentation: Augmentation | None,
                rng: np.random.Generator | None) -> Prepared:
        inputs = self.config.prepare(scan.points, scan.intensity_stats, augmentation=augmentation, rng=rng)
        pooled, _ = pooled_teacher(scan, inputs.back_projection, inputs.num_points)
        return Prepared((inputs, pooled), inputs.point_index, inputs.back_projection)

    def logits(self, prepared: Sequence[Prepared], device: torch.device) -> list[torch.Tensor]:
        batch = collate([p.inputs[0] for p in prepared]).to(device)
        size = batch.features.shape[2]
        teacher = torch.stack([F.pad(p.inputs[1].T, (0, size - p.inputs[1].shape[0])) for p in prepared]).to(device)
        flat = teacher.transpose(1, 2).reshape(-1, teacher.shape[1])  # (B * N, Dt): BatchNorm1d over points

        def inject(block: int, tokens: torch.Tensor) -> torch.Tensor:
            if block not in self.blocks:
                return tokens
            added = self.injections[self.blocks.index(block)](flat)
            return tokens + added.view(tokens.shape[0], size, -1).transpose(1, 2)

        output = self.net(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy, block_hook=inject)
        return batch.unpad(output)


def build_injected(config: ArchitectureConfig, teacher_dim: int, num_classes: int) -> nn.Module:
    """The injected network of a student architecture's config (`student.<arch>`)."""
    if isinstance(config, SparseUNetConfig):
        return InjectedSparseUNet(config, teacher_dim, num_classes)
    if isinstance(config, WaffleIronConfig):
        return InjectedWaffleIron(config, teacher_dim, num_classes)
    raise ValueError(f"no teacher injection for a {config.arch} student")
