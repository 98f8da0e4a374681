"""Stage template_features: the teacher's vector of every prototype image.

    python -m stages.template_features

Reads cache/prototypes/<class>/ for every vocabulary class (in params order) and writes
cache/template_features/templates.safetensors: `features` (M, D) float32 (per image: pre-norm
patch tokens, upsampled to pixels, L2-normalised per pixel, averaged) and `labels` (M,) int64
indices into the class list, with the class names and the teacher id in the metadata; and
plots/prototypes/contact_sheet.png, the prototypes of every class at a glance.
"""

from __future__ import annotations

from pipeline.store.atomic import atomic_output
from pipeline.teachers import build_teacher
from pipeline.teachers.encoding import write_template_features
from pipeline.viz import save_contact_sheet
from stages.common import (
    PROTOTYPES,
    PROTOTYPE_PICTURES,
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
    params = start_stage("template_features", args)
    scratch = stage_scratch("template_features")
    with summary("template_features") as facts:
        sheet = write_template_features(build_teacher(params.teacher), params.class_names, PROTOTYPES,
                                        params.template_features.batch_size, TEMPLATES_FILE, scratch)
        with atomic_output(PROTOTYPE_PICTURES, scratch) as picture_dir:
            picture_dir.mkdir(parents=True)
            save_contact_sheet(sheet, picture_dir / "contact_sheet.png")
        facts["classes"] = len(params.class_names)
        facts["images"] = sum(len(images) for images in sheet.values())
        facts["wrote"] = f"{TEMPLATES_FILE} ({human_size(TEMPLATES_FILE)}), {PROTOTYPE_PICTURES / 'contact_sheet.png'}"


if __name__ == "__main__":
    run_command(main)
