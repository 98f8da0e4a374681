"""Dataset readers, and the one table of the dataset formats the pipeline reads.

Each reader yields `ScanRecord`s (see `base`), whatever the dataset. `DATASET_FORMATS` says,
for each format, how to open a split, which label map (a YAML next to `label_map.py`) turns
its raw ids into evaluation labels, and the reference standardisation of its intensity
channel. `DatasetConfig` is the `dataset:` params section (and each `distill_datasets` entry);
`open_reader` opens a split of the dataset it names.

A new format is its reader module, its label-map YAML and one entry in `DATASET_FORMATS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.datasets.base import ScanReader
from pipeline.datasets.label_map import LABEL_MAP_DIR, LabelMap
from pipeline.datasets.base import IntensityStats


@dataclass(frozen=True)
class DatasetFormat:
    """What the pipeline needs to know of one dataset format.

    reader: opens one split, `reader(root, version, split, **options)`; it imports the
        reader module when called (nuscenes-devkit is slow to import). Every reader takes
        `labels=False`: it then never reads a label file (records have `labels` None).
    label_map_file: the label map's YAML, in `pipeline/datasets/`.
    intensity: the reference standardisation of the intensity channel (REFERENCE.md).
    """

    reader: Callable[..., ScanReader]
    label_map_file: str
    intensity: IntensityStats

    def label_map(self) -> LabelMap:
        return LabelMap.from_yaml(LABEL_MAP_DIR / self.label_map_file)


def _nuscenes_reader(root, version: str, split: str, **options) -> ScanReader:
    from pipeline.datasets.nuscenes import NuScenesReader

    return NuScenesReader(root, version, split, **options)


def _semantic_kitti_reader(root, version: str, split: str, **options) -> ScanReader:
    from pipeline.datasets.semantic_kitti import SemanticKittiReader

    return SemanticKittiReader(root, split, **options)  # KITTI has no versions


DATASET_FORMATS: dict[str, DatasetFormat] = {
    "nuscenes": DatasetFormat(
        reader=_nuscenes_reader,
        label_map_file="nuscenes.yaml",
        intensity=IntensityStats(mean=18.742355, std=22.04632),
    ),
    "semantic_kitti": DatasetFormat(
        reader=_semantic_kitti_reader,
        label_map_file="semantic_kitti.yaml",
        intensity=IntensityStats(mean=0.28613698, std=0.14090556),  # remission
    ),
}


def dataset_format(name: str) -> DatasetFormat:
    """The table entry of format `name`; an unknown name is an error listing the known ones."""
    if name not in DATASET_FORMATS:
        raise ValueError(f"format {name!r} is not a dataset format; choose one of {', '.join(DATASET_FORMATS)}")
    return DATASET_FORMATS[name]


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset, where, and which splits feed distillation and evaluation.

    format: a key of `DATASET_FORMATS`.
    root: the nuScenes dataroot or the SemanticKITTI folder holding `sequences/`.
    version: the nuScenes version folder (e.g. v1.0-trainval), which holds its tables; unused by
    the SemanticKITTI reader. dvc.yaml's dataset_index watches `<root>/<version>` for changes
    (SemanticKITTI, whose scan lists are its folders: `sequences`).
    intensity_mean/std: standardisation of the intensity channel; None takes the
    dataset's reference values (REFERENCE.md).
    """

    format: str = "nuscenes"
    root: str = "data/demo/nuscenes"
    version: str = "v1.0-demo"
    distill_split: str = "train"
    eval_split: str = "val"
    intensity_mean: float | None = None
    intensity_std: float | None = None

    def __post_init__(self) -> None:
        dataset_format(self.format)  # an unknown format stops here, at params loading

    def label_map(self) -> LabelMap:
        return dataset_format(self.format).label_map()

    def intensity_stats(self) -> IntensityStats:
        """The intensity standardisation: params override the dataset's reference values."""
        reference = dataset_format(self.format).intensity
        return IntensityStats(
            mean=reference.mean if self.intensity_mean is None else self.intensity_mean,
            std=reference.std if self.intensity_std is None else self.intensity_std,
        )

    @property
    def splits(self) -> tuple[str, ...]:
        """The distinct splits the stages touch, distillation first."""
        return tuple(dict.fromkeys((self.distill_split, self.eval_split)))


def open_reader(dataset: DatasetConfig, split: str, **options) -> ScanReader:
    """The reader of one split of the dataset that params select. Options go to the reader's
    constructor (e.g. `ego_motion_compensation` for nuScenes)."""
    return dataset_format(dataset.format).reader(dataset.root, dataset.version, split, **options)
