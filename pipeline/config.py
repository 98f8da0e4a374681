"""The typed params of the pipeline: one frozen dataclass per `params.yaml` section.

`load_params(path)` reads the YAML file, validates every key and value (an unknown key or
a bad value stops with a message naming `params.yaml: <section>.<key>`), and checks the
rules that span sections: the vocabulary is not empty and every class counts as an
evaluation label the dataset knows.

Library classes that own their settings (the teacher, the students, the diffusers
generator) are used directly as params sections, so there is one definition.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.config_loading import ConfigError, build, key_path
from pipeline.datasets.label_map import (
    LabelMap,
    nuscenes_label_map,
    semantic_kitti_label_map,
)
from pipeline.feature_pca import FeaturePcaConfig
from pipeline.generation.diffusers_backend import DiffusersConfig
from pipeline.precision import Precision
from pipeline.students import StudentParams
from pipeline.students.point_inputs import INTENSITY_STATS, IntensityStats
from pipeline.teacher import TeacherConfig


@dataclass(frozen=True)
class DatasetParams:
    """Which dataset, where, and which splits feed distillation and evaluation.

    root: the nuScenes dataroot or the SemanticKITTI folder holding `sequences/`.
    version: the nuScenes version folder (e.g. v1.0-trainval); unused for SemanticKITTI.
    intensity_mean/std: standardisation of the intensity channel; None takes the
    dataset's reference values (REFERENCE.md).
    """

    format: Literal["nuscenes", "semantic_kitti"] = "nuscenes"
    root: str = "data/demo/nuscenes"
    version: str = "v1.0-demo"
    distill_split: str = "train"
    eval_split: str = "val"
    intensity_mean: float | None = None
    intensity_std: float | None = None

    def label_map(self) -> LabelMap:
        return nuscenes_label_map() if self.format == "nuscenes" else semantic_kitti_label_map()

    def intensity_stats(self) -> IntensityStats:
        """The intensity standardisation: params override the dataset's reference values."""
        reference = INTENSITY_STATS[self.format]
        return IntensityStats(
            mean=reference.mean if self.intensity_mean is None else self.intensity_mean,
            std=reference.std if self.intensity_std is None else self.intensity_std,
        )

    @property
    def splits(self) -> tuple[str, ...]:
        """The distinct splits the stages touch, distillation first."""
        return tuple(dict.fromkeys((self.distill_split, self.eval_split)))


@dataclass(frozen=True)
class DemoWorldParams:
    """The synthetic demo world written by the `demo_world` stage."""

    size: Literal["default", "small"] = "default"
    seed: int = 0


@dataclass(frozen=True)
class VocabularyClass:
    """One prompt class: the text prompts that draw it and the evaluation label it counts as.

    Prompts are templates: "{}" is replaced by the class name ("a photo of a {} in a street").
    """

    label: str
    prompts: tuple[str, ...] = ("a photo of a {}",)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("prompts must list at least one prompt template")


@dataclass(frozen=True)
class PrototypeParams:
    """Where the prototype images come from.

    source: "procedural" renders demo-world exemplars (the demo default; it knows only the
    demo classes); "diffusers" draws them with a text-to-image model (see `diffusers`);
    "folder" reads ready-made images in the IGLOSS authors' layout `<index>_<class>/*.png`.
    """

    source: Literal["procedural", "diffusers", "folder"] = "procedural"
    images_per_class: int = 8
    seed: int = 0
    image_size: int = 224
    folder: str | None = None
    diffusers: DiffusersConfig = field(default_factory=DiffusersConfig)

    def __post_init__(self) -> None:
        if self.images_per_class < 1:
            raise ValueError("images_per_class must be >= 1")
        if self.source == "folder" and not self.folder:
            raise ValueError("source 'folder' needs prototypes.folder")


@dataclass(frozen=True)
class TemplateFeatureParams:
    batch_size: int = 8


@dataclass(frozen=True)
class AssignmentParams:
    """How lidar points are tied to teacher patches.

    mode: "pixel" (ScaLR+) takes the bilinearly upsampled teacher feature at the point's
    pixel; "patch" (DITR) takes the patch at floor(pixel / patch size).
    camera_selection: "random" keeps one camera per point among those that see it (seeded).
    min_depth: points closer than this to a camera (metres) are not assigned to it.
    occlusion_cell: 0 assigns every point that projects into an image (ScaLR+); N > 0 first
    drops the points that nearer lidar points hide in an N x N pixel cell of the camera image
    (a lidar z-buffer), so points are taught, and 2D-labelled, by what the camera really sees.
    Scale N with the image resolution.
    """

    mode: Literal["pixel", "patch"] = "pixel"
    camera_selection: Literal["random"] = "random"
    min_depth: float = 1.0
    occlusion_cell: int = 0
    seed: int = 0


@dataclass(frozen=True)
class TeacherFeatureParams:
    batch_size: int = 6


