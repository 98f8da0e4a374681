"""What every segmenter stage writes: its weights, its metrics and its plots (paths from the stage)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.metrics import SegmentationMetrics
from pipeline.segmentation.loop import StepRecord
from pipeline.store.atomic import atomic_output, save_json
from pipeline.store.safetensors import save_safetensors
from pipeline.viz import save_iou_bars, save_loss_curve


@dataclass(frozen=True)
class SegmenterOutputs:
    """Where a segmenter stage writes: weights (a .safetensors file), metrics (a .json file),
    plots (a folder: loss.csv, loss.png, per_class_iou.csv, per_class_iou.png), scratch (the
    stage's temporaries)."""

    weights: Path
    metrics: Path
    plots: Path
    scratch: Path


def write_outputs(outputs: SegmenterOutputs, name: str, model: torch.nn.Module, history: Sequence[StepRecord],
                  results: dict[str, SegmentationMetrics], classes: Sequence[str], run: dict) -> None:
    """Weights (with `run` as metadata), metrics (each result, and `run`), loss curve and
    per-class IoU of the segmenter beside the zero-shot labels, all written atomically."""
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_safetensors(outputs.weights, state, {"stage": name, **run}, outputs.scratch)
    save_json(outputs.metrics, {**{key: m.to_dict() for key, m in results.items()}, "run": run}, outputs.scratch)
    with atomic_output(outputs.plots, outputs.scratch) as folder:
        folder.mkdir(parents=True)
        write_csv(folder / "loss.csv", ["step", "epoch", "lr", "loss", "points"],
                  [[r.step, r.epoch, f"{r.lr:.6g}", f"{r.loss:.6f}", r.points] for r in history])
        save_loss_curve([r.step for r in history], [max(r.loss, 1e-8) for r in history], [r.lr for r in history],
                        folder / "loss.png", title=name, ylabel="loss (cross-entropy)")
        series = {"segmenter": "all", "zero_shot": "zero_shot_all"}
        write_csv(folder / "per_class_iou.csv", ["class", *series],
                  [[c, *(_fmt(results[key].iou[i]) for key in series.values())] for i, c in enumerate(classes)])
        save_iou_bars(classes, {f"{name} (all points)": results["all"].iou,
                                "zero-shot 3D (all points)": results["zero_shot_all"].iou},
                      folder / "per_class_iou.png", f"per-class IoU: {name} beside zero-shot")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.4f}"
