"""WaffleIron, the point network of ScaLR / ScaLR+, built so released checkpoints load strictly.

The network sees a lidar scan as N points with Cin input features each. An embedding turns
every point into a C-dimensional token from its own features and its K nearest neighbours.
Then `depth` blocks alternate two residual mixes:

- spatial mix: the tokens are averaged into the cells of a 2D grid (the scan projected along
  one axis: a bird's-eye view or one of two side views, in turn), the grid runs two depthwise
  3x3 convolutions, and every point reads back the value of its cell;
- channel mix: a per-point MLP over the C channels.

Each mix is `x + drop_path(scale(branch(norm(x))))`, with `scale` a learnt per-channel
factor (LayerScale) and `norm` a LayerNorm over the channels of each point. A head maps
the tokens to the output: an MLP C -> 2048 -> 1024 for ScaLR+ distillation (1024 is the
DINOv2 ViT-L width), or a linear classifier C -> nb_class.

Shapes used throughout (batch layout produced by `inputs.collate`):

- features      float (B, Cin, N): per-point inputs, zero for padded points.
- neighbors     int64 (B, N, K + 1): kNN indices within the same scan, self first.
- cell_indices  int64 (B, G, N): for grid g of shape (H, W), the flat cell i0 * W + i1.
- occupancy     float (B, N): 1 for real points, 0 for padding.
- output        float (B, out_channels, N).

Padded points never change real points: they are nobody's neighbour and have occupancy 0,
so they do not enter any cell mean. (In training mode BatchNorm statistics of the
embedding do see them, as in the reference.)

As a student (`pipeline.students`): `WaffleIronConfig.build()` makes the model,
`WaffleIronConfig.prepare(...)` a scan's inputs (`inputs.prepare_scan`), `WaffleIron.run_batch`
runs prepared scans, and `WaffleIron.for_inference` folds the model for prediction (`folded`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.config_loading import build
from pipeline.datasets.base import IntensityStats
from pipeline.students.inputs import Augmentation
from pipeline.students.waffleiron.folded import InferenceOptions, InferenceWaffleIron
from pipeline.students.waffleiron.inputs import PLANE_AXES, PreparedScan, collate, prepare_scan

HEADS = ("mlp", "linear")


@dataclass(frozen=True)
class WaffleIronConfig:
    """Architecture and input geometry of a WaffleIron student.

    The defaults are the released ScaLR+ model (`WI_768 ... mlp_2048`): width 768, depth 48,
    MLP head 768 -> 2048 -> 1024. With `head="linear"`, `out_channels` is the number of
    classes of a single Conv1d classifier and `head_hidden` is unused.

    grids[g] is the (H, W) shape of grid g, the projection along axis `projection_axes[g]`;
    block d uses grid d mod G. `fov` is ((xmin, ymin, zmin), (xmax, ymax, zmax)) in metres.
    `voxel_size` and `num_neighbors` describe the inputs the network expects (see
    `inputs`). `drop_path` is the stochastic-depth probability of every mix (training
    only). `checkpointing` recomputes each mix in the backward pass to save memory.
    """

    input_channels: int = 5
    width: int = 768
    depth: int = 48
    grids: tuple[tuple[int, int], ...] = ((256, 256), (256, 32), (256, 32))
    projection_axes: tuple[int, ...] = (2, 1, 0)
    fov: tuple[tuple[float, float, float], tuple[float, float, float]] = (
        (-64.0, -64.0, -8.0),
        (64.0, 64.0, 8.0),
    )
    voxel_size: float = 0.1
    num_neighbors: int = 16
    drop_path: float = 0.2
    head: Literal["mlp", "linear"] = "mlp"
    head_hidden: int = 2048
    out_channels: int = 1024
    checkpointing: bool = False

    arch: ClassVar[str] = "waffleiron"  # its name in params.yaml and config.json

    def __post_init__(self) -> None:
        # Accept lists (from JSON / YAML) but store tuples so the config stays hashable.
        object.__setattr__(self, "grids", tuple(tuple(int(v) for v in g) for g in self.grids))
        object.__setattr__(self, "projection_axes", tuple(int(a) for a in self.projection_axes))
        object.__setattr__(self, "fov", tuple(tuple(float(v) for v in corner) for corner in self.fov))
        for name in ("input_channels", "width", "depth", "head_hidden", "out_channels", "num_neighbors"):
            if getattr(self, name) < 1:
                raise ValueError(f"WaffleIronConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.head not in HEADS:
            raise ValueError(f"WaffleIronConfig.head must be one of {HEADS}, got {self.head!r}")
        if not self.grids or any(len(g) != 2 or min(g) < 1 for g in self.grids):
            raise ValueError(f"WaffleIronConfig.grids must be a non-empty list of (H, W) > 0, got {self.grids}")
        if len(self.projection_axes) != len(self.grids):
            raise ValueError(
                f"WaffleIronConfig.projection_axes {self.projection_axes} needs one axis per grid {self.grids}"
            )
        if any(a not in PLANE_AXES for a in self.projection_axes):
            raise ValueError(f"WaffleIronConfig.projection_axes must be in (0, 1, 2), got {self.projection_axes}")
        if len(self.fov) != 2 or any(len(c) != 3 for c in self.fov):
            raise ValueError(f"WaffleIronConfig.fov must be ((xmin, ymin, zmin), (xmax, ymax, zmax)), got {self.fov}")
        if any(lo >= hi for lo, hi in zip(*self.fov)):
            raise ValueError(f"WaffleIronConfig.fov needs min < max on every axis, got {self.fov}")
        if self.voxel_size <= 0:
            raise ValueError(f"WaffleIronConfig.voxel_size must be > 0, got {self.voxel_size}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"WaffleIronConfig.drop_path must be in [0, 1), got {self.drop_path}")

    def to_dict(self) -> dict:
        """Plain dict of the fields (json.dump writes the tuples as lists); `from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> WaffleIronConfig:
        """The config of a plain dict (e.g. a student's config.json), every key and type checked."""
        return build(cls, dict(values), "WaffleIronConfig:")

    def build(self) -> WaffleIron:
        """A freshly initialised WaffleIron of this config."""
        return WaffleIron(self)

    def prepare(
        self,
        points: np.ndarray,
        intensity_stats: IntensityStats,
        augmentation: Augmentation | None = None,
        rng: np.random.Generator | None = None,
    ) -> PreparedScan:
        """One raw scan -> WaffleIron's inputs (`inputs.prepare_scan`)."""
        return prepare_scan(points, self, intensity_stats, augmentation=augmentation, rng=rng)


# --------------------------------------------------------------------------- building blocks


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole residual branch per sample with probability p.

    Kept branches are divided by (1 - p) so the expected output is unchanged; identity in eval.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep) / keep


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, N) tensor: each point is normalised on its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def scatter_mean(tokens: torch.Tensor, cells: torch.Tensor, occupancy: torch.Tensor, num_cells: int) -> torch.Tensor:
    """Average point tokens into grid cells.

    tokens (B, C, N), cells int64 (B, N) in [0, num_cells), occupancy (B, N) with 1 for real
    points and 0 for padding. Returns (B, C, num_cells): the mean of the real points of
    each cell, 0 in cells with no real point.
    """
    batch, channels, _ = tokens.shape
    weight = occupancy.to(tokens.dtype)
    index = cells.unsqueeze(1).expand_as(tokens)
    sums = tokens.new_zeros(batch, channels, num_cells).scatter_add_(2, index, tokens * weight.unsqueeze(1))
    counts = weight.new_zeros(batch, num_cells).scatter_add_(1, cells, weight)
    return sums / counts.clamp(min=1.0).unsqueeze(1)


def gather_from_grid(plane: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Read each point's cell: plane (B, C, M), cells int64 (B, N) -> (B, C, N)."""
    return torch.gather(plane, 2, cells.unsqueeze(1).expand(-1, plane.shape[1], -1))


class PointEmbedding(nn.Module):
    """Input features (B, Cin, N) + neighbours (B, N, K + 1) -> tokens (B, C, N).

    A point's token merges `conv1` of its normalised features with a local descriptor: for
    each of its K neighbours (the first kNN result, the point itself, is skipped), the
    difference of normalised features neighbour - point goes through `conv2`, and the max
    over the K neighbours is kept. Module names match the ScaLR checkpoints.
    """

    def __init__(self, input_channels: int, width: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(input_channels)
        self.conv1 = nn.Conv1d(input_channels, width, 1)
        self.conv2 = nn.Sequential(
            nn.BatchNorm2d(input_channels),
            nn.Conv2d(input_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 1, bias=False),
        )
        self.final = nn.Conv1d(2 * width, width, 1)

    def forward(self, features: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        x = self.norm(features)  # (B, Cin, N)
        batch, channels, num_points = x.shape
        others = neighbors[:, :, 1:]  # (B, N, K): drop self
        k = others.shape[2]
        index = others.reshape(batch, 1, num_points * k).expand(-1, channels, -1)
        relative = torch.gather(x, 2, index).view(batch, channels, num_points, k) - x.unsqueeze(-1)
        local = self.conv2(relative).amax(dim=3)  # (B, C, N)
        return self.final(torch.cat((self.conv1(x), local), dim=1))


class ChannelMix(nn.Module):
    """tokens (B, C, N) -> tokens + drop_path(scale(mlp(norm(tokens)))): a per-point MLP."""

    def __init__(self, width: int, drop_path: float) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(width)
        self.mlp = nn.Sequential(nn.Conv1d(width, width, 1), nn.GELU(), nn.Conv1d(width, width, 1))
        self.scale = nn.Conv1d(width, width, 1, groups=width, bias=False)  # LayerScale
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.drop_path(self.scale(self.mlp(self.norm(tokens))))


class SpatialMix(nn.Module):
    """tokens (B, C, N) -> tokens + drop_path(scale(gather(ffn(scatter_mean(norm(tokens)))))).

    The normalised tokens are averaged into the H x W cells of one grid, the plane goes
    through two depthwise 3x3 convolutions with a GELU between, and each point reads back
    its cell. `scale` is per channel, so applying it after the gather is the same as before.
    """

    def __init__(self, width: int, grid: tuple[int, int], drop_path: float) -> None:
        super().__init__()
        self.grid = grid
        self.norm = ChannelLayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width),
        )
        self.scale = nn.Conv1d(width, width, 1, groups=width, bias=False)  # LayerScale
        self.drop_path = DropPath(drop_path)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"

    def forward(self, tokens: torch.Tensor, cells: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
        height, width = self.grid
        batch, channels, _ = tokens.shape
        plane = scatter_mean(self.norm(tokens), cells, occupancy, height * width)
        plane = self.ffn(plane.view(batch, channels, height, width)).view(batch, channels, height * width)
        return tokens + self.drop_path(self.scale(gather_from_grid(plane, cells)))


class WaffleIronBackbone(nn.Module):
    """The `depth` blocks (spatial mix on grid d mod G, then channel mix): (B, C, N) -> (B, C, N)."""

    def __init__(
        self,
        width: int,
        depth: int,
        grids: Sequence[tuple[int, int]],
        drop_path: float,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.num_grids = len(grids)
        self.checkpointing = checkpointing
        self.channel_mix = nn.ModuleList(ChannelMix(width, drop_path) for _ in range(depth))
        self.spatial_mix = nn.ModuleList(
            SpatialMix(width, tuple(grids[d % len(grids)]), drop_path) for d in range(depth)
        )

    def forward(self, tokens: torch.Tensor, cell_indices: torch.Tensor, occupancy: torch.Tensor,
                block_hook=None) -> torch.Tensor:
        """block_hook(d, tokens) -> tokens, when given, runs after block d (DITR's injection:
        `pipeline.segmentation.inject`)."""
        recompute = self.checkpointing and torch.is_grad_enabled()
        for d, (spatial, channel) in enumerate(zip(self.spatial_mix, self.channel_mix)):
            cells = cell_indices[:, d % self.num_grids]
            if recompute:
                # Keep only block inputs; activations are recomputed in backward.
                tokens = checkpoint(spatial, tokens, cells, occupancy, use_reentrant=False)
                tokens = checkpoint(channel, tokens, use_reentrant=False)
            else:
                tokens = channel(spatial(tokens, cells, occupancy))
            if block_hook is not None:
                tokens = block_hook(d, tokens)
        return tokens


class WaffleIron(nn.Module):
    """The full student: `embed`, `waffleiron` (backbone), `classif` (head), as in ScaLR+.

    forward(features (B, Cin, N), neighbors (B, N, K + 1), cell_indices (B, G, N) or a list of
    G tensors (B, N), occupancy (B, N) or None for "all real") -> (B, out_channels, N).
    Everything follows the device and dtype of `features`.
    """

    def __init__(self, config: WaffleIronConfig = WaffleIronConfig()) -> None:
        super().__init__()
        self.config = config
        self.embed = PointEmbedding(config.input_channels, config.width)
        self.waffleiron = WaffleIronBackbone(
            config.width, config.depth, config.grids, config.drop_path, config.checkpointing
        )
        if config.head == "mlp":
            self.classif = nn.Sequential(
                nn.Conv1d(config.width, config.head_hidden, 1),
                nn.ReLU(),
                nn.Conv1d(config.head_hidden, config.out_channels, 1),
            )
        else:
            self.classif = nn.Conv1d(config.width, config.out_channels, 1)

    def forward(
        self,
        features: torch.Tensor,
        neighbors: torch.Tensor,
        cell_indices: torch.Tensor | Sequence[torch.Tensor],
        occupancy: torch.Tensor | None = None,
        block_hook=None,
    ) -> torch.Tensor:
        if not isinstance(cell_indices, torch.Tensor):
            cell_indices = torch.stack(list(cell_indices), dim=1)
        batch, channels, num_points = features.shape
        if channels != self.config.input_channels:
            raise ValueError(f"features have {channels} channels, the model expects {self.config.input_channels}")
        if neighbors.shape[:2] != (batch, num_points) or neighbors.shape[2] < 2:
            raise ValueError(
                f"neighbors must be (B, N, K + 1) = ({batch}, {num_points}, >1), got {tuple(neighbors.shape)}"
            )
        if cell_indices.shape != (batch, len(self.config.grids), num_points):
            raise ValueError(
                f"cell_indices must be (B, G, N) = ({batch}, {len(self.config.grids)}, {num_points}), "
                f"got {tuple(cell_indices.shape)}"
            )
        if occupancy is None:
            occupancy = features.new_ones(batch, num_points)
        tokens = self.embed(features, neighbors)
        tokens = self.waffleiron(tokens, cell_indices, occupancy, block_hook)
        return self.classif(tokens)

    def run_batch(self, scans: Sequence[PreparedScan], device: torch.device) -> list[torch.Tensor]:
        """Prepared scans as one padded batch: one (n_kept, out_channels) tensor per scan."""
        return collate(scans).to(device).run(self)

    def for_inference(self, precision: Literal["auto", "fp32", "bf16"]) -> InferenceWaffleIron:
        """The fastest equivalent for prediction: this model folded (`folded`), in `precision`."""
        return InferenceWaffleIron.from_model(self, InferenceOptions(precision=precision))


__all__ = [
    "WaffleIron",
    "WaffleIronBackbone",
    "WaffleIronConfig",
    "gather_from_grid",
    "scatter_mean",
]
