"""The params sections of the segmenter stages: one `*Config` per stage, sharing `TrainingConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config_loading import FieldError, require

Init = Literal["distilled", "random"]


@dataclass(frozen=True)
class TrainingConfig:
    """What every segmenter's training shares (`loop.train_segmenter`).

    epochs over the training scans, `batch_size` scans per step, AdamW at `lr` with a cosine
    decay to 0 and `weight_decay`; each scan is cut to `max_points` points (voxels) per step
    (uniform subsample) and, with `augment`, rotated / flipped / scaled as in distillation.
    seed: the scan order, the augmentations, the head's init and the label fraction's scans.
    """

    epochs: int = 10
    batch_size: int = 2
    lr: float = 0.001
    weight_decay: float = 0.0001
    max_points: int = 4000
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        require(self, positive=("epochs", "batch_size", "lr", "max_points"), non_negative=("weight_decay",))


@dataclass(frozen=True)
class LabelledFraction:
    """fraction: the share of the training split's scans whose labels are used, chosen by scan
    with `seed` (at least one scan)."""

    fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise FieldError("fraction", f"must be in (0, 1], got {self.fraction!r}")


@dataclass(frozen=True)
class LinearProbeConfig(TrainingConfig, LabelledFraction):
    """`linear_probe:` a linear head on the frozen cached point features (ScaLR / ScaLR+)."""

    lr: float = 0.01
    augment: bool = False  # cached features: nothing to augment

    def __post_init__(self) -> None:
        TrainingConfig.__post_init__(self)
        LabelledFraction.__post_init__(self)


@dataclass(frozen=True)
class FinetuneConfig(TrainingConfig, LabelledFraction):
    """`finetune:` the student plus a linear head trained end to end (ScaLR+, D-DITR).

    init: distilled (cache/student) | random (the same architecture, freshly initialised:
    D-DITR's baseline, with the same budget). The architecture is the distilled student's
    (`student.arch`: WaffleIron or the sparse UNet).
    """

    init: Init = "distilled"

    def __post_init__(self) -> None:
        TrainingConfig.__post_init__(self)
        LabelledFraction.__post_init__(self)


@dataclass(frozen=True)
class InjectConfig(TrainingConfig, LabelledFraction):
    """`inject:` DITR's injection of the frozen teacher features (random init, trained on the
    labelled fraction). arch: sparse_unet (into every decoder stage) | waffleiron (after a few
    evenly spaced blocks), built from `student.<arch>`. shuffle_teacher: the sabotage check:
    the teacher features are permuted among each scan's visible points (train and test)."""

    lr: float = 0.002
    arch: Literal["sparse_unet", "waffleiron"] = "sparse_unet"
    shuffle_teacher: bool = False

    def __post_init__(self) -> None:
        TrainingConfig.__post_init__(self)
        LabelledFraction.__post_init__(self)


@dataclass(frozen=True)
class SelfTrainConfig(TrainingConfig):
    """`self_train:` the distilled student with a head trained on the IGLOSS pseudo-labels of the
    distillation split, with SAS's temporal ensembling: each point's target is the argmax of an
    exponential moving average of its predicted class probabilities across epochs,
    `ensemble = alpha * ensemble + (1 - alpha) * prediction`, started from the pseudo-label.
    shuffle_pseudo_labels: the sabotage check: the pseudo-labels permuted within each scan."""

    alpha: float = 0.9
    shuffle_pseudo_labels: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha < 1.0:
            raise FieldError("alpha", f"must be in [0, 1), got {self.alpha!r}")
