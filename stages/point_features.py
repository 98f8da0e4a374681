"""Stage point_features: the student's feature of every point of the evaluation split.

    python -m stages.point_features
    torchrun --nproc_per_node=K -m stages.point_features    # K processes (GPUs), same bytes

Runs the distilled student (cache/student), or, with `point_features.checkpoint` set, a
released ScaLR / ScaLR+ checkpoint in a WaffleIron of `student.waffleiron` (no distillation
needed); a WaffleIron runs folded for inference, in `point_features.precision`. Each scan is
pre-processed as the student expects (WaffleIron: 0.1 m voxels, first
point per voxel, cropped to the field of view; sparse UNet: its voxel grid) and run through
it; every original point takes the output of its voxel, or of its nearest kept point.
Writes cache/point_features/<split>/, a ragged zarr store of fp16 (N, D) per scan. Points
outside the field of view still get the feature of their nearest kept point; their count
is reported. Under torchrun or srun, each rank computes its shard of the scans
(pipeline.distributed).

With `point_features.pca.dims: k`, the store holds k fp16 PCA coefficients per point
instead (column `feature_pca`), and the basis sits beside it in
cache/point_features/<split>.pca.safetensors. The basis is fitted first, on the features of
`pca.sample_scans` evenly spaced scans (every rank computes the same sample, so every rank
has the same basis without talking); the result is byte for byte what
`pipeline.feature_pca.reduce_store` makes of the full store.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import Params
from pipeline.config_loading import ConfigError
from pipeline.datasets import open_reader
from pipeline.datasets.base import ScanReader
from pipeline.distributed import ShardedOutput, launched
from pipeline.feature_pca import (
    PcaBasis,
    basis_attributes,
    encode,
    fit_basis,
    reduced_columns,
    sample_scan_ids,
    save_basis,
)
from pipeline.student_io import load_scalr_student, load_student
from pipeline.students import InferenceStudent, Student, prepare_input, run_student
from pipeline.students.inference import InferenceOptions, InferenceWaffleIron
from pipeline.students.waffleiron import WaffleIron
from pipeline.students.point_inputs import IntensityStats
from stages.common import (
    POINT_FEATURES,
    STUDENT,
    human_size,
    stage_arguments,
    start_stage,
    summary,
)


def load_model(params: Params, where: str, device: torch.device) -> tuple[Student, str]:
    """The student that computes the features, and where its weights come from."""
    checkpoint = params.point_features.checkpoint
    if checkpoint is None:
        model, metadata = load_student(STUDENT, device)
        return model, metadata.get("teacher", "")
    if params.student.arch != "waffleiron":
        raise ConfigError(f"{where} point_features.checkpoint is a ScaLR (WaffleIron) checkpoint but student.arch "
                          f"is {params.student.arch!r}; set student.arch: waffleiron")
    model, metadata = load_scalr_student(checkpoint, params.student.waffleiron,
                                         params.point_features.allow_unsafe_pickle)
    return model.to(device), metadata["source"]


def inference_build(model: Student, precision: str) -> InferenceStudent:
    """The fastest equivalent of `model` for prediction: a WaffleIron folded (`students.inference`)."""
    if isinstance(model, WaffleIron):
        return InferenceWaffleIron.from_model(model, InferenceOptions(precision=precision))
    return model


class PointFeatureComputer:
    """The student over one scan at a time: (N, D) fp16 features of every original point."""

    def __init__(self, model: InferenceStudent, reader: ScanReader, stats: IntensityStats,
                 device: torch.device) -> None:
        self.model, self.reader, self.stats, self.device = model, reader, stats, device
        self.points = self.kept = 0

    def __call__(self, scan_id: str) -> np.ndarray:
        record = self.reader.read(scan_id)
        scan = prepare_input(self.model.config, record.points, self.stats)
        with torch.inference_mode():
            output = run_student(self.model, [scan], self.device)[0]
            per_point = output[torch.from_numpy(scan.back_projection).to(self.device)]
        self.points += len(record.points)
        self.kept += scan.num_points
        return per_point.half().cpu().numpy()

    def sample(self, scan_ids: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(scan id, features) of the given scans, counted apart from the split's totals."""
        points, kept = self.points, self.kept
        for scan_id in scan_ids:
            yield scan_id, self(scan_id)
        self.points, self.kept = points, kept


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("point_features", args)
    split = params.dataset.eval_split
    out = POINT_FEATURES / split
    basis_file = POINT_FEATURES / f"{split}.pca.safetensors"
    pca = params.point_features.pca
    with launched() as world, summary("point_features") as facts:  # this rank's GPU under torchrun
        model, source = load_model(params, f"{args.params}:", world.device)
        model = inference_build(model, params.point_features.precision)
        reader = open_reader(params.dataset, split)
        compute = PointFeatureComputer(model, reader, params.dataset.intensity_stats(), world.device)
        dim = model.config.out_channels
        attributes = {"student_teacher": source}
        basis: PcaBasis | None = None
        if pca.dims is not None:
            sample = sample_scan_ids(reader.scan_ids, pca.sample_scans)
            basis = fit_basis(compute.sample(list(tqdm(sample, desc="pca sample", unit="scan",
                                                       disable=not world.is_main))), pca, dim)
            if world.is_main:
                save_basis(basis_file, basis)  # before the store, which names it
            attributes |= basis_attributes(basis, basis_file.name)
        elif world.is_main:
            basis_file.unlink(missing_ok=True)  # a basis of an earlier run must not outlive it
        columns = reduced_columns(basis) if basis else {"feature": ("float16", (dim,))}
        with ShardedOutput(out, reader.scan_ids, world) as output, \
             output.ragged(None, columns, attributes=attributes) as writer:
            for scan_id in tqdm(output.scan_ids, desc=f"point features {split}", unit="scan",
                                disable=not world.is_main):
                features = compute(scan_id)
                writer.append(scan_id, **(encode(basis, features) if basis else {"feature": features}))
        points, kept = world.sum([compute.points, compute.kept])
        facts["student"] = (f"{type(model).__name__} {params.point_features.precision}"
                            + (f" from {source}" if params.point_features.checkpoint else ""))
        facts[split] = f"{len(reader)} scans, {points} points ({kept} after voxelisation and crop)"
        if basis is not None:
            facts["pca"] = f"{basis.dims} of {dim} dims keep {basis.explained:.2%} of the sample variance"
        facts["wrote"] = f"{POINT_FEATURES} ({human_size(POINT_FEATURES)})"


if __name__ == "__main__":
    main()
