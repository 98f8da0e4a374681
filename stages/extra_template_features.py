"""Stage extra_template_features: each extra teacher's vector of every prototype image.

    python -m stages.extra_template_features

The `template_features` stage for every teacher of `extra_teachers` (README, "Several
teachers"): writes cache/extra_template_features/<name>/templates.safetensors, the same file as
cache/template_features/templates.safetensors but from that teacher, and
cache/extra_template_features/teachers.json (each name and its teacher id; `{}` with no extra
teacher, so the folder that later stages depend on exists for the single-teacher demo too).
"""

from __future__ import annotations

from pipeline.store.atomic import atomic_output, save_json
from pipeline.teachers import build_teacher
from pipeline.teachers.encoding import write_template_features
from stages.common import (
    EXTRA_TEMPLATE_FEATURES,
    PROTOTYPES,
    TEMPLATES_FILE,
    human_size,
    run_command,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("extra_template_features", args)
    scratch = stage_scratch("extra_template_features")
    with summary("extra_template_features") as facts:
        with atomic_output(EXTRA_TEMPLATE_FEATURES, scratch) as out:
            out.mkdir(parents=True)
            written = {}
            for name, config in params.extra_teachers.items():
                teacher = build_teacher(config)
                write_template_features(teacher, params.class_names, PROTOTYPES, params.template_features.batch_size,
                                        out / name / TEMPLATES_FILE.name, scratch, desc=f"templates {name}")
                written[name] = teacher.teacher_id
            save_json(out / "teachers.json", written, scratch)
        facts["teachers"] = ", ".join(written) or "none (no extra_teachers)"
        facts["wrote"] = f"{EXTRA_TEMPLATE_FEATURES} ({human_size(EXTRA_TEMPLATE_FEATURES)})"


if __name__ == "__main__":
    run_command(main)
