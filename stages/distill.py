"""Stage distill: train the 3D student to reproduce the cached teacher features.

    python -m stages.distill
    torchrun --nproc_per_node 4 -m stages.distill     # 4 processes (GPUs), the same result

Reads the scans, assignments and teacher features of the distillation split and of each
entry of `distill_datasets` (merged into one training set, each dataset with its own
intensity standardisation, as ScaLR+ merges nuScenes, SemanticKITTI and PandaSet); writes
cache/student/ (model.safetensors, config.json) and plots/distill/train_loss.csv (one row per
optimiser step: step, epoch, lr, loss, pairs) and its picture plots/distill/train_loss.png,
both declared as DVC plots. Only rank 0 writes.

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
from pipeline.viz import save_loss_curve
from stages.common import (
    ASSIGNMENTS,
    CACHE,
    LOSS_LOG,
    LOSS_PICTURE,
    STUDENT,
    TEACHER_FEATURES,
    SplitSource,
    distill_sources,
    human_size,
    stage_arguments,
    start_stage,
    summary,
)

CHECKPOINT = CACHE / "distill_checkpoint"


class SourceLoader:
    """Loads training scans of one distillation source: points, and the teacher target of each
    assigned point."""

    def __init__(self, source: SplitSource) -> None:
        self.source = source
        self.reader = open_reader(source.dataset, source.split)
        self.intensity_stats = source.dataset.intensity_stats()
        self.assignments = RaggedReader(ASSIGNMENTS / source.key)
        self.patches = RaggedReader(TEACHER_FEATURES / source.key / "patches")
        self.taps = RaggedReader(TEACHER_FEATURES / source.key / "taps")
        self.dim = self.patches.columns["feature"].inner_shape[0]

    def __call__(self, scan_id: str) -> DistillSample:
        points = self.reader.read(scan_id).points
        point_index = self.assignments.read(scan_id, ["point_index"])["point_index"]
        taps = self.taps.read(scan_id)
        target_row = np.full(len(points), -1, dtype=np.int64)
        target_row[point_index] = np.arange(len(point_index))
        return DistillSample(
            points=points,
            intensity_stats=self.intensity_stats,
            target_row=target_row,
            patch_features=torch.from_numpy(self.patches.read(scan_id, ["feature"])["feature"]),
            tap=torch.from_numpy(taps["tap"]),
            weight=torch.from_numpy(taps["weight"]),
        )

    def identity(self) -> list:
        """The assignment and teacher feature attributes, scans and row counts of this source."""
        return [self.source.key, self.assignments.attributes, self.assignments.scan_ids,
                self.assignments.offsets.tolist(), self.patches.attributes, self.patches.offsets.tolist()]


class DistillationSet:
    """The scans of every distillation source (`stages.common.distill_sources`) as one training set.

    A scan's id here is `<source key>/<scan id>`, so scans of different datasets never clash.
    """

    def __init__(self, sources: list[SplitSource]) -> None:
        self.loaders = [SourceLoader(source) for source in sources]
        teachers = {loader.source.key: (loader.patches.attributes.get("teacher", ""), loader.dim)
                    for loader in self.loaders}
        if len(set(teachers.values())) > 1:
            raise ValueError(f"{TEACHER_FEATURES}: the distillation sources were encoded by different teachers "
                             f"{teachers}; rerun `dvc repro teacher_features`")
        self.teacher, self.dim = next(iter(teachers.values()))
        self._scans = {f"{loader.source.key}/{scan_id}": (loader, scan_id)
                       for loader in self.loaders for scan_id in loader.assignments.scan_ids}
        self.scan_ids = tuple(self._scans)

    def __call__(self, scan_id: str) -> DistillSample:
        loader, source_scan_id = self._scans[scan_id]
        return loader(source_scan_id)


def run_fingerprint(params, data: DistillationSet) -> str:
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
        "distill_datasets": {name: asdict(d) for name, d in params.distill_datasets.items()},
        "student": asdict(params.student),
        "distill": distill,
        "sources": [loader.identity() for loader in data.loaders],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("distill", args)
    cfg = params.distill
    with summary("distill") as facts:
        data = DistillationSet(distill_sources(params))
        arch = params.student.arch
        if params.student.out_channels != data.dim:
            raise ConfigError(
                f"{args.params}: student.{arch}.out_channels is {params.student.out_channels} but the teacher "
                f"features have {data.dim} channels; set student.{arch}.out_channels: {data.dim}")
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
        checkpoints = Checkpoints(CHECKPOINT, run_fingerprint(params, data), cfg.checkpoint_every_epochs)
        with launched() as world:  # one process, or this rank of torchrun's (its GPU on CUDA)
            check_precision(cfg.precision, world.device, f"{args.params}: distill.precision")
            history = distill_student(model, data.scan_ids, data, settings, world.device,
                                      checkpoints=checkpoints, world=world)
        if not world.is_main:
            return
        with atomic_output(STUDENT) as tmp:
            save_student(tmp, model, {"teacher": data.teacher,
                                      "epochs": cfg.epochs, "steps": len(history),
                                      "final_loss": history[-1].loss})
        with atomic_output(LOSS_LOG) as tmp:
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(asdict(history[0])))
                writer.writeheader()
                writer.writerows(asdict(r) for r in history)
        with atomic_output(LOSS_PICTURE) as tmp:
            save_loss_curve([r.step for r in history], [r.loss for r in history], [r.lr for r in history], tmp)
        checkpoints.clear()  # the run is done; a finished checkpoint could only mislead a later run
        facts["read"] = ", ".join(f"{loader.source.key} {len(loader.assignments)} scans" for loader in data.loaders)
        facts["steps"] = len(history)
        facts["loss"] = f"{history[0].loss:.4f} -> {history[-1].loss:.4f}"
        facts["wrote"] = f"{STUDENT} ({human_size(STUDENT)}), {LOSS_LOG}, {LOSS_PICTURE}"


if __name__ == "__main__":
    main()
