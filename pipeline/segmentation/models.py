"""The segmenters the loop trains: each prepares a scan and maps prepared scans to class logits.

Every segmenter has `prepare(scan, augmentation, rng)` -> `Prepared` (what the network reads,
the finite points it predicts in output order, and for every finite point the output row it
takes) and `logits(prepared, device)` -> one (n_kept, K) tensor per scan.

- `FeatureProbe`: a linear head on cached point features (the backbone stays frozen: it is not
  even run);
- `BackboneSegmenter`: a student (`pipeline.students`) and a linear head on its output, both
  trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.segmentation.data import SegmentationScan
from pipeline.students import Student
from pipeline.students.inputs import Augmentation, random_subsample


@dataclass(frozen=True, eq=False)
class Prepared:
    """One scan ready for a segmenter. inputs: what its network reads. point_index: int64
    (n_kept,) the finite point of each output row. back_projection: int64 (N,) the output row
    each finite point takes."""

    inputs: Any
    point_index: np.ndarray
    back_projection: np.ndarray


class FeatureProbe(nn.Module):
    """A linear head on the frozen cached point features (ScaLR's linear probing)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(feature_dim, num_classes)

    def prepare(self, scan: SegmentationScan, augmentation: Augmentation | None,
                rng: np.random.Generator | None) -> Prepared:
        if scan.features is None:
            raise ValueError(f"scan {scan.scan_id}: the linear probe needs the cached point features")
        everything = np.arange(len(scan.points), dtype=np.int64)
        rows = everything if rng is None else random_subsample(len(everything), getattr(augmentation, "max_points",
                                                                                         None), rng)
        return Prepared(np.asarray(scan.features[rows], dtype=np.float32), rows, everything)

    def logits(self, prepared: Sequence[Prepared], device: torch.device) -> list[torch.Tensor]:
        return [self.head(torch.from_numpy(p.inputs).to(device)) for p in prepared]


class BackboneSegmenter(nn.Module):
    """A student and a linear head on its output, trained end to end (ScaLR+ and D-DITR fine-tuning)."""

    def __init__(self, backbone: Student, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.out_channels, num_classes)

    def prepare(self, scan: SegmentationScan, augmentation: Augmentation | None,
                rng: np.random.Generator | None) -> Prepared:
        inputs = self.backbone.config.prepare(scan.points, scan.intensity_stats, augmentation=augmentation, rng=rng)
        return Prepared(inputs, inputs.point_index, inputs.back_projection)

    def logits(self, prepared: Sequence[Prepared], device: torch.device) -> list[torch.Tensor]:
        return [self.head(output) for output in self.backbone.run_batch([p.inputs for p in prepared], device)]
