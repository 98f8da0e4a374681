"""The student's feature of every point of a scan: what the point_features stage computes and stores.

`PointFeaturesConfig` is the `point_features:` params section. `load_feature_student` picks the
weights (the distilled student, or a released ScaLR checkpoint in a WaffleIron), and
`PointFeatureComputer` runs the student (as `Student.for_inference` builds it) over one scan at a
time: the scan is prepared as the student expects, run, and every original point takes the output
of its voxel or of its nearest kept point (`PreparedInput.back_projection`). Its result has one
row per raw point of the scan file, in file order: a point the reader dropped for NaN/inf
coordinates has no feature (a row of zeros, flagged False in `valid`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.config_loading import ConfigError
from pipeline.datasets.base import ScanReader
from pipeline.labelling.feature_pca import FeaturePcaConfig
from pipeline.students import InferenceStudent, Student, StudentConfig
from pipeline.datasets.base import IntensityStats
from pipeline.students.io import load_scalr_student, load_student
from pipeline.store.ragged import Compressor


@dataclass(frozen=True)
class PointFeaturesConfig:
    """Which weights compute the point features.

    checkpoint: null runs the distilled student (cache/student). A path to a released ScaLR /
    ScaLR+ `ckpt_last.pth` runs those weights instead, with no distillation at all, in a
    WaffleIron built from `student.waffleiron` (which must describe the checkpoint: the
    release is width 768, depth 48, head_hidden 2048, out_channels 1024, the release grids
    and fov) and needs `student.arch: waffleiron`.
    allow_unsafe_pickle: checkpoints are read with torch.load(weights_only=True); a file that
    needs full unpickling (which can run arbitrary code) is refused unless this is true.
    pca: with `pca.dims` set, store k PCA coefficients per point instead of the full feature
    (`pipeline.labelling.feature_pca`); null dims (the default) stores the full features.
    precision: a WaffleIron runs as its folded inference build (`pipeline.students.waffleiron.folded`:
    BatchNorms folded, channels-last; about 2x faster and a third of the activation memory on
    a CPU), in fp32 (the module's features up to float rounding) or bf16 (faster again, cosine
    > 0.9999 to fp32). The sparse UNet runs as it is.
    compression: the store's blosc codec (`pipeline.store.ragged.Chunking`): lz4 (the default)
    decodes about 10x faster than zstd for ~10% more bytes at nuScenes width, and `label`
    decodes the whole store again after every vocabulary change (bench `vocabulary`).
    """

    checkpoint: str | None = None
    allow_unsafe_pickle: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    pca: FeaturePcaConfig = field(default_factory=FeaturePcaConfig)
    compression: Compressor = "lz4"


def load_feature_student(config: PointFeaturesConfig, student: StudentConfig, student_folder: Path, where: str,
                         device: torch.device) -> tuple[Student, str]:
    """The student that computes the features, and where its weights come from.

    Without `config.checkpoint`: the distilled student of `student_folder`. With it: the ScaLR
    checkpoint in a WaffleIron of `student.waffleiron`. `where` prefixes config errors.
    """
    if config.checkpoint is None:
        model, metadata = load_student(student_folder, device)
        return model, metadata.get("teacher", "")
    if student.arch != "waffleiron":
        raise ConfigError(f"{where} point_features.checkpoint is a ScaLR (WaffleIron) checkpoint but student.arch "
                          f"is {student.arch!r}; set student.arch: waffleiron")
    model, metadata = load_scalr_student(config.checkpoint, student.waffleiron, config.allow_unsafe_pickle)
    return model.to(device), metadata["source"]


class PointFeatureComputer:
    """The student over one scan at a time: (N, D) fp16 features of every raw point.

    Counts, over the calls: `points` (raw), `kept` (after voxelisation and crop) and `dropped`
    (non-finite coordinates: no feature).
    """

    def __init__(self, model: InferenceStudent, reader: ScanReader, stats: IntensityStats,
                 device: torch.device) -> None:
        self.model, self.reader, self.stats, self.device = model, reader, stats, device
        self.points = self.kept = self.dropped = 0

    def __call__(self, scan_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) fp16 features and (N,) bool valid of every raw point of the scan, in file
        order; rows of the points dropped for NaN/inf coordinates are zeros and not valid."""
        record = self.reader.read(scan_id)
        scan = self.model.config.prepare(record.points, self.stats)
        with torch.inference_mode():
            output = self.model.run_batch([scan], self.device)[0]
            per_point = output[torch.from_numpy(scan.back_projection).to(self.device)]
        self.points += record.raw_count
        self.kept += scan.num_points
        self.dropped += record.dropped_points
        features = record.to_raw(per_point.half().cpu().numpy(), 0)
        return features, record.to_raw(np.ones(len(record.points), dtype=bool), False)

    def sample(self, scan_ids: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(scan id, features of its valid points) of the given scans, counted apart from the
        split's totals."""
        counts = self.points, self.kept, self.dropped
        for scan_id in scan_ids:
            features, valid = self(scan_id)
            yield scan_id, features if valid.all() else features[valid]
        self.points, self.kept, self.dropped = counts


__all__ = ["PointFeatureComputer", "PointFeaturesConfig", "load_feature_student"]
