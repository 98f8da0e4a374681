"""Stage teacher_features: the teacher over the camera images, keeping what points need.

    python -m stages.teacher_features
    torchrun --nproc_per_node=K -m stages.teacher_features    # K processes (GPUs), same bytes

For each split of the assignments (cache/assignments/<key>/: a split, or <split>@<name> for
an entry of `distill_datasets`), runs the frozen teacher over the cameras that hold an
assigned pixel, and writes cache/teacher_features/<key>/ with two ragged stores:
`patches` (per scan, the fp16 features of the patches some assignment reads, and their flat
patch ids) and `taps` (per assignment row, i.e. per (point, camera) pair, the 4 rows of
`patches` it combines and their weights: bilinear in "pixel" mode, one patch with weight 1 in
"patch" mode). A point seen by two cameras has the taps of both. Under torchrun or srun,
each rank encodes its shard of the scans on its own GPU (pipeline.distributed).
`teacher_features.encoding` says how `patches` keeps the features: fp16 (lossless for the
targets) or int8 with a scale per patch (about half the bytes; pipeline/teachers/patch_encoding.py).
With `distill.teacher_source: online` the distillation sources' `patches` keep only the patch ids
(no teacher run, no features: distill runs the teacher itself); the evaluation split is written
in full, for the 2D baseline of `label`.
"""

from __future__ import annotations

from pipeline.datasets import open_reader
from pipeline.distributed import launched
from pipeline.store.ragged import RaggedReader
from pipeline.teachers import build_teacher
from pipeline.teachers.encoding import write_teacher_split
from stages.common import (
    ASSIGNMENTS,
    TEACHER_FEATURES,
    human_size,
    run_command,
    split_sources,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("teacher_features", args)
    with launched(params.teacher.device, setting="teacher.device") as world, \
         summary("teacher_features") as facts:
        teacher = build_teacher(params.teacher)
        facts["teacher"] = teacher.teacher_id
        online = params.distill.teacher_source == "online"
        for source in split_sources(params):
            # Online distillation computes its own targets: only the evaluation split needs features here.
            encoding = ("none" if online and source.key != params.dataset.eval_split
                        else params.teacher_features.encoding)
            counts = write_teacher_split(teacher, open_reader(source.dataset, source.split),
                                         RaggedReader(ASSIGNMENTS / source.key), TEACHER_FEATURES / source.key, world,
                                         params.assignments.mode, params.teacher_features.batch_size,
                                         stage_scratch("teacher_features"), f"teacher {source.key}", encoding)
            kept = "patch ids only (distill.teacher_source: online)" if encoding == "none" else f"{encoding} features"
            facts[source.key] = (f"{counts['scans']} scans ({counts['no_camera']} without a camera), "
                                 f"{counts['images']} images, {counts['patches']} patches kept, {kept}, "
                                 f"{human_size(TEACHER_FEATURES / source.key)}")


if __name__ == "__main__":
    run_command(main)
