"""Stage assignments: every lidar point's camera, teacher pixel and patch, per split.

    python -m stages.assignments
    torchrun --nproc_per_node=K -m stages.assignments    # K CPU processes, same bytes

For each split that distillation or evaluation uses, writes cache/assignments/<split>/ (for
an entry of `distill_datasets`, cache/assignments/<split>@<name>/), a ragged zarr store with one row per assigned point: point_index, camera, pixel (u, v) at
the teacher's input size and patch (row, col). Cheap per scan (a fraction of a second) but
hours for a full nuScenes split in one process, so it shards like the GPU stages.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from pipeline.assignments import assign_points
from pipeline.datasets import open_reader
from pipeline.distributed import ShardedOutput, World, launched
from pipeline.seeding import scan_id_rng
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
    points = assigned = dropped = 0
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
            result = assign_points(record, params.teacher.input_size, patch, cfg.min_depth,
                                   scan_id_rng(cfg.seed, scan_id), cfg.occlusion_cell)
            writer.append(scan_id, point_index=result.point_index, camera=result.camera,
                          pixel=result.pixel, patch=result.patch)
            kill_point("assignments", done)
            points += len(record.points)
            assigned += len(result)
            dropped += record.dropped_points
    points, assigned, dropped = world.sum([points, assigned, dropped])
    return {"scans": len(reader), "points": points, "assigned": assigned, "dropped": dropped}


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("assignments", args)
    with launched("cpu") as world, summary("assignments") as facts:  # numpy work: gloo, CPU
        for source in split_sources(params):
            counts = write_split(params, source, ASSIGNMENTS / source.key, world)
            facts[source.key] = (f"{counts['scans']} scans, {counts['assigned']}/{counts['points']} points "
                            f"assigned ({100 * counts['assigned'] / max(counts['points'], 1):.1f}%), "
                            f"{counts['dropped']} non-finite dropped, {human_size(ASSIGNMENTS / source.key)}")


if __name__ == "__main__":
    run_command(main)
