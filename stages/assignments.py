"""Stage assignments: every (lidar point, camera) pair's teacher pixel and patch, per split.

    python -m stages.assignments
    torchrun --nproc_per_node=K -m stages.assignments    # K CPU processes, same bytes

For each split that distillation or evaluation uses, writes cache/assignments/<split>/ (for
an entry of `distill_datasets`, cache/assignments/<split>@<name>/), a ragged zarr store with one
row per (point, camera) pair that passes the visibility rules, sorted by point then camera:
point_index, camera, pixel (u, v) at the teacher's input size and patch (row, col). Which of a
point's cameras teaches it is drawn in training (`distill.camera`). Cheap per scan (a fraction
of a second) but hours for a full nuScenes split in one process, so it shards like the GPU stages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.assignments import assign_points
from pipeline.datasets import open_reader
from pipeline.distributed import ShardedOutput, World, launched
from pipeline.teachers import teacher_patch_size
from pipeline.kill_switch import kill_point
from stages.common import (
    ASSIGNMENTS,
    SplitSource,
    human_size,
    run_command,
    split_sources,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)

COLUMNS = {
    "point_index": ("int32", ()),
    "camera": ("uint8", ()),
    "pixel": ("uint16", (2,)),
    "patch": ("uint16", (2,)),
}


def write_split(params, source: SplitSource, out: Path, world: World) -> dict:
    reader = open_reader(source.dataset, source.split)
    cfg = params.assignments
    patch = teacher_patch_size(params.teacher)
    points = seen = pairs = dropped = no_camera = 0
    attributes = {
        "mode": cfg.mode,
        "input_size": list(params.teacher.input_size),
        "patch_size": patch,
    }
    with ShardedOutput(out, reader.scan_ids, world, scratch=stage_scratch("assignments")) as output, \
         output.ragged(None, COLUMNS, attributes=attributes) as writer:
        for done, scan_id in enumerate(tqdm(output.scan_ids, desc=f"assignments {source.key}", unit="scan",
                                            disable=not world.is_main), start=1):
            record = reader.read(scan_id)
            result = assign_points(record, params.teacher.input_size, patch, cfg.min_depth, cfg.occlusion_cell)
            writer.append(scan_id, point_index=result.point_index, camera=result.camera,
                          pixel=result.pixel, patch=result.patch)
            kill_point("assignments", done)
            points += len(record.points)
            seen += len(np.unique(result.point_index))
            pairs += len(result)
            dropped += record.dropped_points
            no_camera += not record.cameras  # e.g. SemanticKITTI without image_2/ or calib.txt: no row
    points, seen, pairs, dropped, no_camera = world.sum([points, seen, pairs, dropped, no_camera])
    return {"scans": len(reader), "points": points, "seen": seen, "pairs": pairs, "dropped": dropped,
            "no_camera": no_camera}


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("assignments", args)
    with launched("cpu") as world, summary("assignments") as facts:  # numpy work: gloo, CPU
        for source in split_sources(params):
            counts = write_split(params, source, ASSIGNMENTS / source.key, world)
            facts[source.key] = (f"{counts['scans']} scans, {counts['seen']}/{counts['points']} points seen "
                                 f"({100 * counts['seen'] / max(counts['points'], 1):.1f}%) in {counts['pairs']} "
                                 f"(point, camera) pairs, {counts['no_camera']} scans without a camera, "
                                 f"{counts['dropped']} non-finite dropped, "
                                 f"{human_size(ASSIGNMENTS / source.key)}")


if __name__ == "__main__":
    run_command(main)
