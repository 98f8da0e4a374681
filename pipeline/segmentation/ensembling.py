"""SAS's temporal-ensembling self-distillation (seed 001, section 3.4), on pseudo-labels.

Each training point keeps an exponential moving average of the class probabilities predicted for
it in earlier epochs, `ensemble = alpha * ensemble + (1 - alpha) * prediction`, started from the
one-hot IGLOSS pseudo-label; its training target is the argmax of the average (a point without a
pseudo-label, 255, has none). Held in float16, one (N, K) array per training scan.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.datasets.base import IGNORE_LABEL


class TemporalEnsemble:
    def __init__(self, num_classes: int, alpha: float) -> None:
        self.num_classes, self.alpha = num_classes, alpha
        self.average: dict[str, np.ndarray] = {}

    def targets(self, scan_id: str, labels: np.ndarray, point_index: np.ndarray) -> np.ndarray:
        """int64 targets of the points `point_index` of a scan whose pseudo-labels are `labels`."""
        if scan_id not in self.average:
            start = np.zeros((len(labels), self.num_classes), dtype=np.float16)
            labelled = np.flatnonzero(labels != IGNORE_LABEL)
            start[labelled, labels[labelled]] = 1
            self.average[scan_id] = start
        average = self.average[scan_id][point_index]
        return np.where(average.max(axis=1) > 0, average.argmax(axis=1), IGNORE_LABEL).astype(np.int64)

    def update(self, scan_id: str, point_index: np.ndarray, probabilities: torch.Tensor) -> None:
        """Fold the predicted (n, K) probabilities of the points `point_index` into their averages
        (points without a pseudo-label stay without a target)."""
        average = self.average[scan_id]
        keep = average[point_index].max(axis=1) > 0
        rows = point_index[keep]
        new = probabilities.detach().float().cpu().numpy()[keep]
        average[rows] = (self.alpha * average[rows].astype(np.float32) + (1 - self.alpha) * new).astype(np.float16)
