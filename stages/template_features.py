"""Stage template_features: the teacher's vector of every prototype image.

    python -m stages.template_features

Reads cache/prototypes/<class>/ for every vocabulary class (in params order) and writes
cache/template_features/templates.safetensors: `features` (M, D) float32 (per image: pre-norm
patch tokens, upsampled to pixels, L2-normalised per pixel, averaged) and `labels` (M,) int64
indices into the class list, with the class names and the teacher id in the metadata; and
plots/prototypes/contact_sheet.png, the prototypes of every class at a glance.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.generation.manifest import ManifestError, read_manifest
from pipeline.store.atomic import atomic_output
from pipeline.store.safetensors import save_safetensors
from pipeline.teachers import build_teacher
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


def prototype_images(class_name: str) -> list[Image.Image]:
    folder = PROTOTYPES / class_name
    manifest = read_manifest(folder)
    if not manifest.images:
        raise ManifestError(f"{folder / 'manifest.json'}: class {class_name!r} has no prototype images")
    images = []
    for entry in manifest.images:
        with Image.open(folder / entry.file) as image:
            images.append(image.convert("RGB"))
    return images


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("template_features", args)
    with summary("template_features") as facts:
        teacher = build_teacher(params.teacher)
        features, labels, sheet = [], [], {}
        for index, class_name in enumerate(tqdm(params.class_names, desc="templates", unit="class")):
            images = prototype_images(class_name)
            features.append(teacher.encode_templates(images, params.template_features.batch_size))
            labels.append(np.full(len(images), index, dtype=np.int64))
            sheet[class_name] = images
        TEMPLATES_FILE.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(TEMPLATES_FILE, {"features": np.concatenate(features), "labels": np.concatenate(labels)},
                         {"class_names": list(params.class_names), "teacher": teacher.teacher_id},
                         stage_scratch("template_features"))
        with atomic_output(PROTOTYPE_PICTURES, stage_scratch("template_features")) as picture_dir:
            picture_dir.mkdir(parents=True)
            save_contact_sheet(sheet, picture_dir / "contact_sheet.png")
        facts["classes"] = len(params.class_names)
        facts["images"] = sum(len(l) for l in labels)
        facts["wrote"] = f"{TEMPLATES_FILE} ({human_size(TEMPLATES_FILE)}), {PROTOTYPE_PICTURES / 'contact_sheet.png'}"


if __name__ == "__main__":
    run_command(main)
