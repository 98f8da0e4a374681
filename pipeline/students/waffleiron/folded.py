"""Inference-only WaffleIron: the function of `model.WaffleIron`, folded and laid out for speed.

`WaffleIron` keeps the ScaLR+ module tree so that released checkpoints load strictly; that tree
is written for training (BatchNorms, a (B, C, N) layout, 1x1 convolutions everywhere). At
inference the same function needs fewer and cheaper operations, so this module builds a
separate model from a loaded one (the source model is never modified):

* **BatchNorm folding.** In eval mode each of the embedding's three BatchNorms is a per-channel
  affine map, folded into the 1x1 convolution next to it. So are the LayerScale factors (into
  the layer before them) and the channel mix's LayerNorm affine (into its first layer).
* **Linearity.** The embedding's neighbour branch starts with a linear map of the feature
  difference neighbour - point, so that map is applied once per point and differenced per
  neighbour, instead of once per (point, neighbour) pair. The point branch (`conv1`) and the
  half of `final` it feeds collapse into one Cin -> C map.
* **Channels-last.** Tokens are (N, C) rows: every 1x1 convolution is a plain GEMM, LayerNorm
  needs no transpose, cell scatter and gather move whole rows, and the 2D planes are NHWC
  (`torch.channels_last`) for the depthwise convolutions.
* **Reduced precision** (`precision="bf16"`): GEMMs and planes in bfloat16 (accumulating in
  fp32); the residual stream, the norms and the cell means stay fp32.
* **Chunking.** The embedding's (point, neighbour) work runs over chunks of points, which bounds
  its memory to a few tens of MB instead of N x K x C floats.

Usage, with the student of the `distill` stage::

    model, _ = load_student("cache/student", device)       # the checkpoint-compatible module
    fast = model.for_inference("auto")                     # = InferenceWaffleIron.from_model(...)
    with torch.inference_mode():
        out = fast(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy)
        per_scan = fast.run_batch(scans, device)            # or prepared scans, as the student

`out` is (B, out_channels, N) float32, as `WaffleIron.forward` returns; it agrees with it to
float rounding in fp32 and to a cosine of about 0.999+ in bf16 (`bench` checks both).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.students.waffleiron.inputs import PreparedScan, collate

if TYPE_CHECKING:  # the model imports this module for `WaffleIron.for_inference`
    from pipeline.students.waffleiron.model import (
        ChannelMix,
        PointEmbedding,
        SpatialMix,
        WaffleIron,
        WaffleIronConfig,
    )

Precision = Literal["auto", "fp32", "bf16"]


def bf16_supported(device: torch.device | str) -> bool:
    """Whether `device` has native bfloat16 GEMMs (CUDA with bf16, or a CPU with AVX512-BF16 / AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class InferenceOptions:
    """How `InferenceWaffleIron` computes.

    precision: "fp32", "bf16", or "auto" (bf16 where `bf16_supported`, else fp32).
    chunk_points: points per chunk of the embedding's neighbour work (memory ~ chunk x K x C).
    """

    precision: Precision = "auto"
    chunk_points: int = 1024

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"InferenceOptions.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.chunk_points < 1:
            raise ValueError(f"InferenceOptions.chunk_points must be >= 1, got {self.chunk_points}")

    def compute_dtype(self, device: torch.device | str) -> torch.dtype:
        if self.precision == "bf16" or (self.precision == "auto" and bf16_supported(device)):
            return torch.bfloat16
        return torch.float32


# --------------------------------------------------------------------------- folding helpers
# Folding is done in float64, then stored in the compute dtype, so it adds no rounding of its own.


def _batchnorm_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with bn(x) = a * x + b per channel, from the running statistics (eval mode)."""
    a = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return a, bn.bias.double() - a * bn.running_mean.double()


def _matrix(conv: nn.Conv1d | nn.Conv2d) -> torch.Tensor:
    """The (out, in) matrix of a 1x1 convolution, float64."""
    return conv.weight.detach().double().reshape(conv.weight.shape[0], conv.weight.shape[1])


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.data = weight.to(dtype).contiguous()
    if bias is not None:
        layer.bias.data = bias.to(dtype).contiguous()
    return layer


def _depthwise(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> nn.Conv2d:
    channels = weight.shape[0]
    conv = nn.Conv2d(channels, channels, weight.shape[-1], padding=weight.shape[-1] // 2, groups=channels)
    conv.weight.data = weight.to(dtype).contiguous(memory_format=torch.channels_last)
    conv.bias.data = bias.to(dtype)
    return conv


# --------------------------------------------------------------------------- folded parts


class FoldedEmbedding(nn.Module):
    """`PointEmbedding` with its BatchNorms folded, on (N, Cin) rows -> (N, C) float32.

    The original computes final(cat(conv1(bn(f)), max_k conv2(bn(f_k) - bn(f)))), where conv2 is
    BN, conv, BN, ReLU, conv. Since bn is affine, bn(f_k) - bn(f) = a * (f_k - f), and every map
    before the ReLU is affine, so the pre-activation of pair (point, k) is one small GEMM,
    `edge_in` applied to [f_k - f, 1] (the bias rides on the constant 1). After the ReLU,
    `edge_out` (conv2[4]) runs on the pairs, the max over k is taken and `local` (the second
    half of `final`) maps it; the point branch (conv1 and the first half of `final`) folds into
    one Cin -> C map, `point`. The differences are taken on the raw inputs in float32: the
    inputs hold absolute coordinates, so differencing after a bf16 GEMM would cancel badly.
    """

    def __init__(self, embed: PointEmbedding, dtype: torch.dtype) -> None:
        super().__init__()
        a0, b0 = _batchnorm_affine(embed.norm)  # on the raw inputs
        a1, b1 = _batchnorm_affine(embed.conv2[0])  # on the input differences
        a2, b2 = _batchnorm_affine(embed.conv2[2])  # after conv2[1]
        width = embed.final.weight.shape[0]
        w_final = _matrix(embed.final)
        w_point_half, w_local_half = w_final[:, :width], w_final[:, width:]
        w_conv1 = _matrix(embed.conv1)
        # point branch: final[:, :C] (conv1(a0 * f + b0)) + final.bias
        point_bias = w_point_half @ (w_conv1 @ b0 + embed.conv1.bias.double()) + embed.final.bias.double()
        self.point = _linear(w_point_half @ w_conv1 * a0[None, :], point_bias, torch.float32)
        # pairs, d = f_k - f: a2 * (W1 (a1 * (a0 * d) + b1)) + b2 = [W | c] [d, 1]
        w1 = _matrix(embed.conv2[1])
        edge_weight = a2[:, None] * w1 * (a1 * a0)[None, :]
        edge_bias = a2 * (w1 @ b1) + b2
        self.edge_in = _linear(torch.cat([edge_weight, edge_bias[:, None]], dim=1), None, dtype)
        self.edge_out = _linear(_matrix(embed.conv2[4]), None, dtype)
        self.local = _linear(w_local_half, None, dtype)

    def forward(self, features: torch.Tensor, neighbors: torch.Tensor, chunk: int) -> torch.Tensor:
        """features (N, Cin) float32, neighbors (N, K + 1) self first -> tokens (N, C) float32."""
        tokens = self.point(features)
        dtype = self.edge_in.weight.dtype
        for start in range(0, len(features), chunk):
            rows = slice(start, start + chunk)
            difference = features[neighbors[rows, 1:]] - features[rows].unsqueeze(1)  # (n, K, Cin)
            difference = F.pad(difference, (0, 1), value=1.0).to(dtype)  # the constant 1 of the bias
            hidden = self.edge_out(self.edge_in(difference).relu_()).amax(dim=1)  # (n, C)
            tokens[rows] += self.local(hidden)
        return tokens


@dataclass(frozen=True, eq=False)
class GridIndex:
    """How one scan's points meet one grid, computed once per scan and shared by its blocks.

    cells: int64 (N,) each point's cell; occupied: int64 (U,) the cells holding a real point,
    ascending; mean: (U, N) sparse CSR matrix whose row u averages the real points of cell
    occupied[u]; plane: (H * W, C) zeros in the compute dtype, reused by every block of the grid
    (each block writes the same occupied rows, so the other rows stay zero).
    """

    cells: torch.Tensor
    occupied: torch.Tensor
    mean: torch.Tensor
    plane: torch.Tensor

    @classmethod
    def build(cls, cells: torch.Tensor, occupancy: torch.Tensor, grid: tuple[int, int], width: int,
              dtype: torch.dtype) -> GridIndex:
        order = torch.argsort(cells, stable=True)
        real = occupancy[order] > 0
        order = order[real]
        occupied, counts = torch.unique_consecutive(cells[order], return_counts=True)
        crow = F.pad(counts.cumsum(0), (1, 0))
        values = (1.0 / counts.float()).repeat_interleave(counts)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            mean = torch.sparse_csr_tensor(crow, order, values, (len(occupied), len(cells)), check_invariants=False)
        plane = torch.zeros(grid[0] * grid[1], width, dtype=dtype, device=cells.device)
        return cls(cells, occupied, mean, plane)


class FoldedChannelMix(nn.Module):
    """`ChannelMix` on (N, C) rows: LayerNorm affine folded into `fc1`, LayerScale into `fc2`."""

    def __init__(self, mix: ChannelMix, dtype: torch.dtype) -> None:
        super().__init__()
        gamma, beta = mix.norm.weight.double(), mix.norm.bias.double()
        w1, w2 = _matrix(mix.mlp[0]), _matrix(mix.mlp[2])
        scale = mix.scale.weight.detach().double().reshape(-1)
        self.eps = mix.norm.eps
        self.fc1 = _linear(w1 * gamma[None, :], w1 @ beta + mix.mlp[0].bias.double(), dtype)
        self.fc2 = _linear(scale[:, None] * w2, scale * mix.mlp[2].bias.double(), dtype)

    def forward(self, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
        """tokens (N, C) float32 -> the same tensor, updated in place, `chunk` rows at a time.

        Each point's mix depends on its own row only. Chunks keep the norm, both layers and the
        residual add of a run of rows in cache: on the whole (N, C) matrix these memory-bound
        steps grow faster than N once it outgrows the cache (measured: 3-4x for 2x the points).
        """
        for start in range(0, len(tokens), chunk):
            rows = tokens[start:start + chunk]
            hidden = F.layer_norm(rows, rows.shape[-1:], eps=self.eps).to(self.fc1.weight.dtype)
            rows.add_(self.fc2(F.gelu(self.fc1(hidden))))
        return tokens


class FoldedSpatialMix(nn.Module):
    """`SpatialMix` on (N, C) rows with NHWC planes; LayerScale folded into the second conv.

    The LayerNorm affine stays: its shift would reach only the occupied cells through the mean,
    so it does not fold into the depthwise convs. Cell means are taken in float32 by a sparse
    (cells x points) matrix product, which is several times faster than a scatter-add.
    """

    def __init__(self, mix: SpatialMix, dtype: torch.dtype) -> None:
        super().__init__()
        self.grid = mix.grid
        self.norm = nn.LayerNorm(mix.norm.normalized_shape, eps=mix.norm.eps)
        self.norm.load_state_dict(mix.norm.state_dict())
        scale = mix.scale.weight.detach().double().reshape(-1, 1, 1, 1)
        first, second = mix.ffn[0], mix.ffn[2]
        self.conv1 = _depthwise(first.weight.double(), first.bias.double(), dtype)
        self.conv2 = _depthwise(second.weight.double() * scale, second.bias.double() * scale.reshape(-1), dtype)

    def forward(self, tokens: torch.Tensor, index: GridIndex) -> torch.Tensor:
        """tokens (N, C) float32 -> the same tensor, updated in place."""
        height, width = self.grid
        channels = tokens.shape[1]
        means = index.mean @ self.norm(tokens)  # (U, C) float32
        index.plane.index_copy_(0, index.occupied, means.to(index.plane.dtype))
        # (H*W, C) rows are an NHWC image: view it as NCHW with channels_last strides, no copy.
        plane = index.plane.view(1, height, width, channels).permute(0, 3, 1, 2)
        plane = self.conv2(torch.ops.aten.gelu_(self.conv1(plane)))
        plane = plane.permute(0, 2, 3, 1).reshape(height * width, channels)
        return tokens.add_(plane.index_select(0, index.cells))


class FoldedBackbone(nn.Module):
    """The `depth` blocks: spatial mix on grid d mod G, then channel mix, on (N, C) float32 tokens."""

    def __init__(self, model: WaffleIron, dtype: torch.dtype) -> None:
        super().__init__()
        self.spatial_mix = nn.ModuleList(FoldedSpatialMix(m, dtype) for m in model.waffleiron.spatial_mix)
        self.channel_mix = nn.ModuleList(FoldedChannelMix(m, dtype) for m in model.waffleiron.channel_mix)

    def forward(self, tokens: torch.Tensor, grids: list[GridIndex], chunk: int) -> torch.Tensor:
        for d, (spatial, channel) in enumerate(zip(self.spatial_mix, self.channel_mix)):
            tokens = channel(spatial(tokens, grids[d % len(grids)]), chunk)
        return tokens


# --------------------------------------------------------------------------- the model


class InferenceWaffleIron(nn.Module):
    """A folded, channels-last, optionally bf16 copy of a `WaffleIron`, for inference only.

    Build it with `from_model`; call it like `WaffleIron` (same inputs, (B, out_channels, N)
    float32 output). It has no training mode, no drop path and no checkpointing, and its
    state_dict is not a ScaLR checkpoint: keep the source model for saving and fine-tuning.
    """

    def __init__(self, model: WaffleIron, options: InferenceOptions, dtype: torch.dtype) -> None:
        super().__init__()
        self.config: WaffleIronConfig = model.config
        self.options = options
        self.dtype = dtype
        self.embed = FoldedEmbedding(model.embed, dtype)
        self.backbone = FoldedBackbone(model, dtype)
        head = list(model.classif) if model.config.head == "mlp" else [model.classif]
        convs = [layer for layer in head if isinstance(layer, nn.Conv1d)]
        self.head = nn.ModuleList(_linear(_matrix(c), c.bias.double(), dtype) for c in convs)
        self.requires_grad_(False).eval()

    @classmethod
    @torch.no_grad()
    def from_model(
        cls, model: WaffleIron, options: InferenceOptions = InferenceOptions(), device: torch.device | str | None = None
    ) -> InferenceWaffleIron:
        """Fold `model` (left unchanged, in eval statistics) into an inference model on `device`
        (default: the model's device); the compute dtype follows `options.precision` there."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        return cls(model, options, options.compute_dtype(device)).to(device)

    def train(self, mode: bool = True) -> InferenceWaffleIron:
        if mode:
            raise RuntimeError("InferenceWaffleIron is inference-only; train the source WaffleIron instead")
        return super().train(False)

    def forward_scan(
        self, features: torch.Tensor, neighbors: torch.Tensor, cells: torch.Tensor, occupancy: torch.Tensor
    ) -> torch.Tensor:
        """One scan: features (N, Cin), neighbors (N, K + 1), cells (G, N), occupancy (N,) -> (N, D) float32."""
        tokens = self.embed(features.float().contiguous(), neighbors, self.options.chunk_points)
        grids = [GridIndex.build(cells[g], occupancy, grid, self.config.width, self.dtype)
                 for g, grid in enumerate(self.config.grids)]
        hidden = self.backbone(tokens, grids, self.options.chunk_points).to(self.dtype)
        for i, layer in enumerate(self.head):
            hidden = layer(hidden)
            if i < len(self.head) - 1:
                hidden = hidden.relu_()
        return hidden.float()

    def forward(
        self,
        features: torch.Tensor,
        neighbors: torch.Tensor,
        cell_indices: torch.Tensor,
        occupancy: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """WaffleIron's batch layout in and out: (B, Cin, N), (B, N, K + 1), (B, G, N), (B, N) -> (B, D, N)."""
        batch, _, num_points = features.shape
        if occupancy is None:
            occupancy = features.new_ones(batch, num_points)
        outputs = [
            self.forward_scan(features[b].T, neighbors[b], cell_indices[b], occupancy[b]) for b in range(batch)
        ]
        return torch.stack(outputs).transpose(1, 2)

    def run_batch(self, scans: Sequence[PreparedScan], device: torch.device) -> list[torch.Tensor]:
        """Prepared scans, as `WaffleIron.run_batch` takes them: one (n_kept, out_channels) tensor per scan."""
        return collate(scans).to(device).run(self)


__all__ = ["InferenceOptions", "InferenceWaffleIron", "bf16_supported"]
