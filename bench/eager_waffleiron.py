"""The straightforward eager build of WaffleIron that benchmark 2 measures ours against.

Written from REFERENCE.md ("WaffleIron / ScaLR+ student") the plain way: the module tree and
names of the checkpoint, (B, C, N) tensors throughout, BatchNorms applied as layers, the
LayerNorm over channels by transposing, cell means by scatter-add and division, and the grid
read back by indexing. It loads the same state_dict as `pipeline.students.waffleiron.WaffleIron`
strictly, so both compute the same function from the same weights. Inference only.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.students.waffleiron import WaffleIronConfig


class EagerEmbedding(nn.Module):
    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(cin)
        self.conv1 = nn.Conv1d(cin, width, 1)
        self.conv2 = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 1, bias=False))
        self.final = nn.Conv1d(2 * width, width, 1)

    def forward(self, x: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)  # (B, Cin, N)
        batch, cin, n = x.shape
        nb = neighbors[:, :, 1:]  # skip the point itself
        gathered = torch.stack([x[b][:, nb[b]] for b in range(batch)])  # (B, Cin, N, K)
        local = self.conv2(gathered - x.unsqueeze(-1)).max(dim=3).values
        return self.final(torch.cat([self.conv1(x), local], dim=1))


class EagerChannelMix(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Conv1d(width, width, 1), nn.GELU(), nn.Conv1d(width, width, 1))
        self.scale = nn.Conv1d(width, width, 1, groups=width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return x + self.scale(self.mlp(y))


class EagerSpatialMix(nn.Module):
    def __init__(self, width: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.GELU(),
                                 nn.Conv2d(width, width, 3, padding=1, groups=width))
        self.scale = nn.Conv1d(width, width, 1, groups=width, bias=False)

    def forward(self, x: torch.Tensor, cells: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
        batch, width, n = x.shape
        h, w = self.grid
        y = self.norm(x.transpose(1, 2)).transpose(1, 2) * occupancy.unsqueeze(1)
        sums = torch.zeros(batch, width, h * w, dtype=x.dtype, device=x.device)
        sums.scatter_add_(2, cells.unsqueeze(1).expand(-1, width, -1), y)
        counts = torch.zeros(batch, 1, h * w, dtype=x.dtype, device=x.device)
        counts.scatter_add_(2, cells.unsqueeze(1), occupancy.unsqueeze(1))
        plane = (sums / counts.clamp(min=1)).reshape(batch, width, h, w)
        plane = self.ffn(plane).reshape(batch, width, h * w)
        back = torch.stack([plane[b][:, cells[b]] for b in range(batch)])  # (B, C, N)
        return x + self.scale(back)


class EagerBackbone(nn.Module):
    def __init__(self, config: WaffleIronConfig) -> None:
        super().__init__()
        grids = config.grids
        self.channel_mix = nn.ModuleList(EagerChannelMix(config.width) for _ in range(config.depth))
        self.spatial_mix = nn.ModuleList(EagerSpatialMix(config.width, grids[d % len(grids)])
                                         for d in range(config.depth))

    def forward(self, x: torch.Tensor, cell_indices: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
        grids = cell_indices.shape[1]
        for d, (spatial, channel) in enumerate(zip(self.spatial_mix, self.channel_mix)):
            x = channel(spatial(x, cell_indices[:, d % grids], occupancy))
        return x


class EagerWaffleIron(nn.Module):
    """forward(features (B, Cin, N), neighbors (B, N, K+1), cell_indices (B, G, N), occupancy (B, N))
    -> (B, out_channels, N)."""

    def __init__(self, config: WaffleIronConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = EagerEmbedding(config.input_channels, config.width)
        self.waffleiron = EagerBackbone(config)
        if config.head == "mlp":
            self.classif = nn.Sequential(nn.Conv1d(config.width, config.head_hidden, 1), nn.ReLU(),
                                         nn.Conv1d(config.head_hidden, config.out_channels, 1))
        else:
            self.classif = nn.Conv1d(config.width, config.out_channels, 1)

    def forward(self, features, neighbors, cell_indices, occupancy):
        return self.classif(self.waffleiron(self.embed(features, neighbors), cell_indices, occupancy))
