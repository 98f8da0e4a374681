"""Probe the demo world's 2D baseline: templates -> classifier -> teacher features of lidar points.

Generates a demo world, builds the small random teacher, encodes procedural exemplars as
templates, fits the template classifiers and evaluates them on the val split through the
project's real reader and projection (every (point, camera) pair, as `assignments`).
Rows, each with mIoU over the evaluation classes present in the truth and per-class IoU:

* logistic / nearest_prototype: the real 2D baseline (templates only);
* oracle centroid: cosine nearest class centroid fitted on the evaluated point features
  themselves. Low: the features do not separate the classes. High while logistic is low:
  the templates do not match what the cameras see.
* patch-mix ceiling: no teacher involved. Each point is given the class with the largest
  share of the camera truth around its pixel, weighted exactly as the teacher's feature is
  (class fractions per 14 x 14 patch, then the same bilinear / patch sampling). A teacher
  that sees only colour cannot do better at a boundary than the majority of what its
  patches contain, so this bounds any per-pixel classifier at this teacher resolution.
* camera truth: the class the camera truly shows at the assigned pixel. Below 1 because
  the cameras sit elsewhere than the lidar (mount offsets, height) and fire 40-90 ms away
  from it while the ego moves: they see some lidar points occluded, most at the
  silhouettes of small objects. No 2D method can beat it. Exact when the teacher input is
  at least the camera size (the pixel is recovered from the rescaled one).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/probe_2d_baseline.py [--preset small] [--world-seed 1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.assignments import assign_points  # noqa: E402
from pipeline.datasets.nuscenes import NuScenesReader  # noqa: E402
from pipeline.demo_world import DEMO_CLASS_NAMES, DemoWorldConfig, render_exemplar, write_demo_world  # noqa: E402
from pipeline.generation.seeds import image_seed  # noqa: E402
from pipeline.labelling.classifier import fit_classifier, l2_normalize  # noqa: E402
from pipeline.metrics import ConfusionAccumulator  # noqa: E402
from pipeline.teachers import ArchitectureOverridesConfig, Teacher, TeacherConfig, build_teacher  # noqa: E402
from pipeline.teachers.upsampling import pixel_features_at  # noqa: E402

PATCH = 14  # DINOv2
# Prompt class -> nuScenes evaluation class (as params.yaml's vocabulary).
EVAL_CLASS = {
    "road": "driveable_surface", "sidewalk": "sidewalk", "terrain": "terrain", "building": "manmade",
    "pole": "manmade", "trunk": "vegetation", "vegetation": "vegetation", "car": "car", "truck": "truck",
    "bus": "bus", "pedestrian": "pedestrian", "barrier": "barrier", "traffic_cone": "traffic_cone",
    "bicycle": "bicycle",
}
IGNORE = 255
OCCLUSION_CELL = 12  # camera pixels; as params.yaml's assignments.occlusion_cell


def truth_labels(reader: NuScenesReader, png: Path) -> np.ndarray:
    """A camera truth image as evaluation labels (IGNORE where nothing or an ignored class)."""
    raw = np.array(Image.open(png))
    lookup = np.full(256, IGNORE, dtype=np.int64)
    lookup[: len(reader.label_map.lookup)] = reader.label_map.lookup
    return lookup[raw]


def patch_mix_labels(truth: np.ndarray, uv: np.ndarray, input_size, num_classes: int, mode: str) -> np.ndarray:
    """Majority class of the truth as the teacher samples it at the teacher pixels `uv`."""
    height, width = input_size
    rows = np.arange(height) * truth.shape[0] // height  # nearest resize to the teacher input
    cols = np.arange(width) * truth.shape[1] // width
    big = truth[rows][:, cols]
    shares = np.stack([(big == k) for k in range(num_classes)]).astype(np.float32)
    shares = shares.reshape(num_classes, height // PATCH, PATCH, width // PATCH, PATCH).mean(axis=(2, 4))
    mixed = pixel_features_at(torch.from_numpy(shares), uv, PATCH, mode).numpy()
    return mixed.argmax(axis=1)


def collect(reader: NuScenesReader, teacher: Teacher | None, input_size, mode: str):
    """For every (val point, camera) pair that passes the visibility rules: teacher feature (or
    none), eval label, the camera-truth label at its pixel and the patch-mix label."""
    feats, labels, seen, mixed = [], [], [], []
    num_classes = len(reader.label_map.classes)
    token_of = {Path(sd["filename"]).name: sd["token"] for sd in reader.nusc.sample_data}
    for scan_id in reader.scan_ids:
        record = reader.read(scan_id)
        assigned = assign_points(record, input_size, PATCH, 1.0, OCCLUSION_CELL)
        if teacher is not None:
            images = torch.stack([teacher.load_image(cam.image_path, (cam.height, cam.width))
                                  for cam in record.cameras])
            patch_feats = teacher.patch_features(images)
        for cam in np.unique(assigned.camera):
            sel = assigned.camera == cam
            uv = assigned.pixel[sel].astype(np.int64)
            if teacher is not None:
                feats.append(pixel_features_at(patch_feats[cam], uv, teacher.patch_size, mode=mode).cpu().numpy())
            labels.append(record.labels[assigned.point_index[sel]])
            view = record.cameras[cam]
            truth = truth_labels(reader, reader.root / "truth" / view.name / f"{token_of[view.image_path.name]}_class.png")
            # Back to the camera pixel: u = floor(p * W_in / W), so p = ceil(u * W / W_in) when W_in >= W.
            px = np.minimum(-((-uv[:, 0] * view.width) // input_size[1]), view.width - 1)
            py = np.minimum(-((-uv[:, 1] * view.height) // input_size[0]), view.height - 1)
            seen.append(truth[py, px])
            mixed.append(patch_mix_labels(truth, uv, input_size, num_classes, mode))
    feats = np.concatenate(feats) if feats else np.zeros((sum(map(len, labels)), 0), dtype=np.float32)
    return feats, np.concatenate(labels), np.concatenate(seen), np.concatenate(mixed)


def report(name: str, pred: np.ndarray, truth: np.ndarray, eval_names, present: list[int], confusions: bool) -> float:
    acc = ConfusionAccumulator(len(eval_names))
    acc.add(pred, truth)
    m = acc.metrics(eval_names)
    cells = "  ".join(f"{eval_names[k][:8]:>8s} {m.iou[k]:.2f}" for k in present)
    print(f"{name:>17s} mIoU {m.miou:.3f} | {cells}")
    if confusions:
        c = acc.confusion.astype(float)
        counts = c.sum(axis=1)
        np.fill_diagonal(c, 0)
        for flat in np.argsort(c, axis=None)[::-1][:8]:
            t, p = divmod(int(flat), len(eval_names))
            if c[t, p] > 0:
                print(f"    {eval_names[t]} -> {eval_names[p]}: {int(c[t, p])} ({c[t, p] / counts[t]:.1%} of truth)")
    return m.miou


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", choices=["default", "small"])
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--world", type=Path, default=None,
                    help="reuse (or create, if missing) this world folder instead of a temporary one")
    ap.add_argument("--input-size", type=int, nargs=2, default=(448, 784), metavar=("H", "W"))
    ap.add_argument("--template-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--num-heads", type=int, default=3)
    ap.add_argument("--teacher-seed", type=int, default=0)
    ap.add_argument("--images-per-class", type=int, default=8)
    ap.add_argument("--exemplar-size", type=int, default=224)
    ap.add_argument("--mode", default="pixel", choices=["pixel", "patch"])
    ap.add_argument("--ceiling-only", action="store_true", help="skip the teacher: only the two ceilings")
    ap.add_argument("--confusions", action="store_true", help="print the largest confusions of each row")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    input_size = tuple(args.input_size)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="probe2d-") as tmp:
        world = args.world or Path(tmp) / "world"
        if not (world / "summary.json").is_file():
            write_demo_world(world, DemoWorldConfig.preset(args.preset, seed=args.world_seed), show_progress=False)
        t_world = time.perf_counter() - t0

        teacher, templates, template_labels = None, None, None
        if not args.ceiling_only:
            teacher = build_teacher(TeacherConfig(
                input_size=input_size, template_size=tuple(args.template_size), seed=args.teacher_seed,
                overrides=ArchitectureOverridesConfig(depth=args.depth, embed_dim=args.embed_dim, num_heads=args.num_heads),
                device="cpu",
            ))
            images, template_labels = [], []
            for k, name in enumerate(DEMO_CLASS_NAMES):
                for i in range(args.images_per_class):
                    images.append(render_exemplar(name, image_seed(0, name, i), args.exemplar_size))
                    template_labels.append(k)
            templates = teacher.encode_templates(images)
            template_labels = np.array(template_labels)
        t_templates = time.perf_counter() - t0 - t_world

        reader = NuScenesReader(world / "nuscenes", "v1.0-demo", "val")
        eval_names = reader.label_map.classes
        to_eval = np.array([eval_names.index(EVAL_CLASS[n]) for n in DEMO_CLASS_NAMES])
        feats, truth, seen, mixed = collect(reader, teacher, input_size, args.mode)
        t_points = time.perf_counter() - t0 - t_world - t_templates

    keep = truth != IGNORE
    feats, truth, seen, mixed = feats[keep], truth[keep], seen[keep], mixed[keep]
    present = sorted(set(truth.tolist()))
    print(f"world {args.preset} seed {args.world_seed}, teacher input {input_size[0]}x{input_size[1]} "
          f"depth {args.depth}, {args.mode} mode: {len(truth)} val points in cameras; "
          f"world {t_world:.1f}s, templates {t_templates:.1f}s, point features {t_points:.1f}s")
    counts = np.bincount(truth, minlength=len(eval_names))
    print("points per class: " + ", ".join(f"{eval_names[k]} {counts[k]}" for k in present))

    if teacher is not None:
        for method in ("logistic", "nearest_prototype"):
            clf = fit_classifier(method, templates, template_labels, len(DEMO_CLASS_NAMES))
            report(method, to_eval[clf.predict(feats)], truth, eval_names, present, args.confusions)
        x = l2_normalize(feats)
        centroids = l2_normalize(np.stack([x[truth == k].mean(axis=0) for k in present]))
        pred = np.array(present)[(x @ centroids.T).argmax(axis=1)]
        report("oracle centroid", pred, truth, eval_names, present, args.confusions)
    report("patch-mix ceiling", mixed, truth, eval_names, present, args.confusions)
    # A pixel showing nothing (sky) cannot be told apart: count it as right.
    report("camera truth", np.where(seen == IGNORE, truth, seen), truth, eval_names, present, args.confusions)
    print(f"total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
