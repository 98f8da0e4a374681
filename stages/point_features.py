"""Stage point_features: the student's feature of every point of the evaluation split.

    python -m stages.point_features
    torchrun --nproc_per_node=K -m stages.point_features    # K processes (GPUs), same bytes

Runs the distilled student (cache/student), or, with `point_features.checkpoint` set, a
released ScaLR / ScaLR+ checkpoint in a WaffleIron of `student.waffleiron` (no distillation
needed); a WaffleIron runs folded for inference, in `point_features.precision`. Each scan is
pre-processed as the student expects (WaffleIron: 0.1 m voxels, first
point per voxel, cropped to the field of view; sparse UNet: its voxel grid) and run through
it; every original point takes the output of its voxel, or of its nearest kept point.
With `--split distill` it computes the distillation split instead, into
cache/distill_split/point_features/<split>/ (the segmenter stages train on it: segmenters/dvc.yaml).
Writes cache/point_features/<split>/, a ragged zarr store of fp16 (N, D) per scan, one row per
raw point of the scan file in file order, and a bool column `valid`: False at the points the
reader dropped for NaN/inf coordinates (no feature: their rows are zeros; their count is
reported). Points outside the field of view still get the feature of their nearest kept
point; their count is reported. A student distilled from several teachers has one head per
teacher, consecutive blocks of its output channels: the store's attribute `heads` names each
head's teacher and width, in column order (`pipeline.labelling.point_features` reads one head). Under torchrun or srun, each rank computes its shard of the scans
(pipeline.distributed).

With `point_features.pca.dims: k`, the store holds k fp16 PCA coefficients per point
instead (column `feature_pca`), and the basis sits beside it in
cache/point_features/<split>.pca.safetensors. The basis is fitted first, on the features of
`pca.sample_scans` evenly spaced scans (every rank computes the same sample, so every rank
has the same basis without talking); the result is byte for byte what
`pipeline.labelling.feature_pca.reduce_store` makes of the full store.

The work per scan is `pipeline.students.features` (`PointFeatureComputer`); this module only
wires it to the params, the store and the ranks.
"""

from __future__ import annotations

from tqdm import tqdm

from pipeline.datasets import open_reader
from pipeline.distributed import ShardedOutput, launched
from pipeline.store.ragged import Chunking
from pipeline.kill_switch import kill_point
from pipeline.labelling.feature_pca import (
    VALID_COLUMN,
    PcaBasis,
    basis_attributes,
    encode,
    fit_basis,
    reduced_columns,
    sample_scan_ids,
    save_basis,
)
from pipeline.students.features import PointFeatureComputer, load_feature_student
from pipeline.students.io import student_heads
from stages.common import (
    STUDENT,
    add_split_option,
    split_folders,
    human_size,
    run_command,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)


def main(argv: list[str] | None = None) -> None:
    args = add_split_option(stage_arguments(__doc__)).parse_args(argv)
    params = start_stage("point_features", args)
    folders = split_folders(params, args.split)
    split, out = folders.split, folders.point_features
    basis_file = out.parent / f"{split}.pca.safetensors"
    pca = params.point_features.pca
    scratch = stage_scratch("point_features")
    with launched() as world, summary("point_features") as facts:  # this rank's GPU under torchrun
        model, source = load_feature_student(params.point_features, params.student, STUDENT, f"{args.params}:",
                                             world.device)
        model = model.for_inference(params.point_features.precision)
        reader = open_reader(params.dataset, split, labels=False)  # features need no label
        compute = PointFeatureComputer(model, reader, params.dataset.intensity_stats(), world.device)
        dim = model.config.out_channels
        attributes = {"student_teacher": source}
        heads = student_heads(STUDENT) if params.point_features.checkpoint is None else None
        if heads is not None:  # several teachers: which columns are whose head (README, "Several teachers")
            attributes["heads"] = heads
        basis: PcaBasis | None = None
        if pca.dims is not None:
            sample = sample_scan_ids(reader.scan_ids, pca.sample_scans)
            basis = fit_basis(compute.sample(list(tqdm(sample, desc="pca sample", unit="scan",
                                                       disable=not world.is_main))), pca, dim)
            if world.is_main:
                save_basis(basis_file, basis, scratch)  # before the store, which names it
            attributes |= basis_attributes(basis, basis_file.name)
        elif world.is_main:
            basis_file.unlink(missing_ok=True)  # a basis of an earlier run must not outlive it
        columns = reduced_columns(basis) if basis else {"feature": ("float16", (dim,)), VALID_COLUMN: ("bool", ())}
        with ShardedOutput(out, reader.scan_ids, world, scratch=scratch,
                           chunking=Chunking(compressor=params.point_features.compression)) as output, \
             output.ragged(None, columns, attributes=attributes) as writer:
            for done, scan_id in enumerate(tqdm(output.scan_ids, desc=f"point features {split}", unit="scan",
                                                disable=not world.is_main), start=1):
                features, valid = compute(scan_id)
                writer.append(scan_id, **(encode(basis, features, valid) if basis else {"feature": features}),
                              **{VALID_COLUMN: valid})
                kill_point("point_features", done)
        points, kept, dropped = world.sum([compute.points, compute.kept, compute.dropped])
        facts["student"] = (f"{type(model).__name__} {params.point_features.precision}"
                            + (f" from {source}" if params.point_features.checkpoint else ""))
        facts[split] = (f"{len(reader)} scans, {points} points ({kept} after voxelisation and crop, "
                        f"{dropped} dropped for NaN/inf coordinates: no feature, valid false)")
        if basis is not None:
            facts["pca"] = f"{basis.dims} of {dim} dims keep {basis.explained:.2%} of the sample variance"
        facts["wrote"] = f"{out} ({human_size(out)})"


if __name__ == "__main__":
    run_command(main)
