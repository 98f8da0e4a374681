"""Running a teacher over what the pipeline caches: the prototype images and the camera images.

The work of the `template_features` and `teacher_features` stages, and of their counterparts
for the extra teachers (`extra_template_features`, `extra_teacher_features`): each teacher
gets its own template features and teacher-feature stores, made the same way.

* `encode_prototypes`: one vector per prototype image of every class (`Teacher.encode_templates`),
  and `write_template_features`, the file the label classifier is fitted on;
* `write_teacher_split`: for one split of the assignments, the features of the patches some
  assignment reads (`patches`, in the encoding of `pipeline.teachers.patch_encoding`) and each
  assignment's taps into them (`taps`), as two ragged stores (see stages/teacher_features.py).
  A teacher whose patch size differs from the one the assignments were made for takes its
  patches from the assignments' pixels (which are in the camera input frame every teacher shares);
* `scan_patch_features`: the teacher over the cameras of one scan that hold some given patches,
  what `write_teacher_split` stores and what distillation with `distill.teacher_source: online`
  computes inside its steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.assignments import ScanAssignments, needed_patches, patch_taps
from pipeline.datasets.base import ScanReader
from pipeline.distributed import ShardedOutput, World
from pipeline.generation.manifest import ManifestError, read_manifest
from pipeline.kill_switch import kill_point
from pipeline.store.ragged import RaggedReader
from pipeline.store.safetensors import save_safetensors
from pipeline.teachers.base import Teacher
from pipeline.teachers.patch_encoding import encode_rows, patch_columns


def prototype_images(folder: Path, class_name: str) -> list[Image.Image]:
    """The prototype images of one class, from `folder` (its manifest's order)."""
    manifest = read_manifest(folder)
    if not manifest.images:
        raise ManifestError(f"{folder / 'manifest.json'}: class {class_name!r} has no prototype images")
    images = []
    for entry in manifest.images:
        with Image.open(folder / entry.file) as image:
            images.append(image.convert("RGB"))
    return images


def encode_prototypes(teacher: Teacher, class_names: Sequence[str], prototypes: Path, batch_size: int,
                      desc: str = "templates") -> tuple[np.ndarray, np.ndarray, dict[str, list[Image.Image]]]:
    """Every class's prototypes (`prototypes/<class>/`) through the teacher: (M, D) float32
    features, (M,) int64 labels (indices into `class_names`) and the images per class."""
    features, labels, images = [], [], {}
    for index, class_name in enumerate(tqdm(class_names, desc=desc, unit="class")):
        pictures = prototype_images(prototypes / class_name, class_name)
        features.append(teacher.encode_templates(pictures, batch_size))
        labels.append(np.full(len(pictures), index, dtype=np.int64))
        images[class_name] = pictures
    return np.concatenate(features), np.concatenate(labels), images


def write_template_features(teacher: Teacher, class_names: Sequence[str], prototypes: Path, batch_size: int,
                            out: Path, scratch: Path, desc: str = "templates") -> dict[str, list[Image.Image]]:
    """A teacher's template features file at `out` (safetensors: `features` (M, D) float32,
    `labels` (M,) int64; metadata: the class names and the teacher id); returns the images per
    class (for the contact sheet)."""
    features, labels, images = encode_prototypes(teacher, class_names, prototypes, batch_size, desc)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(out, {"features": features, "labels": labels},
                     {"class_names": list(class_names), "teacher": teacher.teacher_id}, scratch)
    return images


def read_assignments(store: RaggedReader, scan_id: str, patch_size: int | None = None) -> ScanAssignments:
    """One scan's assignments; with `patch_size`, the patches recomputed from the pixels for a
    teacher of that patch size (the same as stored when it is the assignments' own)."""
    rows = store.read(scan_id)
    patch = rows["patch"]
    if patch_size is not None and patch_size != store.attributes.get("patch_size"):
        patch = (rows["pixel"][:, ::-1] // patch_size).astype(np.uint16)  # (u, v) -> (row, col)
    return ScanAssignments(rows["point_index"], rows["camera"], rows["pixel"], patch)


def scan_patch_features(teacher: Teacher, cameras: Sequence, patch_id: np.ndarray, batch_size: int) -> torch.Tensor:
    """(len(patch_id), D) float32 (CPU): the teacher's features of the given flat patch ids
    (camera * h * w + row * w + col) of one scan, each camera that holds one encoded once,
    `batch_size` images per forward. cameras: the scan's cameras (`ScanRecord.cameras`)."""
    cells = teacher.grid_size[0] * teacher.grid_size[1]
    camera = np.asarray(patch_id, dtype=np.int64) // cells
    used = np.unique(camera)
    features = torch.zeros(len(used), teacher.embed_dim, cells)
    for start in range(0, len(used), batch_size):
        batch = used[start:start + batch_size]
        # Each image at the size its calibration (and so the assignments) is for, never stretched.
        pixels = torch.stack([teacher.load_image(cameras[c].image_path, (cameras[c].height, cameras[c].width))
                              for c in batch])
        features[start:start + len(batch)] = teacher.patch_features(pixels).flatten(2).cpu()
    slot = torch.from_numpy(np.searchsorted(used, camera))
    return features[slot, :, torch.from_numpy(np.asarray(patch_id, dtype=np.int64) % cells)]


def write_teacher_split(teacher: Teacher, reader: ScanReader, assignments: RaggedReader, out: Path, world: World,
                        mode: str, batch_size: int, scratch: Path, desc: str, encoding: str = "fp16") -> dict:
    """The teacher-feature stores (`patches`, `taps`) of one split at `out`; returns its counts.

    reader: the split's scans (for the camera images); assignments: its assignment store;
    mode: `assignments.mode`; encoding: how `patches` keeps the features (fp16, int8, or none:
    only the patch ids, no teacher run; `pipeline.teachers.patch_encoding`). Under torchrun each
    rank encodes its shard of the scans.
    """
    grid = teacher.grid_size
    dim = teacher.embed_dim
    attributes = {"teacher": teacher.teacher_id, "mode": mode, "grid": list(grid), "dim": dim}
    images = patches_kept = no_camera = 0
    with ShardedOutput(out, assignments.scan_ids, world, scratch=scratch) as output, \
         output.ragged("patches", patch_columns(encoding, dim), attributes=attributes | {"encoding": encoding}) \
         as patch_store, \
         output.ragged("taps", {"tap": ("int32", (4,)), "weight": ("float16", (4,))},
                       attributes=attributes) as tap_store:
        for done, scan_id in enumerate(tqdm(output.scan_ids, desc=desc, unit="scan",
                                            disable=not world.is_main), start=1):
            cameras = reader.read(scan_id).cameras
            rows = read_assignments(assignments, scan_id, teacher.patch_size)
            needed = needed_patches(patch_taps(rows, grid, teacher.patch_size, mode))
            features = {}
            if encoding != "none":
                features = encode_rows(scan_patch_features(teacher, cameras, needed.patch_id, batch_size).numpy(),
                                       encoding)
                images += len(needed.cameras(grid))
            patch_store.append(scan_id, patch_id=needed.patch_id, **features)
            tap_store.append(scan_id, tap=needed.tap, weight=needed.weight)
            kill_point("teacher_features", done)
            patches_kept += len(needed.patch_id)
            no_camera += not cameras  # no image to encode, no row: the scan is absent from the 2D baseline
    images, patches_kept, no_camera = world.sum([images, patches_kept, no_camera])
    return {"scans": len(assignments), "images": images, "patches": patches_kept, "no_camera": no_camera}
