"""Stage teacher_features: the teacher over the camera images, keeping what points need.

    python -m stages.teacher_features
    torchrun --nproc_per_node=K -m stages.teacher_features    # K processes (GPUs), same bytes

For each split of the assignments (cache/assignments/<key>/: a split, or <split>@<name> for
an entry of `distill_datasets`), runs the frozen teacher over the cameras that hold an
assigned pixel, and writes cache/teacher_features/<key>/ with two ragged stores:
`patches` (per scan, the fp16 features of the patches some assignment reads, and their flat
patch ids) and `taps` (per assignment row, i.e. per (point, camera) pair, the 4 rows of
`patches` it combines and their weights: bilinear in "pixel" mode, one patch with weight 1 in
"patch" mode). A point seen by two cameras has the taps of both. Under torchrun or srun,
each rank encodes its shard of the scans on its own GPU (pipeline.distributed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.assignments import ScanAssignments, needed_patches, patch_taps
from pipeline.datasets import open_reader
from pipeline.distributed import ShardedOutput, World, launched
from pipeline.kill_switch import kill_point
from pipeline.store.ragged import RaggedReader
from pipeline.teachers import Teacher, build_teacher
from stages.common import (
    ASSIGNMENTS,
    SplitSource,
    TEACHER_FEATURES,
    human_size,
    run_command,
    split_sources,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)


def read_assignments(store: RaggedReader, scan_id: str) -> ScanAssignments:
    rows = store.read(scan_id)
    return ScanAssignments(rows["point_index"], rows["camera"], rows["pixel"], rows["patch"])


def write_split(params, teacher: Teacher, source: SplitSource, out: Path, world: World) -> dict:
    reader = open_reader(source.dataset, source.split)
    assignments = RaggedReader(ASSIGNMENTS / source.key)
    grid = teacher.grid_size
    dim = teacher.embed_dim
    mode = params.assignments.mode
    batch_size = params.teacher_features.batch_size
    attributes = {"teacher": teacher.teacher_id, "mode": mode, "grid": list(grid), "dim": dim}
    images = patches_kept = no_camera = 0
    with ShardedOutput(out, assignments.scan_ids, world, scratch=stage_scratch("teacher_features")) as output, \
         output.ragged("patches", {"feature": ("float16", (dim,)), "patch_id": ("int32", ())},
                       attributes=attributes) as patch_store, \
         output.ragged("taps", {"tap": ("int32", (4,)), "weight": ("float16", (4,))},
                       attributes=attributes) as tap_store:
        for done, scan_id in enumerate(tqdm(output.scan_ids, desc=f"teacher {source.key}", unit="scan",
                                            disable=not world.is_main), start=1):
            cameras = reader.read(scan_id).cameras
            needed = needed_patches(patch_taps(read_assignments(assignments, scan_id), grid,
                                               teacher.patch_size, mode))
            used = needed.cameras(grid)
            features = torch.zeros(len(cameras), dim, grid[0] * grid[1])
            for start in range(0, len(used), batch_size):
                batch = used[start:start + batch_size]
                # Each image at the size its calibration (and so the assignments) is for, never stretched.
                pixels = torch.stack([teacher.load_image(cameras[c].image_path, (cameras[c].height, cameras[c].width))
                                      for c in batch])
                features[torch.as_tensor(batch)] = teacher.patch_features(pixels).flatten(2).cpu()
            flat = features.permute(0, 2, 1).reshape(-1, dim)
            patch_store.append(scan_id, feature=flat[torch.as_tensor(needed.patch_id)].numpy(),
                               patch_id=needed.patch_id)
            tap_store.append(scan_id, tap=needed.tap, weight=needed.weight)
            kill_point("teacher_features", done)
            images += len(used)
            patches_kept += len(needed.patch_id)
            no_camera += not cameras  # no image to encode, no row: the scan is absent from the 2D baseline
    images, patches_kept, no_camera = world.sum([images, patches_kept, no_camera])
    return {"scans": len(assignments), "images": images, "patches": patches_kept, "no_camera": no_camera}


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("teacher_features", args)
    with launched(params.teacher.device, setting="teacher.device") as world, \
         summary("teacher_features") as facts:
        teacher = build_teacher(params.teacher)
        facts["teacher"] = teacher.teacher_id
        for source in split_sources(params):
            counts = write_split(params, teacher, source, TEACHER_FEATURES / source.key, world)
            facts[source.key] = (f"{counts['scans']} scans ({counts['no_camera']} without a camera), "
                                 f"{counts['images']} images, "
                                 f"{counts['patches']} patches kept, {human_size(TEACHER_FEATURES / source.key)}")


if __name__ == "__main__":
    run_command(main)
