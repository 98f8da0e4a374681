"""Probe the demo world's 2D baseline: templates -> classifier -> teacher features of lidar points.

Generates a demo world, builds the small random teacher, encodes procedural exemplars as
templates, fits the template classifiers and evaluates them on the val split through the
project's real reader and projection (one random camera per point). Three rows:

* logistic / nearest_prototype: the real 2D baseline (templates only);
* oracle: nearest class centroid fitted on the evaluated point features themselves (cosine),
  an upper bound of what a linear-ish read-out of these features can do. A low oracle means
  the features do not separate the classes; a high oracle with a low logistic means the
  templates do not match what the cameras see.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/probe_2d_baseline.py --preset small
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

from pipeline.assignments import assign_points, scan_rng  # noqa: E402
from pipeline.classifier import fit_classifier, l2_normalize  # noqa: E402
from pipeline.datasets.nuscenes import NuScenesReader  # noqa: E402
from pipeline.demo_world import DEMO_CLASS_NAMES, DemoWorldConfig, render_exemplar, write_demo_world  # noqa: E402
from pipeline.generation.seeds import image_seed  # noqa: E402
from pipeline.metrics import ConfusionAccumulator  # noqa: E402
from pipeline.teacher import ArchitectureOverrides, Teacher, TeacherConfig  # noqa: E402

# Prompt class -> nuScenes evaluation class (as params.yaml's vocabulary).
EVAL_CLASS = {
    "road": "driveable_surface", "sidewalk": "sidewalk", "terrain": "terrain", "building": "manmade",
    "pole": "manmade", "trunk": "vegetation", "vegetation": "vegetation", "car": "car", "truck": "truck",
    "bus": "bus", "pedestrian": "pedestrian", "barrier": "barrier", "traffic_cone": "traffic_cone",
    "bicycle": "bicycle",
}


def point_features(reader: NuScenesReader, teacher: Teacher | None, input_size, patch_size: int, mode: str):
    """Teacher features (P, D), eval labels (P,) and the camera-truth eval label at the
    assigned pixel (P,) of every val point some camera sees."""
    feats, labels, seen = [], [], []
    token_of = {Path(sd["filename"]).name: sd["token"] for sd in reader.nusc.sample_data}
    for scan_id in reader.scan_ids:
        record = reader.read(scan_id)
        assigned = assign_points(record, input_size, patch_size, 1.0, scan_rng(0, scan_id))
        if teacher is not None:
            images = torch.stack([teacher.load_image(cam.image_path) for cam in record.cameras])
            patch_feats = teacher.patch_features(images)
        for cam in np.unique(assigned.camera):
            sel = assigned.camera == cam
            uv = assigned.pixel[sel].astype(np.int64)
            if teacher is not None:
                feats.append(teacher.pixel_features_at(patch_feats[cam], uv, mode=mode).cpu().numpy())
            labels.append(record.labels[assigned.point_index[sel]])
            # Back to the camera pixel: u = floor(p * W_in / W) with W_in > W, so p = ceil(u * W / W_in).
            view = record.cameras[cam]
            px = -((-uv[:, 0] * view.width) // input_size[1])
            py = -((-uv[:, 1] * view.height) // input_size[0])
            truth_png = reader.root / "truth" / view.name / f"{token_of[view.image_path.name]}_class.png"
            raw = np.array(Image.open(truth_png))[py, px]
            seen.append(np.where(raw == 255, 255, reader.label_map.lookup[np.minimum(raw, len(reader.label_map.lookup) - 1)]))
    feats = np.concatenate(feats) if feats else np.zeros((sum(map(len, labels)), 0), dtype=np.float32)
    return feats, np.concatenate(labels), np.concatenate(seen)


def report(name: str, pred: np.ndarray, truth: np.ndarray, eval_names: tuple[str, ...], present: list[int]) -> float:
    acc = ConfusionAccumulator(len(eval_names))
    acc.add(pred, truth)
    m = acc.metrics(eval_names)
    cells = "  ".join(f"{eval_names[k][:8]:>8s} {m.iou[k]:.2f}" for k in present)
    print(f"{name:>17s} mIoU {m.miou:.3f} | {cells}")
    return m.miou


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", choices=["default", "small"])
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--world", type=Path, default=None,
                    help="reuse (or create, if missing) this world folder instead of a temp one")
    ap.add_argument("--input-size", type=int, nargs=2, default=(448, 784))
    ap.add_argument("--template-size", type=int, nargs=2, default=(224, 224))
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--num-heads", type=int, default=3)
    ap.add_argument("--teacher-seed", type=int, default=0)
    ap.add_argument("--images-per-class", type=int, default=8)
    ap.add_argument("--exemplar-size", type=int, default=224)
    ap.add_argument("--mode", default="pixel", choices=["pixel", "patch"])
    ap.add_argument("--ceiling-only", action="store_true",
                    help="skip the teacher: only the camera-truth ceiling (projection, occlusion, parallax)")
    ap.add_argument("--confusions", action="store_true", help="print the largest confusions of logistic")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="probe2d-") as tmp:
        world = args.world or Path(tmp) / "world"
        if not (world / "summary.json").is_file():
            write_demo_world(world, DemoWorldConfig.preset(args.preset, seed=args.world_seed), show_progress=False)
        t_world = time.perf_counter() - t0

        teacher, templates, template_labels = None, None, None
        if not args.ceiling_only:
            teacher = Teacher(TeacherConfig(
                input_size=tuple(args.input_size), template_size=tuple(args.template_size), seed=args.teacher_seed,
                overrides=ArchitectureOverrides(depth=args.depth, embed_dim=args.embed_dim, num_heads=args.num_heads),
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
        feats, truth, seen = point_features(reader, teacher, tuple(args.input_size), 14, args.mode)
        t_points = time.perf_counter() - t0 - t_world - t_templates

    keep = truth != 255
    feats, truth, seen = feats[keep], truth[keep], seen[keep]
    present = sorted(set(truth.tolist()))
    print(f"world {args.preset} seed {args.world_seed}: {len(truth)} val points in cameras; "
          f"world {t_world:.1f}s, templates {t_templates:.1f}s, point features {t_points:.1f}s")
    counts = np.bincount(truth, minlength=len(eval_names))
    print("points per class: " + ", ".join(f"{eval_names[k]} {counts[k]}" for k in present))

    if teacher is not None:
        for method in ("logistic", "nearest_prototype"):
            clf = fit_classifier(method, templates, template_labels, len(DEMO_CLASS_NAMES))
            pred = to_eval[clf.predict(feats)]
            report(method, pred, truth, eval_names, present)
            if method == "logistic" and args.confusions:
                print_confusions(pred, truth, eval_names)
        # Oracle: cosine nearest centroid of each eval class, fitted on these very features.
        x = l2_normalize(feats)
        centroids = l2_normalize(np.stack([x[truth == k].mean(axis=0) for k in present]))
        pred = np.array(present)[(x @ centroids.T).argmax(axis=1)]
        report("oracle centroid", pred, truth, eval_names, present)
    # Ceiling: the class the camera really shows at the assigned pixel (occlusion, parallax
    # between the lidar and the camera positions and times); no 2D method can beat it.
    ceiling = np.where(seen == 255, truth, seen)
    report("camera truth", ceiling, truth, eval_names, present)
    if args.confusions:
        print_confusions(ceiling, truth, eval_names)
    print(f"total {time.perf_counter() - t0:.1f}s")
    return 0


def print_confusions(pred: np.ndarray, truth: np.ndarray, eval_names, top: int = 8) -> None:
    acc = ConfusionAccumulator(len(eval_names))
    acc.add(pred, truth)
    c = acc.confusion.astype(float)
    counts = c.sum(axis=1)
    np.fill_diagonal(c, 0)
    for flat in np.argsort(c, axis=None)[::-1][:top]:
        t, p = divmod(int(flat), len(eval_names))
        if c[t, p] > 0:
            print(f"    {eval_names[t]} -> {eval_names[p]}: {int(c[t, p])} ({c[t, p] / counts[t]:.1%} of truth)")


if __name__ == "__main__":
    raise SystemExit(main())
