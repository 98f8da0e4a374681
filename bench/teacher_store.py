"""What the teacher-feature store costs at nuScenes size, per encoding, against running the teacher
online (issue #16, section 5; README, "Artifact sizes of the distillation caches").

    .venv/bin/python bench/teacher_store.py bytes              # the real keyframe, nuScenes geometry
    .venv/bin/python bench/teacher_store.py forward demo       # the demo teacher per image on this machine
    .venv/bin/python bench/teacher_store.py forward nuscenes   # ViT-L/14 at 448x896, random weights
    .venv/bin/python bench/teacher_store.py disk CHAIN [CHAIN ...]   # patches bytes of finished chains

`bytes`: the real nuScenes keyframe of ../shared/realdata/ (laid out by tests/realdata.py) through
`assign_points` and `needed_patches` with presets/nuscenes.yaml's geometry (ViT-L/14 1024-d at
448x896, no occlusion filter), as the README's size table: raw bytes per scan of `patches` in
fp16 (2 D + 4 a patch), int8 (D + 4 + 4) and online (the patch ids only, 4), and of `taps` (24 a
row), then times the 28,130 train scans. `forward`: one teacher built from a params entry (the
demo's params.yaml, or presets/nuscenes.yaml with `weights: null`) over the keyframe's camera
images: the image load (JPEG decode and resize) and the forward per image, one image per forward
(as an online step with one camera per scan), after one warm-up image. `disk`: bytes on disk of
each split's `patches` (and `taps`) per scan, and its encoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.assignments import assign_points, needed_patches, patch_taps  # noqa: E402
from pipeline.datasets import open_reader  # noqa: E402
from pipeline.store.ragged import RaggedReader  # noqa: E402
from pipeline.teachers import build_teacher, teacher_shape  # noqa: E402
from stages.common import load_project_params  # noqa: E402

TRAIN_SCANS = 28_130  # nuScenes v1.0-trainval train keyframes


def keyframe(folder: Path):
    """The real keyframe's params (presets/nuscenes.yaml on its dataroot) and its record."""
    import yaml
    from realdata import MISSING, REALDATA, keyframe_params, write_nuscenes_keyframe

    if not REALDATA.is_dir():
        raise SystemExit(MISSING)
    data = keyframe_params(write_nuscenes_keyframe(folder / "nuscenes"))
    (folder / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    params = load_project_params(folder / "params.yaml")
    reader = open_reader(params.dataset, params.dataset.eval_split)
    return params, reader.read(reader.scan_ids[0])


def sizes(folder: Path) -> None:
    params, record = keyframe(folder)
    patch_size, dim = teacher_shape(params.teacher)
    size = params.teacher.input_size
    grid = (size[0] // patch_size, size[1] // patch_size)
    rows = assign_points(record, size, patch_size, params.assignments.min_depth, params.assignments.occlusion_cell)
    needed = needed_patches(patch_taps(rows, grid, patch_size, params.assignments.mode))
    patches, taps = len(needed.patch_id), len(rows)
    per_scan = {"fp16": patches * (2 * dim + 4), "int8": patches * (dim + 4 + 4), "online": patches * 4}
    print(f"real keyframe: {len(record.points)} points, {taps} assignment rows, {patches} patches, "
          f"{len(needed.cameras(grid))} cameras, teacher {params.teacher.model_name} {dim}-d at {size[0]}x{size[1]}")
    print("| patches encoding | bytes per scan | + taps | nuScenes train (x 28,130) |")
    print("| --- | --- | --- | --- |")
    for name, nbytes in per_scan.items():
        total = nbytes + taps * 24
        print(f"| {name} | {nbytes / 1e6:.2f} MB | {total / 1e6:.2f} MB | {total * TRAIN_SCANS / 1e9:.1f} GB |")


def forward(folder: Path, which: str, images: int) -> None:
    params, record = keyframe(folder)
    if which == "demo":
        demo = load_project_params(REPO / "params.yaml")
        config = demo.teacher
    else:
        config = dataclasses.replace(params.teacher, weights=None)
    config = dataclasses.replace(config, device="cpu")
    teacher = build_teacher(config)
    cameras = record.cameras
    load, run = [], []
    with torch.inference_mode():
        for index in range(images + 1):  # the first is a warm-up
            camera = cameras[index % len(cameras)]
            start = time.perf_counter()
            pixels = teacher.load_image(camera.image_path, (camera.height, camera.width))[None]
            loaded = time.perf_counter()
            teacher.patch_features(pixels)
            done = time.perf_counter()
            if index:
                load.append(loaded - start)
                run.append(done - loaded)
    h, w = teacher.input_size
    print(f"{which} teacher {config.model_name} {teacher.embed_dim}-d at {h}x{w}, {torch.get_num_threads()} threads: "
          f"image load {np.median(load):.3f} s, forward {np.median(run):.2f} s per image "
          f"(median of {images}: {', '.join(f'{t:.2f}' for t in run)})")


def disk(chains: list[Path]) -> None:
    print("| chain | split | encoding | scans | patches per scan | taps per scan |")
    print("| --- | --- | --- | --- | --- | --- |")
    for chain in chains:
        for split in sorted(p for p in (chain / "cache/teacher_features").iterdir() if p.is_dir()):
            store = RaggedReader(split / "patches")
            bytes_of = {name: sum(f.stat().st_size for f in (split / name).rglob("*") if f.is_file())
                        for name in ("patches", "taps")}
            scans = len(store)
            print(f"| {chain} | {split.name} | {store.attributes.get('encoding', 'fp16')} | {scans} | "
                  f"{bytes_of['patches'] / scans / 1e6:.3f} MB | {bytes_of['taps'] / scans / 1e6:.3f} MB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("bytes", "forward", "disk"))
    parser.add_argument("args", nargs="*", help="forward: demo | nuscenes; disk: chain folders")
    parser.add_argument("--images", type=int, default=2, help="forward: timed images (after one warm-up)")
    args = parser.parse_args()
    if args.what == "disk":
        disk([Path(a) for a in args.args])
        return
    folder = Path(tempfile.mkdtemp(prefix="teacher_store_"))
    try:
        if args.what == "bytes":
            sizes(folder)
        else:
            if args.args not in (["demo"], ["nuscenes"]):
                parser.error("forward takes demo or nuscenes")
            forward(folder, args.args[0], args.images)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
