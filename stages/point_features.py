"""Stage point_features: the student's feature of every point of the evaluation split.

    python -m stages.point_features

Each scan is voxelised (0.1 m, first point per voxel), cropped to the field of view and run
through the student; every original point takes the output of its nearest kept point.
Writes cache/point_features/<split>/, a ragged zarr store of fp16 (N, D) per scan. Points
outside the field of view still get the feature of their nearest kept point; their count
is reported.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from pipeline.datasets import open_reader
from pipeline.devices import resolve_device
from pipeline.store import RaggedWriter
from pipeline.student_io import load_student
from pipeline.students.point_inputs import collate, prepare_scan
from stages.common import (
    POINT_FEATURES,
    STUDENT,
    human_size,
    stage_arguments,
    start_stage,
    summary,
)


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("point_features", args)
    split = params.dataset.eval_split
    out = POINT_FEATURES / split
    with summary("point_features") as facts:
        device = resolve_device("auto")
        model, metadata = load_student(STUDENT, device)
        stats = params.dataset.intensity_stats()
        reader = open_reader(params.dataset, split)
        points = kept = 0
        columns = {"feature": ("float16", (model.config.out_channels,))}
        with RaggedWriter(out, columns, attributes={"student_teacher": metadata.get("teacher", "")}) as writer:
            for scan_id in tqdm(reader.scan_ids, desc=f"point features {split}", unit="scan"):
                record = reader.read(scan_id)
                scan = prepare_scan(record.points, model.config, stats)
                batch = collate([scan]).to(device)
                with torch.inference_mode():
                    output = model(batch.features, batch.neighbors, batch.cell_indices, batch.occupancy)
                per_point = batch.unpad(output)[0][torch.from_numpy(scan.back_projection).to(device)]
                writer.append(scan_id, feature=per_point.half().cpu().numpy())
                points += len(record.points)
                kept += scan.num_points
        facts[split] = f"{len(reader)} scans, {points} points ({kept} after voxelisation and crop)"
        facts["wrote"] = f"{out} ({human_size(out)})"


if __name__ == "__main__":
    main()