@dataclass(frozen=True)
class DistillParams:
    """Distillation of the student from the cached teacher features (ScaLR+ recipe).

    The schedule warms up linearly for `warmup_epochs`, decays as a reciprocal square root
    with timescale `rsqrt_timescale_epochs`, and cools down linearly to 0 over the last
    `cooldown_epochs`. `batch_size` is the global batch: under torchrun the processes
    share it, and the result is the single process's (`pipeline.ddp`).

    precision: fp32 | bf16 (autocast, CPU or CUDA) | fp16 (autocast + GradScaler, CUDA only).
    gradient_checkpointing: recompute the student's block activations in the backward pass.
    checkpoint_every_epochs: save the training state every this many epochs, so an
    interrupted run continues from there (`pipeline.checkpoint`).
    """

    epochs: int = 65
    batch_size: int = 8
    lr: float = 0.002
    weight_decay: float = 0.03
    warmup_epochs: float = 1.0
    rsqrt_timescale_epochs: float = 0.45
    cooldown_epochs: float = 2.0
    max_points: int = 20000
    augment: bool = True
    seed: int = 0
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    checkpoint_every_epochs: int = 1

    def __post_init__(self) -> None:
        if self.checkpoint_every_epochs < 1:
            raise ValueError(f"checkpoint_every_epochs must be >= 1, got {self.checkpoint_every_epochs}")


@dataclass(frozen=True)
class PointFeatureParams:
    """Which weights compute the point features.

    checkpoint: null runs the distilled student (cache/student). A path to a released ScaLR /
    ScaLR+ `ckpt_last.pth` runs those weights instead, with no distillation at all, in a
    WaffleIron built from `student.waffleiron` (which must describe the checkpoint: the
    release is width 768, depth 48, head_hidden 2048, out_channels 1024, the release grids
    and fov) and needs `student.arch: waffleiron`.
    allow_unsafe_pickle: checkpoints are read with torch.load(weights_only=True); a file that
    needs full unpickling (which can run arbitrary code) is refused unless this is true.
    pca: with `pca.dims` set, store k PCA coefficients per point instead of the full feature
    (`pipeline.feature_pca`); null dims (the default) stores the full features.
    precision: a WaffleIron runs as its folded inference build (`pipeline.students.inference`:
    BatchNorms folded, channels-last; about 2x faster and a third of the activation memory on
    a CPU), in fp32 (the module's features up to float rounding) or bf16 (faster again, cosine
    > 0.9999 to fp32). The sparse UNet runs as it is.
    """

    checkpoint: str | None = None
    allow_unsafe_pickle: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    pca: FeaturePcaConfig = field(default_factory=FeaturePcaConfig)


@dataclass(frozen=True)
class LabelParams:
    """How points are labelled from their features.

    "logistic": class-balanced liblinear logistic regression on the template
    features (IGLOSS). "nearest_prototype": cosine similarity, max over a class's prototypes.
    """

    method: Literal["logistic", "nearest_prototype"] = "logistic"


@dataclass(frozen=True)
class EvaluateParams:
    preview_scans: int = 3


@dataclass(frozen=True)
class Params:
    dataset: DatasetParams
    vocabulary: dict[str, VocabularyClass]
    demo_world: DemoWorldParams = field(default_factory=DemoWorldParams)
    prototypes: PrototypeParams = field(default_factory=PrototypeParams)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    template_features: TemplateFeatureParams = field(default_factory=TemplateFeatureParams)
    assignments: AssignmentParams = field(default_factory=AssignmentParams)
    teacher_features: TeacherFeatureParams = field(default_factory=TeacherFeatureParams)
    student: StudentParams = field(default_factory=StudentParams)
    distill: DistillParams = field(default_factory=DistillParams)
    distill_datasets: dict[str, DatasetParams] = field(default_factory=dict)
    point_features: PointFeatureParams = field(default_factory=PointFeatureParams)
    label: LabelParams = field(default_factory=LabelParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Prompt classes in params order: the order of template labels and of logits."""
        return tuple(self.vocabulary)


def validate_vocabulary(vocabulary: dict[str, VocabularyClass], dataset: DatasetParams, where: str) -> None:
    if not vocabulary:
        raise ConfigError(f"{key_path(where, 'vocabulary')}: is empty; list at least two prompt classes")
    known = dataset.label_map().classes
    for name, entry in vocabulary.items():
        if entry.label not in known:
            raise ConfigError(
                f"{key_path(where, 'vocabulary')}.{name}.label: {entry.label!r} is not an evaluation class of "
                f"{dataset.format}; choose one of {', '.join(known)}"
            )


def validate_distill_datasets(datasets: dict[str, DatasetParams], where: str) -> None:
    """Each extra distillation dataset's name becomes part of a folder name: keep it plain."""
    for name in datasets:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConfigError(f"{key_path(where, 'distill_datasets')}.{name}: a name of letters, digits, '_' "
                              "and '-' only (it names the dataset's folders in cache/)")


def parse_params(data: dict, where: str = "params:") -> Params:
    params = build(Params, data, where)
    validate_vocabulary(params.vocabulary, params.dataset, where)
    validate_distill_datasets(params.distill_datasets, where)
    return params


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate a params file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_params(data, f"{path}:")
