"""The typed params of the pipeline: one frozen dataclass per `params.yaml` section.

`load_params(path)` reads the YAML file, validates every key and value (an unknown key or
a bad value stops with a message naming `params.yaml: <section>.<key>`), and checks the
rules that span sections: the vocabulary is not empty and every class counts as an
evaluation label the dataset knows.

Each section's config class lives beside the code it configures (`DatasetConfig` in
`pipeline.datasets`, `DistillConfig` in `pipeline.training.config`, ...); this module only
gathers them into `Params` and checks what spans sections. A section that a single stage owns
need not be here at all: see `parse_params` and `Params.section`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar


from pipeline.config_loading import ConfigError, build, key_path, load_yaml
from pipeline.datasets import DatasetConfig
from pipeline.assignments import AssignmentsConfig
from pipeline.demo_world.config import DemoWorldPresetConfig
from pipeline.generation.prototype_sets import PrototypesConfig
from pipeline.labelling.classifier import LabelConfig
from pipeline.metrics import EvaluateConfig
from pipeline.students import StudentConfig
from pipeline.students.features import PointFeaturesConfig
from pipeline.teachers import TeacherConfig, TeacherFeaturesConfig, TeacherKindConfig, TemplateFeaturesConfig
from pipeline.training.config import DistillConfig
from pipeline.vocabulary import VocabularyClassConfig, class_name_problem

T = TypeVar("T")

FIRST_TEACHER = "teacher"  # the name of the `teacher:` section's teacher among `Params.all_teachers`


@dataclass(frozen=True)
class Params:
    dataset: DatasetConfig
    vocabulary: dict[str, VocabularyClassConfig]
    demo_world: DemoWorldPresetConfig = field(default_factory=DemoWorldPresetConfig)
    prototypes: PrototypesConfig = field(default_factory=PrototypesConfig)
    teacher: TeacherKindConfig = field(default_factory=TeacherConfig)
    extra_teachers: dict[str, TeacherKindConfig] = field(default_factory=dict)
    template_features: TemplateFeaturesConfig = field(default_factory=TemplateFeaturesConfig)
    assignments: AssignmentsConfig = field(default_factory=AssignmentsConfig)
    teacher_features: TeacherFeaturesConfig = field(default_factory=TeacherFeaturesConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    distill_datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    point_features: PointFeaturesConfig = field(default_factory=PointFeaturesConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    # Not params.yaml keys: the raw sections that one stage owns (see `parse_params`) and the
    # file they came from, for `section`.
    stage_sections: dict[str, Any] = field(default_factory=dict, repr=False)
    where: str = field(default="params:", repr=False)

    @property
    def all_teachers(self) -> dict[str, TeacherKindConfig]:
        """Every teacher by name: `teacher` (the `teacher:` section) first, then `extra_teachers`."""
        return {FIRST_TEACHER: self.teacher, **self.extra_teachers}

    @property
    def class_names(self) -> tuple[str, ...]:
        """Prompt classes in params order: the order of template labels and of logits."""
        return tuple(self.vocabulary)

    def section(self, name: str, config_class: type[T]) -> T:
        """A stage's own section, typed and validated by its config class (missing: the defaults)."""
        if name not in self.stage_sections:
            raise ConfigError(f"{key_path(self.where, name)}: no such stage section was loaded; "
                              "list it in the stage's `params:` in dvc.yaml")
        return build(config_class, self.stage_sections[name] or {}, key_path(self.where, name))


def validate_vocabulary(vocabulary: dict[str, VocabularyClassConfig], dataset: DatasetConfig, where: str) -> None:
    if len(vocabulary) < 2:  # a classifier needs two classes to tell apart
        count = "is empty" if not vocabulary else f"has only one prompt class ({next(iter(vocabulary))})"
        raise ConfigError(f"{key_path(where, 'vocabulary')}: {count}; list at least two prompt classes")
    known = dataset.label_map().classes
    for name, entry in vocabulary.items():
        problem = class_name_problem(name)
        if problem:
            raise ConfigError(f"{key_path(where, 'vocabulary')}.{name}: {problem}")
        if entry.label not in known:
            raise ConfigError(
                f"{key_path(where, 'vocabulary')}.{name}.label: {entry.label!r} is not an evaluation class of "
                f"{dataset.format}; choose one of {', '.join(known)}"
            )


def validate_teachers(params: Params, where: str) -> None:
    """Extra teachers: plain names (they name folders), the camera input size of `teacher` (the
    assignments' pixels are in that frame); distillation weights and the label fusion name teachers."""
    for name, config in params.extra_teachers.items():
        key = f"{key_path(where, 'extra_teachers')}.{name}"
        if name == FIRST_TEACHER or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConfigError(f"{key}: a name of letters, digits, '_' and '-' only, other than {FIRST_TEACHER!r} "
                              "(it names the teacher's folders in cache/)")
        if tuple(config.input_size) != tuple(params.teacher.input_size):
            raise ConfigError(f"{key}.input_size: {list(config.input_size)} differs from teacher.input_size "
                              f"{list(params.teacher.input_size)}; every teacher reads the camera images at the size "
                              "the assignments are made for")
    for name in params.distill.teacher_weights:
        if name not in params.all_teachers:
            raise ConfigError(f"{key_path(where, 'distill')}.teacher_weights.{name}: no such teacher; "
                              f"the teachers are {', '.join(params.all_teachers)}")
    fusions = ("capability", "average", *params.all_teachers)
    if params.label.fusion not in fusions:
        raise ConfigError(f"{key_path(where, 'label')}.fusion: {params.label.fusion!r} is not allowed; choose one of "
                          f"{', '.join(fusions)}")


def validate_distill_datasets(datasets: dict[str, DatasetConfig], where: str) -> None:
    """Each extra distillation dataset's name becomes part of a folder name: keep it plain."""
    for name in datasets:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConfigError(f"{key_path(where, 'distill_datasets')}.{name}: a name of letters, digits, '_' "
                              "and '-' only (it names the dataset's folders in cache/)")


SHARED_SECTIONS = tuple(f.name for f in fields(Params) if f.name not in ("stage_sections", "where"))


def parse_params(data: dict, where: str = "params:", stage_sections: Collection[str] = ()) -> Params:
    """Validate params data. The sections of `Params` are typed here; a section that only one
    stage reads may instead be named in `stage_sections` (the stage types it with
    `Params.section`), so adding such a stage does not touch this file. Any other top-level
    key is an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} expected a mapping of sections, got {type(data).__name__}")
    allowed = SHARED_SECTIONS + tuple(name for name in stage_sections if name not in SHARED_SECTIONS)
    unknown = [name for name in data if name not in allowed]
    if unknown:
        raise ConfigError(f"{key_path(where, str(unknown[0]))}: unknown section; allowed sections: {', '.join(allowed)}")
    own = {name: data[name] for name in allowed[len(SHARED_SECTIONS):] if name in data}
    shared = {name: value for name, value in data.items() if name not in own}
    params = replace(build(Params, shared, where), stage_sections=own, where=where)
    validate_vocabulary(params.vocabulary, params.dataset, where)
    validate_distill_datasets(params.distill_datasets, where)
    validate_teachers(params, where)
    return params


def load_params(path: Path | str = "params.yaml", stage_sections: Collection[str] = ()) -> Params:
    """Read and validate a params file; errors name the file and the key.

    stage_sections: the sections single stages own and type themselves (`parse_params`); the
    project's list comes from its dvc.yaml, which `stages.common.load_project_params` reads.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    data = load_yaml(path) or {}
    return parse_params(data, f"{path}:", stage_sections)
