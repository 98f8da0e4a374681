"""Stage extra_teacher_features: each extra teacher over the camera images, keeping what points need.

    python -m stages.extra_teacher_features
    torchrun --nproc_per_node=K -m stages.extra_teacher_features    # K processes (GPUs), same bytes

The `teacher_features` stage for every teacher of `extra_teachers` (README, "Several
teachers"): for each split of the assignments, writes
cache/extra_teacher_features/<name>/<split key>/{patches,taps}, the same stores as
cache/teacher_features/<split key>/ but from that teacher (a teacher of another patch size takes
its patches from the assignments' pixels; in the encoding `teacher_features.encoding` says), and
cache/extra_teacher_features/teachers.json (each name and its teacher id, written last; `{}` with
no extra teacher). Runs on `teacher.device`. (`distill.teacher_source: online` runs the first
teacher only, so these stores always keep their features.)
"""

from __future__ import annotations

from pipeline.datasets import open_reader
from pipeline.distributed import launched
from pipeline.store.atomic import remove_path, save_json
from pipeline.store.ragged import RaggedReader
from pipeline.teachers import build_teacher
from pipeline.teachers.encoding import write_teacher_split
from stages.common import (
    ASSIGNMENTS,
    EXTRA_TEACHER_FEATURES,
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
    params = start_stage("extra_teacher_features", args)
    scratch = stage_scratch("extra_teacher_features")
    with launched(params.teacher.device, setting="teacher.device") as world, \
         summary("extra_teacher_features") as facts:
        written = {}
        if world.is_main:  # a teacher no longer listed must not linger; each store below is written atomically
            remove_path(EXTRA_TEACHER_FEATURES)
        for name, config in params.extra_teachers.items():
            teacher = build_teacher(config)
            written[name] = teacher.teacher_id
            for source in split_sources(params):
                out = EXTRA_TEACHER_FEATURES / name / source.key
                counts = write_teacher_split(teacher, open_reader(source.dataset, source.split),
                                             RaggedReader(ASSIGNMENTS / source.key), out, world,
                                             params.assignments.mode, params.teacher_features.batch_size,
                                             scratch, f"teacher {name} {source.key}",
                                             params.teacher_features.encoding)
                facts[f"{name} {source.key}"] = (f"{counts['scans']} scans, {counts['images']} images, "
                                                 f"{counts['patches']} patches kept, {human_size(out)}")
        if world.is_main:  # last: its presence says every store above is complete
            EXTRA_TEACHER_FEATURES.mkdir(parents=True, exist_ok=True)
            save_json(EXTRA_TEACHER_FEATURES / "teachers.json", written, scratch)
        facts["teachers"] = ", ".join(written) or "none (no extra_teachers)"
        facts["wrote"] = f"{EXTRA_TEACHER_FEATURES} ({human_size(EXTRA_TEACHER_FEATURES)})"


if __name__ == "__main__":
    run_command(main)
