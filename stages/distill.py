"""Stage distill: train the 3D student to reproduce the cached teacher features.

    python -m stages.distill
    torchrun --nproc_per_node 4 -m stages.distill     # 4 processes (GPUs), the same result

Reads the scans, assignments and teacher features (of every teacher: with `extra_teachers`,
one head per teacher on the shared network, README "Several teachers") of the distillation
split and of each entry of `distill_datasets` (merged into one training set, each dataset with its own
intensity standardisation, as ScaLR+ merges nuScenes, SemanticKITTI and PandaSet). With
`distill.teacher_source: online` it reads no teacher features: it runs the first teacher
(`teacher:`) on the cameras of the rows that teach, inside each step (pipeline/training/data.py,
`OnlinePatches`; README, "Artifact sizes"). Writes
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
from dataclasses import asdict

import torch

from pipeline.config import Params
from pipeline.config_loading import ConfigError
from pipeline.datasets import open_reader
from pipeline.distributed import launched
from pipeline.precision import check_precision
from pipeline.store.atomic import atomic_output
from pipeline.students.io import save_student
from pipeline.teachers import Teacher, build_teacher
from pipeline.training.checkpoint import Checkpoints
from pipeline.training.data import DistillationSet, SourceLoader, run_fingerprint
from pipeline.training.loop import distill_student
from pipeline.viz import save_loss_curve
from stages.common import (
    ASSIGNMENTS,
    CACHE,
    LOSS_LOG,
    LOSS_PICTURE,
    STUDENT,
    TEACHER_FEATURES,
    distill_sources,
    teacher_features_folder,
    human_size,
    run_command,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)

CHECKPOINT = CACHE / "distill_checkpoint"


def distillation_set(params: Params, online_teacher: Teacher | None = None) -> DistillationSet:
    """Every distillation source (`stages.common.distill_sources`) as one training set, read from
    its folders in cache/assignments and cache/teacher_features (and each extra teacher's in
    cache/extra_teacher_features); with `online_teacher`, its patch features come from that
    teacher (`distill.teacher_source: online`), not from the store."""
    return DistillationSet([SourceLoader(source.key, open_reader(source.dataset, source.split),
                                         source.dataset.intensity_stats(), ASSIGNMENTS / source.key,
                                         TEACHER_FEATURES / source.key,
                                         [teacher_features_folder(name) / source.key for name in params.extra_teachers],
                                         online_teacher)
                            for source in distill_sources(params)])


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("distill", args)
    cfg = params.distill
    scratch = stage_scratch("distill")
    with summary("distill") as facts:
        online_teacher = None
        if cfg.teacher_source == "online":
            if params.extra_teachers:
                raise ConfigError(f"{args.params}: distill.teacher_source: online runs the first teacher only, and "
                                  f"extra_teachers lists {', '.join(params.extra_teachers)}; set "
                                  "distill.teacher_source: store")
            online_teacher = build_teacher(params.teacher)
        data = distillation_set(params, online_teacher)
        arch = params.student.arch
        if params.student.out_channels != data.dim:
            widths = " + ".join(f"{dim} ({name})" for name, dim in zip(params.all_teachers, data.dims))
            raise ConfigError(
                f"{args.params}: student.{arch}.out_channels is {params.student.out_channels} but the teacher "
                f"features have {widths} channels; set student.{arch}.out_channels: {data.dim}")
        # One head per teacher: consecutive blocks of the student's output channels (README, "Several teachers").
        heads = [{"name": name, "dim": dim, "weight": cfg.teacher_weights.get(name, 1.0)}
                 for name, dim in zip(params.all_teachers, data.dims)]
        torch.manual_seed(cfg.seed)  # weight init
        model = params.student.config.build()
        fingerprint = run_fingerprint(cfg, data, student=params.student, dataset=params.dataset,
                                      distill_datasets=params.distill_datasets)
        checkpoints = Checkpoints(CHECKPOINT, fingerprint, cfg.checkpoint_every_epochs)
        with launched() as world:  # one process, or this rank of torchrun's (its GPU on CUDA)
            check_precision(cfg.precision, world.device, f"{args.params}: distill.precision")
            history = distill_student(model, data.scan_ids, data, cfg, world.device, checkpoints=checkpoints,
                                      world=world, heads=[(h["dim"], h["weight"]) for h in heads]
                                      if len(heads) > 1 else None)
        if not world.is_main:
            return
        with atomic_output(STUDENT, scratch) as tmp:
            save_student(tmp, model, {"teacher": data.teacher,
                                      "epochs": cfg.epochs, "steps": len(history),
                                      "final_loss": history[-1].loss}
                         | ({"heads": heads} if len(heads) > 1 else {}))
        with atomic_output(LOSS_LOG, scratch) as tmp:
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(asdict(history[0])))
                writer.writeheader()
                writer.writerows(asdict(r) for r in history)
        with atomic_output(LOSS_PICTURE, scratch) as tmp:
            save_loss_curve([r.step for r in history], [r.loss for r in history], [r.lr for r in history], tmp)
        checkpoints.clear()  # the run is done; a finished checkpoint could only mislead a later run
        facts["read"] = ", ".join(f"{loader.key} {len(loader.assignments)} scans" for loader in data.loaders)
        facts["teacher targets"] = ("computed online by the teacher, in the steps (distill.teacher_source: online)"
                                    if online_teacher else "read from the teacher-feature store")
        facts["steps"] = len(history)
        facts["loss"] = f"{history[0].loss:.4f} -> {history[-1].loss:.4f}"
        facts["wrote"] = f"{STUDENT} ({human_size(STUDENT)}), {LOSS_LOG}, {LOSS_PICTURE}"


if __name__ == "__main__":
    run_command(main)
