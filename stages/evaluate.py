"""Stage evaluate: metrics of the 3D labels and of the 2D baseline, with pictures.

    python -m stages.evaluate

Three results on the evaluation split, each against the dataset's labels (255 ignored):
- `3d`: the student's labels on all points;
- `3d_visible`: the student's labels on the points some camera sees;
- `2d_baseline`: teacher features projected onto those same visible points.
Writes metrics/metrics.json (mIoU, oAcc, mAcc, per-class IoU of each), metrics/per_class_iou.csv
and metrics/confusion_3d.csv (DVC plots), and pictures under plots/evaluate/: per-class IoU bars,
the normalised confusion matrix, and bird's-eye views of prediction against truth.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.datasets import open_reader
from pipeline.datasets.base import IGNORE_LABEL
from pipeline.metrics import ConfusionAccumulator
from pipeline.store.atomic import atomic_output, save_json
from pipeline.store.ragged import RaggedReader
from pipeline.viz import save_confusion_heatmap, save_iou_bars, save_prediction_bev
from stages.common import (
    METRICS,
    PICTURES,
    PREDICTIONS,
    human_size,
    log,
    run_command,
    stage_arguments,
    start_stage,
    summary,
)

RESULTS = ("3d", "3d_visible", "2d_baseline")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_output(path) as tmp:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def evenly_spaced(items: tuple[str, ...], count: int) -> list[str]:
    """`count` items spread over the sequence (the first always included)."""
    if count <= 0 or not items:
        return []
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))]


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("evaluate", args)
    split = params.dataset.eval_split
    with summary("evaluate") as facts:
        reader = open_reader(params.dataset, split)
        classes = reader.label_map.classes
        predictions = RaggedReader(PREDICTIONS / split)
        accumulators = {name: ConfusionAccumulator(len(classes)) for name in RESULTS}
        preview_ids = evenly_spaced(predictions.scan_ids, params.evaluate.preview_scans)
        pictures = []
        # The pictures folder is written whole or not at all, like every other output.
        with atomic_output(PICTURES) as picture_dir:
            picture_dir.mkdir(parents=True)
            for scan_id in tqdm(predictions.scan_ids, desc=f"evaluate {split}", unit="scan"):
                record = reader.read(scan_id)
                if record.labels is None:
                    raise ValueError(f"scan {scan_id} of split {split!r} has no labels to evaluate against")
                predicted = predictions.read(scan_id)
                if len(predicted["label"]) != len(record.labels):
                    raise ValueError(f"{PREDICTIONS / split}: scan {scan_id} has {len(predicted['label'])} "
                                     f"predictions for {len(record.labels)} points; rerun the pipeline")
                truth = record.labels
                visible = predicted["baseline"] != IGNORE_LABEL
                accumulators["3d"].add(predicted["label"], truth)
                accumulators["3d_visible"].add(predicted["label"][visible], truth[visible])
                accumulators["2d_baseline"].add(predicted["baseline"][visible], truth[visible])
                if scan_id in preview_ids:
                    name = f"bev_{len(pictures)}.png"
                    save_prediction_bev(record.points, predicted["label"].astype(np.int64), truth, classes,
                                        picture_dir / name, f"3D labels against the truth, scan {scan_id}")
                    pictures.append(name)
            results = {name: acc.metrics(classes) for name, acc in accumulators.items()}
            save_iou_bars(classes, {"3D student (all points)": results["3d"].iou,
                                    "3D student (visible points)": results["3d_visible"].iou,
                                    "2D baseline (visible points)": results["2d_baseline"].iou},
                          picture_dir / "per_class_iou.png", f"per-class IoU on {split}")
            save_confusion_heatmap(results["3d"].confusion, classes, picture_dir / "confusion_3d.png",
                                   f"3D labels on {split}, rows normalised")
            pictures += ["per_class_iou.png", "confusion_3d.png"]
        write_metrics(results, classes)
        for name, m in results.items():
            log.info("%-12s mIoU %.3f  oAcc %.3f  mAcc %.3f  (%d points)", name, m.miou, m.oacc, m.macc, m.num_points)
        facts["read"] = f"{PREDICTIONS / split} ({len(predictions)} scans), truth from {params.dataset.root}"
        facts["mIoU"] = ", ".join(f"{name} {m.miou:.3f}" for name, m in results.items())
        facts["wrote"] = f"{METRICS} ({human_size(METRICS)}), {PICTURES} ({human_size(PICTURES)})"


def write_metrics(results: dict, classes: tuple[str, ...]) -> None:
    """metrics.json, and the per-class IoU and 3D confusion tables that `dvc plots` draws."""
    METRICS.mkdir(exist_ok=True)
    save_json(METRICS / "metrics.json", {name: m.to_dict() for name, m in results.items()})
    write_csv(METRICS / "per_class_iou.csv", ["class", *RESULTS],
              [[c, *(_fmt(results[r].iou[i]) for r in RESULTS)] for i, c in enumerate(classes)])
    confusion = results["3d"].confusion
    write_csv(METRICS / "confusion_3d.csv", ["truth", "prediction", "points"],
              [[classes[t], classes[p], int(confusion[t, p])]
               for t in range(len(classes)) for p in range(len(classes)) if confusion[t, p]])


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.4f}"


if __name__ == "__main__":
    run_command(main)
