"""Stage evaluate: metrics of the 3D labels and of the 2D baseline, with pictures.

    python -m stages.evaluate

Three results on the evaluation split, each against the dataset's labels (255 ignored):
- `3d`: the student's labels on all points;
- `3d_visible`: the student's labels on the points some camera sees;
- `2d_baseline`: teacher features projected onto those same visible points.
Points the reader dropped for NaN/inf coordinates have no prediction (255 in both columns of
the predictions, which keep one row per raw point): they are left out of every result, like
points whose truth is 255, and `dropped_points` in metrics.json counts them per stage:
`point_features` (rows the point-feature store flags not valid, as the label stage read them),
`label` (predictions left at 255) and `labelled` (of those, points whose truth is a class: the
points nobody could label; `num_points` of `3d` plus `labelled` is every labelled point).
Predictions at 255 anywhere but at the scan's non-finite points are stale: rerun the pipeline.
Scans without labels (a nuScenes dataroot without lidarseg, a SemanticKITTI sequence without
`labels/`) are counted, not evaluated, and scans without a camera (no `image_2/` or `calib.txt`)
have no 2D-baseline or visible points: `scans` in metrics.json counts both, and `notes` says
in words what is missing; a split with no label at all writes every metric as null (0 points)
instead of failing.
Writes metrics/metrics.json (mIoU, oAcc, mAcc, per-class IoU of each; `dropped_points`, `scans`),
metrics/per_class_iou.csv and metrics/confusion_3d.csv (DVC plots), and pictures under
plots/evaluate/: per-class IoU bars, the normalised confusion matrix, and bird's-eye views of
prediction against truth.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.datasets import open_reader
from pipeline.datasets.base import IGNORE_LABEL, ScanRecord
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
    stage_scratch,
    start_stage,
    summary,
)

RESULTS = ("3d", "3d_visible", "2d_baseline")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_output(path, stage_scratch("evaluate")) as tmp:
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
        dropped = {"point_features": predictions.attributes.get("dropped_points"), "label": 0, "labelled": 0}
        scans = {"total": len(predictions), "unlabelled": 0, "without_camera": 0}
        pictures = []
        # The pictures folder is written whole or not at all, like every other output.
        with atomic_output(PICTURES, stage_scratch("evaluate")) as picture_dir:
            picture_dir.mkdir(parents=True)
            for scan_id in tqdm(predictions.scan_ids, desc=f"evaluate {split}", unit="scan"):
                record = reader.read(scan_id)
                scans["unlabelled"] += record.labels is None
                scans["without_camera"] += not record.cameras
                predicted = predictions.read(scan_id)
                if len(predicted["label"]) != record.raw_count:
                    raise ValueError(f"{PREDICTIONS / split}: scan {scan_id} has {len(predicted['label'])} "
                                     f"predictions for {record.raw_count} points; rerun the pipeline")
                predicted = without_dropped(predicted, record, PREDICTIONS / split)
                if record.dropped is not None:
                    dropped["label"] += record.dropped.count
                    dropped["labelled"] += record.dropped.labelled
                truth = record.labels if record.labels is not None else \
                    np.full(len(record.points), IGNORE_LABEL, dtype=np.int64)  # unlabelled: nothing counts
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
        notes = missing_notes(split, scans)
        for note in notes:
            log.warning("%s", note)
        write_metrics(results, classes, dropped, scans, notes)
        for name, m in results.items():
            log.info("%-12s mIoU %.3f  oAcc %.3f  mAcc %.3f  (%d points)", name, m.miou, m.oacc, m.macc, m.num_points)
        facts["read"] = f"{PREDICTIONS / split} ({len(predictions)} scans), truth from {params.dataset.root}"
        facts["mIoU"] = ("none: the split has no labels" if scans["unlabelled"] == scans["total"]
                         else ", ".join(f"{name} {m.miou:.3f}" for name, m in results.items()))
        facts["dropped"] = (f"{dropped['label']} points with NaN/inf coordinates ({dropped['labelled']} of them "
                            "labelled), left out of every result")
        facts["wrote"] = f"{METRICS} ({human_size(METRICS)}), {PICTURES} ({human_size(PICTURES)})"


def without_dropped(predicted: dict[str, np.ndarray], record: ScanRecord, store: Path) -> dict[str, np.ndarray]:
    """One scan's predictions (one row per raw point) at the reader's points only, checking that
    the label stage left exactly the points with NaN/inf coordinates at 255."""
    ignored = predicted["label"] == IGNORE_LABEL
    if record.dropped is None:
        if ignored.any():
            raise ValueError(f"{store}: scan {record.scan_id} has {int(ignored.sum())} predictions at 255 "
                             "(dropped) but no point with NaN/inf coordinates; rerun the pipeline")
        return predicted
    if not np.array_equal(ignored, record.dropped.mask()):
        raise ValueError(f"{store}: scan {record.scan_id} has {int(ignored.sum())} predictions at 255 (dropped), "
                         f"not its {record.dropped.count} points with NaN/inf coordinates; rerun the pipeline")
    return {name: values[record.dropped.kept_index] for name, values in predicted.items()}


def missing_notes(split: str, scans: dict) -> list[str]:
    """What the results lack, in words: scans without labels, scans without a camera."""
    notes = []
    if scans["unlabelled"] == scans["total"]:
        notes.append(f"split {split!r} has no labels: nothing to evaluate against, every metric is null (0 points)")
    elif scans["unlabelled"]:
        notes.append(f"{scans['unlabelled']} of {scans['total']} scans of split {split!r} have no labels and are "
                     "left out of every result")
    if scans["without_camera"]:
        notes.append(f"{scans['without_camera']} of {scans['total']} scans of split {split!r} have no camera "
                     "(e.g. SemanticKITTI without image_2/ or calib.txt): the 2D baseline and 3d_visible "
                     "leave them out")
    return notes


def write_metrics(results: dict, classes: tuple[str, ...], dropped: dict, scans: dict, notes: list[str]) -> None:
    """metrics.json (each result's metrics, `dropped_points`, `scans` and, when something is
    missing, `notes`), and the per-class IoU and 3D confusion tables that `dvc plots` draws."""
    METRICS.mkdir(exist_ok=True)
    notes = {"notes": "; ".join(notes)} if notes else {}
    save_json(METRICS / "metrics.json", {**{name: m.to_dict() for name, m in results.items()},
                                         "dropped_points": dropped, "scans": scans, **notes},
              stage_scratch("evaluate"))
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
