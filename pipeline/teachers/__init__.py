"""The frozen 2D teachers: what they offer, their implementations, and the maths on their features.

- `base`: the `Teacher` protocol every teacher implements (patch features of camera images,
  one vector per template image, input geometry, an id), `TeacherError`, and the
  `template_features:` / `teacher_features:` params sections;
- `timm_vit`: the timm ViT (DINOv2) teacher, `TimmViTTeacher`, and its `teacher:` params
  section `TeacherConfig`;
- `images`: reading and resizing images (`load_image`, `load_images`);
- `upsampling`: patch features at pixels and the template vector (bilinear, align_corners).

`build_teacher` is the one place that chooses the implementation; stages hold a `Teacher`.
A teacher of another kind (CLIP, RADIO, SigLIP towers) is one new module implementing the
protocol, chosen here.
"""

from __future__ import annotations

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
    teacher_patch_size,
    teacher_shape,
)


def build_teacher(config: TeacherConfig) -> Teacher:
    """The teacher that the `teacher:` params section describes."""
    return TimmViTTeacher(config)


__all__ = [
    "ArchitectureOverridesConfig",
    "Teacher",
    "TeacherConfig",
    "TeacherError",
    "TeacherFeaturesConfig",
    "TemplateFeaturesConfig",
    "TimmViTTeacher",
    "build_teacher",
    "file_sha256",
    "teacher_patch_size",
    "teacher_shape",
]
