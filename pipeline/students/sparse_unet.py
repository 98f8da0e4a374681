"""A MinkUNet-style sparse convolutional UNet student, built with spconv.

SAS, XMask3D and OpenScene distil into MinkowskiNet backbones (OpenScene: MinkUNet18A). This
is the same network written with spconv, for users who prefer a voxel backbone to WaffleIron:

- the scan is voxelised (`voxel_size`, 5 or 10 cm); each occupied voxel keeps one point, whose
  5 input channels are those of WaffleIron (`inputs.input_features`: standardised
  intensity, x, y, z, radius), so the position inside the voxel is not lost;
- a stem: a BatchNorm of the 5 inputs (as WaffleIron's embedding: metres and standardised
  intensity differ in scale, and without it the coordinates drown the intensity at first),
  then one submanifold conv (kernel `stem_kernel`), BatchNorm, ReLU;
- an encoder of `len(encoder_channels)` levels: a 2x2x2 stride-2 conv halves the resolution,
  then `blocks_per_stage` residual blocks (MinkowskiNet's BasicBlock) widen to the level's
  channels;
- a decoder of as many levels: an inverse conv brings the voxels of the level above back
  exactly, the encoder's output at that level is concatenated (the skip connection), then
  residual blocks;
- a linear head to `out_channels` on every voxel.

Submanifold convs keep the set of active voxels, so every voxel of the input gets an output,
in input order. Each original point then takes the output of its own voxel
(`VoxelScan.back_projection`).

As a student (`pipeline.students`): `SparseUNetConfig.build()` makes the model,
`SparseUNetConfig.prepare(...)` a scan's voxels (`prepare_voxels`), `SparseUNet.run_batch` runs
prepared scans; the model predicts as it is (`for_inference` returns it unchanged).

spconv is imported on first use (`SparseUNet(...)` or `forward`), never at import time: the
package is large (375 MB, seconds to import) and WaffleIron users never need it. spconv's fast
implicit-GEMM algorithms need CUDA; on CPU tensors every conv switches to its Native algorithm
(the weights have one layout for all algorithms, so the switch costs nothing).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config_loading import build
from pipeline.datasets.base import IntensityStats
from pipeline.students.inputs import (
    Augmentation,
    back_projection,
    cap_points,
    crop_to_fov,
    input_features,
    random_transform,
)

INPUT_CHANNELS = 5  # inputs.input_features: intensity, x, y, z, radius


@dataclass(frozen=True)
class SparseUNetConfig:
    """Architecture and voxel grid of a sparse UNet student.

    The defaults are MinkUNet18A (MinkowskiEngine's examples/minkunet.py, OpenScene's 3D
    backbone): a 32-channel stem with a 5x5x5 kernel, encoder levels of 32, 64, 128, 256
    channels, decoder levels of 128, 128, 96, 96, two residual blocks per level, on 5 cm
    voxels, with a 1024-channel head (the DINOv2 ViT-L width). MinkUNet14A has one block per
    level; MinkUNet34C widens the decoder to 256, 128, 96, 96.

    encoder_channels[i] is the width after i + 1 halvings; decoder_channels[i] the width after
    i + 1 doublings (both lists have one entry per level). `fov` is the box
    ((xmin, ymin, zmin), (xmax, ymax, zmax)) in metres that is voxelised; points outside it
    take the output of their nearest voxel.
    """

    stem_channels: int = 32
    stem_kernel: int = 5
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)
    decoder_channels: tuple[int, ...] = (128, 128, 96, 96)
    blocks_per_stage: int = 2
    voxel_size: float = 0.05
    fov: tuple[tuple[float, float, float], tuple[float, float, float]] = (
        (-64.0, -64.0, -8.0),
        (64.0, 64.0, 8.0),
    )
    out_channels: int = 1024

    arch: ClassVar[str] = "sparse_unet"  # its name in params.yaml and config.json

    def __post_init__(self) -> None:
        # Accept lists (from JSON / YAML) but store tuples so the config stays hashable.
        object.__setattr__(self, "encoder_channels", tuple(int(c) for c in self.encoder_channels))
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        object.__setattr__(self, "fov", tuple(tuple(float(v) for v in corner) for corner in self.fov))
        for name in ("stem_channels", "stem_kernel", "blocks_per_stage", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"SparseUNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.encoder_channels or min(self.encoder_channels + self.decoder_channels) < 1:
            raise ValueError(f"SparseUNetConfig.encoder_channels must be a non-empty list of widths >= 1, "
                             f"got {self.encoder_channels}")
        if len(self.decoder_channels) != len(self.encoder_channels):
            raise ValueError(f"SparseUNetConfig.decoder_channels {self.decoder_channels} needs one width per "
                             f"encoder level {self.encoder_channels}")
        if len(self.fov) != 2 or any(len(c) != 3 for c in self.fov) or any(lo >= hi for lo, hi in zip(*self.fov)):
            raise ValueError(f"SparseUNetConfig.fov must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with min < max, "
                             f"got {self.fov}")
        if self.voxel_size <= 0:
            raise ValueError(f"SparseUNetConfig.voxel_size must be > 0, got {self.voxel_size}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Voxels along x, y, z: the FOV over `voxel_size`, rounded up to a multiple of
        2^levels so that every stride-2 conv halves the grid exactly."""
        step = 2 ** len(self.encoder_channels)
        counts = (math.ceil((hi - lo) / self.voxel_size - 1e-6) for lo, hi in zip(*self.fov))
        return tuple(math.ceil(n / step) * step for n in counts)

    def to_dict(self) -> dict:
        """Plain dict of the fields (json.dump writes the tuples as lists); `from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> SparseUNetConfig:
        """The config of a plain dict (e.g. a student's config.json), every key and type checked."""
        return build(cls, dict(values), "SparseUNetConfig:")

    def build(self) -> SparseUNet:
        """A freshly initialised sparse UNet of this config (imports spconv)."""
        return SparseUNet(self)

    def prepare(
        self,
        points: np.ndarray,
        intensity_stats: IntensityStats,
        augmentation: Augmentation | None = None,
        rng: np.random.Generator | None = None,
    ) -> VoxelScan:
        """One raw scan -> the sparse UNet's voxels (`prepare_voxels`)."""
        return prepare_voxels(points, self, intensity_stats, augmentation=augmentation, rng=rng)


# --------------------------------------------------------------------------- point pre-processing


@dataclass(frozen=True, eq=False)
class VoxelScan:
    """What the sparse UNet needs for one scan, plus the way back to the original points.

    features: float32 (N, 5) inputs of the N kept points, one per occupied voxel.
    coordinates: int32 (N, 3) voxel (x, y, z) of each kept point in `config.grid_shape`.
    point_index: int64 (N,) index of each kept point in the original scan.
    back_projection: int64 (M,) for each original point, the kept point whose output it takes:
        its own voxel's, or for points outside the FOV (and, in training, of voxels the
        subsample dropped) the nearest kept point's.
    """

    features: np.ndarray
    coordinates: np.ndarray
    point_index: np.ndarray
    back_projection: np.ndarray

    @property
    def num_points(self) -> int:
        return len(self.point_index)


def voxel_coordinates(xyz: np.ndarray, config: SparseUNetConfig) -> np.ndarray:
    """int64 (N, 3) voxel of each point, counted from the FOV minimum (points inside the FOV)."""
    lo = np.asarray(config.fov[0], dtype=np.float64)
    voxels = np.floor((np.asarray(xyz, dtype=np.float64)[:, :3] - lo) / config.voxel_size).astype(np.int64)
    return np.clip(voxels, 0, np.asarray(config.grid_shape) - 1)


def unique_voxels(
    voxels: np.ndarray, shape: Sequence[int], rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One representative per occupied voxel.

    Returns (representative (V,) index into `voxels` of one point per voxel, voxel_of (N,) the
    row of each point's voxel in `representative`). Without `rng` the representative is the
    first point of its voxel (inference); with it, a random one (training).
    """
    order = rng.permutation(len(voxels)) if rng is not None else np.arange(len(voxels))
    keys = np.ravel_multi_index(tuple(voxels[order].T), tuple(shape))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    voxel_of = np.empty(len(voxels), dtype=np.int64)
    voxel_of[order] = inverse
    return order[first].astype(np.int64), voxel_of


def prepare_voxels(
    points_xyzi: np.ndarray,
    config: SparseUNetConfig,
    intensity_stats: IntensityStats,
    *,
    augmentation: Augmentation | None = None,
    rng: np.random.Generator | None = None,
) -> VoxelScan:
    """Voxelise one scan (float (M, >=4): x, y, z, intensity, ...) for the sparse UNet.

    Inference: crop to the FOV, keep the first point of each voxel. Training (`augmentation`
    with an explicit `rng`): the whole scan is first rotated / flipped / scaled, so the
    voxels are those of the augmented cloud (no two kept points share one), then each voxel
    keeps a random point and the voxels are cut to `augmentation.max_points` (`cap_points`).
    """
    points = np.asarray(points_xyzi)
    if points.ndim != 2 or points.shape[1] < 4:
        raise ValueError(f"points must be (M, >=4) x, y, z, intensity; got shape {points.shape}")
    if augmentation is not None and rng is None:
        raise ValueError("augmentation needs an explicit numpy Generator `rng`")
    xyz = points[:, :3]
    if not np.isfinite(xyz).all():
        raise ValueError(f"{int((~np.isfinite(xyz).all(axis=1)).sum())} points have non-finite coordinates")

    training = augmentation is not None
    net_xyz = random_transform(xyz, rng, augmentation) if training else xyz
    inside = crop_to_fov(net_xyz, config.fov)
    candidates = np.flatnonzero(inside)
    if len(candidates) == 0:
        raise ValueError(f"none of the {len(points)} points lies in the field of view {config.fov}")
    voxels = voxel_coordinates(net_xyz[candidates], config)
    representative, voxel_of = unique_voxels(voxels, config.grid_shape, rng if training else None)
    kept, coordinates = candidates[representative], voxels[representative]

    if training:
        keep = cap_points(net_xyz[kept], augmentation, rng)
        kept, coordinates = kept[keep], coordinates[keep]
        mapping = back_projection(xyz, xyz[kept])
    else:
        mapping = np.empty(len(xyz), dtype=np.int64)
        mapping[candidates] = voxel_of
        if not inside.all():
            mapping[~inside] = back_projection(xyz[~inside], xyz[kept])

    return VoxelScan(
        features=input_features(net_xyz[kept], points[kept, 3], intensity_stats),
        coordinates=coordinates.astype(np.int32),
        point_index=kept,
        back_projection=mapping,
    )


@dataclass(frozen=True, eq=False)
class VoxelBatch:
    """Several voxelised scans stacked: features float32 (P, 5), coordinates int32 (P, 4)
    (scan index, x, y, z), num_points the voxels of each scan, in order."""

    features: torch.Tensor
    coordinates: torch.Tensor
    num_points: tuple[int, ...]

    def to(self, device: torch.device | str) -> VoxelBatch:
        return VoxelBatch(self.features.to(device), self.coordinates.to(device), self.num_points)

    def split(self, output: torch.Tensor) -> list[torch.Tensor]:
        """Split a network output (P, D) into one (n_b, D) tensor per scan."""
        return list(torch.split(output, list(self.num_points)))


def collate_voxels(scans: Sequence[VoxelScan]) -> VoxelBatch:
    if not scans:
        raise ValueError("collate_voxels needs at least one scan")
    scan_index = np.concatenate([np.full(scan.num_points, b, dtype=np.int32) for b, scan in enumerate(scans)])
    coordinates = np.column_stack([scan_index, np.concatenate([scan.coordinates for scan in scans])])
    return VoxelBatch(
        torch.from_numpy(np.concatenate([scan.features for scan in scans])),
        torch.from_numpy(np.ascontiguousarray(coordinates, dtype=np.int32)),
        tuple(scan.num_points for scan in scans),
    )


# --------------------------------------------------------------------------- network


def import_spconv():
    """`spconv.pytorch`, imported on first use; its import-time deprecation warnings are muted."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"spconv\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ccimport\.")
        import spconv.pytorch as spconv
    return spconv


def norm_relu(x, norm: nn.BatchNorm1d):
    """BatchNorm + ReLU on the features of a sparse tensor."""
    return x.replace_feature(F.relu(norm(x.features)))


class ResidualBlock(nn.Module):
    """MinkowskiNet's BasicBlock on a sparse tensor: conv3-BN-ReLU-conv3-BN, plus the input
    (through a 1x1x1 conv + BN when the width changes), then ReLU. Submanifold convs: the
    active voxels do not change. Blocks of one level share `indice_key`, so spconv builds
    the neighbour table of that level once per forward."""

    def __init__(self, in_channels: int, out_channels: int, indice_key: str) -> None:
        super().__init__()
        spconv = import_spconv()
        self.conv1 = spconv.SubMConv3d(in_channels, out_channels, 3, bias=False, indice_key=indice_key)
        self.norm1 = nn.BatchNorm1d(out_channels)
        self.conv2 = spconv.SubMConv3d(out_channels, out_channels, 3, bias=False, indice_key=indice_key)
        self.norm2 = nn.BatchNorm1d(out_channels)
        self.shortcut = (
            nn.Identity() if in_channels == out_channels
            else nn.Sequential(nn.Linear(in_channels, out_channels, bias=False), nn.BatchNorm1d(out_channels))
        )

    def forward(self, x):
        out = self.conv2(norm_relu(self.conv1(x), self.norm1))
        return out.replace_feature(F.relu(self.norm2(out.features) + self.shortcut(x.features)))


def residual_stage(in_channels: int, out_channels: int, blocks: int, indice_key: str) -> nn.Sequential:
    return nn.Sequential(
        *(ResidualBlock(in_channels if i == 0 else out_channels, out_channels, indice_key) for i in range(blocks))
    )


class SparseUNet(nn.Module):
    """The sparse UNet student: `input_norm`, `stem`, `down` / `encoder`, `up` / `decoder`, `head`.

    forward(features float (P, 5), coordinates int32 (P, 4) of (scan, x, y, z), batch_size)
    -> (P, out_channels), one row per input voxel in input order. Everything follows the
    device of `features`.
    """

    def __init__(self, config: SparseUNetConfig = SparseUNetConfig()) -> None:
        super().__init__()
        spconv = import_spconv()
        self.config = config
        levels = len(config.encoder_channels)
        self.input_norm = nn.BatchNorm1d(INPUT_CHANNELS)
        self.stem = spconv.SubMConv3d(INPUT_CHANNELS, config.stem_channels, config.stem_kernel, bias=False,
                                      indice_key="stem")
        self.stem_norm = nn.BatchNorm1d(config.stem_channels)

        # Level l has the resolution of l halvings; `skip_widths[l]` is the encoder's width there.
        skip_widths = (config.stem_channels,) + config.encoder_channels[:-1]
        self.down, self.down_norm, self.encoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        width = config.stem_channels
        for level, channels in enumerate(config.encoder_channels, start=1):
            self.down.append(spconv.SparseConv3d(width, width, 2, stride=2, bias=False, indice_key=f"down{level}"))
            self.down_norm.append(nn.BatchNorm1d(width))
            self.encoder.append(residual_stage(width, channels, config.blocks_per_stage, f"level{level}"))
            width = channels
        self.up, self.up_norm, self.decoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level, channels in zip(range(levels - 1, -1, -1), config.decoder_channels):
            # The inverse of the stride-2 conv into level + 1: exactly the voxels of `level` again.
            self.up.append(spconv.SparseInverseConv3d(width, channels, 2, bias=False, indice_key=f"down{level + 1}"))
            self.up_norm.append(nn.BatchNorm1d(channels))
            self.decoder.append(residual_stage(channels + skip_widths[level], channels, config.blocks_per_stage,
                                               f"level{level}"))
            width = channels
        self.head = nn.Linear(width, config.out_channels)

        # spconv chose each conv's algorithm for CUDA at construction; CPU tensors need Native.
        self.sparse_convs = [m for m in self.modules() if isinstance(m, spconv.conv.SparseConvolution)]
        self.cuda_algorithms = [conv.algo for conv in self.sparse_convs]

    def use_algorithms_for(self, device: torch.device) -> None:
        """Native on CPU; on CUDA the fast algorithm spconv chose for each conv."""
        native = import_spconv().ConvAlgo.Native
        for conv, fast in zip(self.sparse_convs, self.cuda_algorithms):
            conv.algo = fast if device.type == "cuda" else native

    def forward(self, features: torch.Tensor, coordinates: torch.Tensor, batch_size: int,
                decoder_hook=None) -> torch.Tensor:
        """decoder_hook(level, x) -> x, when given, runs after the decoder stage of each level
        (`len(encoder_channels) - 1` down to 0, the input voxels) on its sparse tensor: DITR's
        injection (`pipeline.segmentation.inject`)."""
        spconv = import_spconv()
        if features.ndim != 2 or features.shape[1] != INPUT_CHANNELS:
            raise ValueError(f"features must be (P, {INPUT_CHANNELS}), got {tuple(features.shape)}")
        if coordinates.shape != (features.shape[0], 4):
            raise ValueError(f"coordinates must be (P, 4) = ({features.shape[0]}, 4), got {tuple(coordinates.shape)}")
        self.use_algorithms_for(features.device)
        x = spconv.SparseConvTensor(self.input_norm(features), coordinates.int(), list(self.config.grid_shape),
                                    batch_size)
        x = norm_relu(self.stem(x), self.stem_norm)
        skips = []
        for down, norm, blocks in zip(self.down, self.down_norm, self.encoder):
            skips.append(x)
            x = blocks(norm_relu(down(x), norm))
        for level, up, norm, blocks, skip in zip(range(len(skips) - 1, -1, -1), self.up, self.up_norm, self.decoder,
                                                 reversed(skips)):
            x = norm_relu(up(x), norm)
            x = blocks(x.replace_feature(torch.cat((x.features, skip.features), dim=1)))
            if decoder_hook is not None:
                x = decoder_hook(level, x)
        return self.head(x.features)

    def run_batch(self, scans: Sequence[VoxelScan], device: torch.device) -> list[torch.Tensor]:
        """Prepared scans as one sparse batch: one (n_kept, out_channels) tensor per scan."""
        batch = collate_voxels(scans).to(device)
        return batch.split(self(batch.features, batch.coordinates, len(scans)))

    def for_inference(self, precision: str) -> SparseUNet:
        """The model itself: it has no faster inference build (`precision` is for WaffleIron)."""
        return self


__all__ = [
    "INPUT_CHANNELS",
    "SparseUNet",
    "SparseUNetConfig",
    "VoxelBatch",
    "VoxelScan",
    "collate_voxels",
    "import_spconv",
    "prepare_voxels",
    "unique_voxels",
    "voxel_coordinates",
]
