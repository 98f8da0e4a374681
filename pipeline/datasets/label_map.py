"""Label maps from a dataset's raw semantic ids to its evaluation classes.

The maps ship with the project as small YAML files next to this module
(`nuscenes.yaml`: lidarseg 32 -> 16 classes; `semantic_kitti.yaml`: the 19-class learning
map); `DATASET_FORMATS` (in `pipeline.datasets`) names each format's file. Evaluation labels
are 0..K-1 in the order of `classes`; ignored ids map to 255.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pipeline.datasets.base import IGNORE_LABEL, DatasetError

LABEL_MAP_DIR = Path(__file__).parent


@dataclass(frozen=True)
class LabelMap:
    """Raw semantic id -> evaluation label, as a lookup table over all raw ids."""

    classes: tuple[str, ...]
    lookup: np.ndarray  # uint8 (max_raw_id + 1,), IGNORE_LABEL for ignored or unknown ids
    source: Path

    def __call__(self, raw_ids: np.ndarray, source: Path | str = "") -> np.ndarray:
        """Map raw ids to evaluation labels; a raw id the map does not know is an error."""
        raw_ids = np.asarray(raw_ids)
        if raw_ids.size and (raw_ids.min() < 0 or raw_ids.max() >= len(self.lookup)):
            bad = int(raw_ids.max() if raw_ids.max() >= len(self.lookup) else raw_ids.min())
            raise DatasetError(f"{source}: raw label id {bad} is not in the label map {self.source}")
        return self.lookup[raw_ids]

    @classmethod
    def from_yaml(cls, path: Path) -> LabelMap:
        spec = yaml.safe_load(Path(path).read_text())
        classes = tuple(spec["classes"])
        index = {name: i for i, name in enumerate(classes)}
        raw = {int(k): v for k, v in spec["raw_to_class"].items()}
        lookup = np.full(max(raw) + 1, IGNORE_LABEL, dtype=np.uint8)
        for raw_id, name in raw.items():
            if name is None:
                continue
            if name not in index:
                raise DatasetError(f"{path}: raw id {raw_id} maps to unknown class {name!r}")
            lookup[raw_id] = index[name]
        return cls(classes=classes, lookup=lookup, source=Path(path))

