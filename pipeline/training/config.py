"""The `distill:` params section: how the student is trained, read as it is by the loop and the schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config_loading import FieldError, require
from pipeline.precision import Precision

CameraRule = Literal["per_scan_epoch", "per_point_fixed", "per_point_epoch"]
PointsRule = Literal["taught", "scan"]
CapRule = Literal["ball", "uniform"]
ScheduleRule = Literal["reference", "shifted"]
TeacherSource = Literal["store", "online"]


@dataclass(frozen=True)
class DistillConfig:
    """Distillation of the student from the cached teacher features. The defaults are the ScaLR+
    recipe (`../shared/REFERENCE.md`, "Distillation").

    The recipe, one setting per way ScaLR+, DITR and this project's first recipe differ:

    camera: which camera teaches (`pipeline.training.recipe`). per_scan_epoch (ScaLR+): one
        random camera per scan among those that see it, drawn again every epoch;
        per_point_fixed (the first recipe here): one random camera per point among those that
        see it, the same in every epoch; per_point_epoch (DITR): one random camera per point,
        drawn again every epoch.
    points: which points the network sees. taught (ScaLR+): only the points a drawn camera
        teaches (with per_scan_epoch: those that project into its image); scan (DITR, the
        first recipe): the whole scan, the loss on the taught points only.
    cap: how a scan is cut to `max_points` after voxelisation (and the `points` crop). ball
        (ScaLR+): the `max_points` points nearest to one randomly drawn point; uniform (the
        first recipe): a uniform random subsample, which thins the cloud.
    schedule: the lr factor (`pipeline.training.schedule`). reference (ScaLR+): warm-up k / W
        (0 at the first step), then the lr at the cool-down start falls linearly to 0;
        shifted (the first recipe): warm-up (k + 1) / W, and the rsqrt decay goes on under the
        linear cool-down ramp.
    drop_last: drop an epoch's last partial batch (ScaLR+: true).

    The schedule warms up linearly for `warmup_epochs`, decays as a reciprocal square root with
    timescale `rsqrt_timescale_epochs`, and cools down to 0 over the last `cooldown_epochs`
    (ScaLR+: from epoch 63 of 65); AdamW with `lr` and `weight_decay`.
    `batch_size` is the global batch: under torchrun the processes share it, and the result
    is the single process's (`pipeline.training.ddp`).

    max_points, augment: the training augmentations (`augment: false` trains on the scans as
    they are, uncut), with at most `max_points` points kept per scan (`cap`).
    precision: fp32 | bf16 (autocast, CPU or CUDA) | fp16 (autocast + GradScaler, CUDA only).
    gradient_checkpointing: recompute the student's block activations in the backward pass.
    checkpoint_every_epochs: save the training state every this many epochs, so an
    interrupted run continues from there (`pipeline.training.checkpoint`).
    teacher_weights: with several teachers (`extra_teachers`), the weight of each teacher's
    head in the loss (a weighted sum), by teacher name (`teacher` for the `teacher:` section);
    a teacher not named weighs 1.
    teacher_source: where the teacher targets come from. store: the patch features the
    teacher_features stage cached (cache/teacher_features); online (the reference's way): no
    feature store for the distillation sources, the first teacher (`teacher:`) runs inside each
    step on the cameras of the rows that teach, its features rounded to fp16 as the store keeps
    them, so the targets are the store's (README, "Artifact sizes"). Online runs the first
    teacher only: with `extra_teachers` it is refused.
    """

    epochs: int = 65
    batch_size: int = 8
    lr: float = 0.002
    weight_decay: float = 0.03
    warmup_epochs: float = 1.0
    rsqrt_timescale_epochs: float = 0.45
    cooldown_epochs: float = 2.0
    camera: CameraRule = "per_scan_epoch"
    points: PointsRule = "taught"
    cap: CapRule = "ball"
    schedule: ScheduleRule = "reference"
    drop_last: bool = True
    max_points: int = 20000
    augment: bool = True
    seed: int = 0
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    checkpoint_every_epochs: int = 1
    teacher_weights: dict[str, float] = field(default_factory=dict)
    teacher_source: TeacherSource = "store"

    def __post_init__(self) -> None:
        for name, weight in self.teacher_weights.items():
            if not weight > 0:
                raise FieldError(f"teacher_weights.{name}", f"must be > 0, got {weight!r}")
        require(self, positive=("epochs", "batch_size", "lr", "rsqrt_timescale_epochs", "max_points",
                                "checkpoint_every_epochs"),
                non_negative=("weight_decay", "warmup_epochs", "cooldown_epochs", "seed"))
        if not 0 <= self.warmup_epochs <= self.cooldown_start_epoch <= self.epochs:
            raise ValueError(
                "need 0 <= warmup_epochs <= epochs and cooldown_epochs >= 0, got warmup_epochs "
                f"{self.warmup_epochs}, epochs {self.epochs}, cooldown_epochs {self.cooldown_epochs}")

    @property
    def cooldown_start_epoch(self) -> float:
        """Where the linear cooldown starts: `cooldown_epochs` before the end, never inside the warmup."""
        return max(self.epochs - self.cooldown_epochs, self.warmup_epochs)
