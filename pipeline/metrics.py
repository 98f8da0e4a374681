"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, oAcc, mAcc.

Conventions (REFERENCE "Labelling"):

* confusion[t, p] counts points of true class t predicted as p; points whose truth is
  the ignore label (255) are left out;
* IoU_k = TP / (TP + FP + FN), NaN for a class that is neither in the truth nor in the
  predictions; mIoU is the NaN-mean over classes (a class predicted but absent from the
  truth has IoU 0 and counts);
* oAcc = trace / total; mAcc = mean recall over the classes present in the truth.

Accumulate over scans by summing confusion matrices (`ConfusionAccumulator`).
`EvaluateConfig` is the `evaluate:` params section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config_loading import require

IGNORE_LABEL = 255


@dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate:` params section. preview_scans: how many evenly spaced scans of the
    evaluation split get a bird's-eye picture of prediction against truth."""

    preview_scans: int = 3

    def __post_init__(self) -> None:
        require(self, non_negative=("preview_scans",))


def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int | None = IGNORE_LABEL
) -> np.ndarray:
    """(K, K) int64 counts, rows = truth, columns = prediction.

    Truth equal to `ignore` is skipped; any other truth or prediction outside [0, K)
    is an error rather than being dropped silently.
    """
    pred = np.asarray(pred).ravel()
    truth = np.asarray(truth).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"prediction and truth differ in size: {pred.size} vs {truth.size}")
    keep = truth != ignore if ignore is not None else np.ones(truth.shape, dtype=bool)
    pred, truth = pred[keep].astype(np.int64), truth[keep].astype(np.int64)
    for name, values in (("truth", truth), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} labels outside [0, {num_classes}) (ignore={ignore}): "
                             f"min {values.min()}, max {values.max()}")
    counts = np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Metrics of one confusion matrix. Build with `from_confusion`.

    iou, accuracy: (K,) float64 per class (accuracy = recall), NaN where undefined.
    """

    confusion: np.ndarray
    iou: np.ndarray
    accuracy: np.ndarray
    miou: float
    oacc: float
    macc: float
    class_names: tuple[str, ...]

    @classmethod
    def from_confusion(
        cls, confusion: np.ndarray, class_names: Sequence[str] | None = None
    ) -> SegmentationMetrics:
        confusion = np.asarray(confusion, dtype=np.int64)
        k = confusion.shape[0]
        if confusion.shape != (k, k):
            raise ValueError(f"confusion matrix must be square, got {confusion.shape}")
        names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(k))
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
        tp = np.diag(confusion).astype(np.float64)
        truth = confusion.sum(axis=1).astype(np.float64)
        predicted = confusion.sum(axis=0).astype(np.float64)
        union = truth + predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            accuracy = np.where(truth > 0, tp / truth, np.nan)
        total = confusion.sum()
        return cls(
            confusion=confusion,
            iou=iou,
            accuracy=accuracy,
            miou=_nanmean(iou),
            oacc=float(tp.sum() / total) if total else math.nan,
            macc=_nanmean(accuracy),
            class_names=names,
        )

    @property
    def num_points(self) -> int:
        return int(self.confusion.sum())

    def to_dict(self) -> dict:
        """JSON-ready: fractions in [0, 1], NaN as None (null)."""
        return {
            "miou": _json_number(self.miou),
            "oacc": _json_number(self.oacc),
            "macc": _json_number(self.macc),
            "num_points": self.num_points,
            "iou": {n: _json_number(v) for n, v in zip(self.class_names, self.iou)},
            "accuracy": {n: _json_number(v) for n, v in zip(self.class_names, self.accuracy)},
        }


class ConfusionAccumulator:
    """Sums confusion matrices over scans.

    >>> acc = ConfusionAccumulator(num_classes=3)
    >>> for pred, truth in scans: acc.add(pred, truth)      # doctest: +SKIP
    >>> acc.metrics(class_names).miou                       # doctest: +SKIP
    """

    def __init__(self, num_classes: int, ignore: int | None = IGNORE_LABEL) -> None:
        self.num_classes = num_classes
        self.ignore = ignore
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        self.confusion += confusion_matrix(pred, truth, self.num_classes, self.ignore)

    def metrics(self, class_names: Sequence[str] | None = None) -> SegmentationMetrics:
        return SegmentationMetrics.from_confusion(self.confusion.copy(), class_names)
