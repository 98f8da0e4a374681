"""The frozen 2D teachers: what they offer, their implementations, and the maths on their features.

- `base`: the `Teacher` protocol every teacher implements (patch features of camera images,
  one vector per template image, input geometry, an id), `TeacherError`, and the
  `template_features:` / `teacher_features:` params sections;
- `timm_vit`: the timm ViT (DINOv2) teacher, `TimmViTTeacher`, and its `teacher:` params
  section `TeacherConfig`;
- `images`: reading and resizing images (`load_image`, `load_images`);
- `upsampling`: patch features at pixels and the template vector (bilinear, align_corners).

`TEACHER_KINDS` is the explicit table of teacher kinds: a teacher params entry (`teacher:`, or
one of `extra_teachers:`) names its kind (`kind: timm_vit`, the default) and is typed by that
kind's config (`TeacherKindConfig`, the union the params loader picks from by `kind`). Each
kind's config builds its teacher (`build`) and tells its (patch size, width) without weights
(`shape`); `build_teacher` builds from any of them, so stages hold a `Teacher` and never ask
which kind. A teacher of another kind (CLIP, RADIO, SigLIP towers) is one new module: its
config (with `kind`, `input_size`, `template_size`, `device`, `build`, `shape`) and its teacher
implementing the protocol, plus its entry here.
"""

from __future__ import annotations

from typing import Union

from pipeline.teachers.base import (
    Teacher,
    TeacherError,
    TeacherFeaturesConfig,
    TemplateFeaturesConfig,
    file_sha256,
)
from pipeline.teachers.timm_vit import (
    ArchitectureOverridesConfig,
    TeacherConfig,
    TimmViTTeacher,
    teacher_shape,
)


# The teacher kinds: `kind` -> its config class (first: the default when a params entry names none).
TEACHER_KINDS: dict[str, type] = {
    "timm_vit": TeacherConfig,
}

# A teacher params entry, typed by its kind's config (`pipeline.config_loading` picks by `kind`).
TeacherKindConfig = Union[tuple(TEACHER_KINDS.values())]  # noqa: UP007 (built from the table)


def build_teacher(config: TeacherKindConfig) -> Teacher:
    """The teacher that a teacher params entry (`teacher:` or one of `extra_teachers:`) describes."""
    return config.build()


def teacher_patch_size(config: TeacherKindConfig) -> int:
    """The patch size of the configured teacher, without weights (14 for DINOv2)."""
    return config.shape()[0]


__all__ = [
    "ArchitectureOverridesConfig",
    "TEACHER_KINDS",
    "Teacher",
    "TeacherConfig",
    "TeacherKindConfig",
    "TeacherError",
    "TeacherFeaturesConfig",
    "TemplateFeaturesConfig",
    "TimmViTTeacher",
    "build_teacher",
    "file_sha256",
    "teacher_patch_size",
    "teacher_shape",
]
