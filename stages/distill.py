"""Stage distill: train the 3D student to reproduce the cached teacher features.

    python -m stages.distill
    torchrun --nproc_per_node 4 -m stages.distill     # 4 processes (GPUs), the same result

Reads the distillation split's scans, assignments and teacher features; writes
cache/student/ (model.safetensors, config.json) and plots/distill/train_loss.csv (one row per
optimiser step: step, epoch, lr, loss, pairs), declared as a DVC plot. Only rank 0 writes.

While it trains it keeps its last checkpoint in cache/distill_checkpoint/ (every
`distill.checkpoint_every_epochs` epochs): a killed run, rerun by hand or by `dvc repro`,
continues from there. The folder is not a DVC out (DVC deletes outs before it reruns a
stage, and a `persist` out would switch off the run cache of this stage); the stage
deletes it once the student is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict

import numpy as np
import torch

from pipeline.checkpoint import Checkpoints
from pipeline.config_loading import ConfigError
from pipeline.datasets import open_reader
from pipeline.distillation import ScheduleConfig
from pipeline.distributed import launched
from pipeline.precision import check_precision
from pipeline.store import RaggedReader, atomic_output
from pipeline.student_io import save_student
from pipeline.students import build_student
from pipeline.students.point_inputs import Augmentation
from pipeline.training import DistillSample, TrainingSettings, distill_student
from stages.common import (
    ASSIGNMENTS,
    CACHE,
    LOSS_LOG,
    STUDENT,
    TEACHER_FEATURES,
    human_size,
    stage_arguments,
    start_stage,
    summary,
)

CHECKPOINT = CACHE / "distill_checkpoint"


class SampleLoader:
    """Loads one training scan: its points and the teacher target of each assigned point."""

    def __init__(self, params, split: str) -> None:
        self.reader = open_reader(params.dataset, split)
        self.assignments = RaggedReader(ASSIGNMENTS / split)
        self.patches = RaggedReader(TEACHER_FEATURES / split / "patches")
        self.taps = RaggedReader(TEACHER_FEATURES / split / "taps")
        self.dim = self.patches.columns["feature"].inner_shape[0]

    def __call__(self, scan_id: str) -> DistillSample:
        points = self.reader.read(scan_id).points
        point_index = self.assignments.read(scan_id, ["point_index"])["point_index"]
        taps = self.taps.read(scan_id)
        target_row = np.full(len(points), -1, dtype=np.int64)
        target_row[point_index] = np.arange(len(point_index))
        return DistillSample(
            points=points,
            target_row=target_row,
            patch_features=torch.from_numpy(self.patches.read(scan_id, ["feature"])["feature"]),
            tap=torch.from_numpy(taps["tap"]),
            weight=torch.from_numpy(taps["weight"]),
        )


def run_fingerprint(params, loader: SampleLoader) -> str:
    """What makes two distill runs one run, hashed: a checkpoint of another run is ignored.

    The params the stage reads and the identity of its data: the assignment and teacher
    feature attributes (the teacher id includes a hash of its weights), the scans and their
    row counts. Left out: what does not change the result, so changing it keeps the
    checkpoint (turning gradient checkpointing on after running out of memory, say): how
    often to checkpoint, gradient checkpointing and the number of processes.
    """
    distill = asdict(params.distill)
    for setting in ("checkpoint_every_epochs", "gradient_checkpointing"):
        del distill[setting]
    identity = {
        "dataset": asdict(params.dataset),
        "student": asdict(params.student),
        "distill": distill,
        "assignments": [loader.assignments.attributes, loader.assignments.scan_ids,
                        loader.assignments.offsets.tolist()],
        "teacher_features": [loader.patches.attributes, loader.patches.offsets.tolist()],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("distill", args)
    cfg = params.distill
    with summary("distill") as facts:
        loader = SampleLoader(params, params.dataset.distill_split)
        arch = params.student.arch
        if params.student.out_channels != loader.dim:
            raise ConfigError(
                f"{args.params}: student.{arch}.out_channels is {params.student.out_channels} but the teacher "
                f"features have {loader.dim} channels; set student.{arch}.out_channels: {loader.dim}")
        settings = TrainingSettings(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            schedule=ScheduleConfig(epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                    rsqrt_timescale_epochs=cfg.rsqrt_timescale_epochs,
                                    cooldown_start_epoch=max(cfg.epochs - cfg.cooldown_epochs, cfg.warmup_epochs),
                                    lr=cfg.lr, weight_decay=cfg.weight_decay),
            augmentation=Augmentation(max_points=cfg.max_points) if cfg.augment else None,
            seed=cfg.seed,
            precision=cfg.precision,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )
        torch.manual_seed(cfg.seed)  # weight init
        model = build_student(params.student.config)
        checkpoints = Checkpoints(CHECKPOINT, run_fingerprint(params, loader), cfg.checkpoint_every_epochs)
        with launched() as world:  # one process, or this rank of torchrun's (its GPU on CUDA)
            check_precision(cfg.precision, world.device, f"{args.params}: distill.precision")
            history = distill_student(model, loader.assignments.scan_ids, loader, settings,
                                      params.dataset.intensity_stats(), world.device,
                                      checkpoints=checkpoints, world=world)
        if not world.is_main:
            return
        with atomic_output(STUDENT) as tmp:
            save_student(tmp, model, {"teacher": loader.patches.attributes.get("teacher", ""),
                                      "epochs": cfg.epochs, "steps": len(history),
                                      "final_loss": history[-1].loss})
        with atomic_output(LOSS_LOG) as tmp:
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(asdict(history[0])))
                writer.writeheader()
                writer.writerows(asdict(r) for r in history)
        checkpoints.clear()  # the run is done; a finished checkpoint could only mislead a later run
        facts["steps"] = len(history)
        facts["loss"] = f"{history[0].loss:.4f} -> {history[-1].loss:.4f}"
        facts["wrote"] = f"{STUDENT} ({human_size(STUDENT)}), {LOSS_LOG}"


if __name__ == "__main__":
    main()
