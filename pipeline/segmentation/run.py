"""One segmenter stage's work, whatever the segmenter: train, evaluate beside zero-shot, write."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.metrics import SegmentationMetrics
from pipeline.segmentation.config import TrainingConfig
from pipeline.segmentation.data import ScanSource
from pipeline.segmentation.ensembling import TemporalEnsemble
from pipeline.segmentation.loop import evaluate_segmenter, train_segmenter
from pipeline.segmentation.outputs import SegmenterOutputs, write_outputs


def run_segmenter(name: str, model: torch.nn.Module, train: ScanSource, train_ids: Sequence[str],
                  evaluation: ScanSource, zero_shot: Path, classes: Sequence[str], config: TrainingConfig,
                  device: torch.device, outputs: SegmenterOutputs, ensemble: TemporalEnsemble | None = None,
                  **facts) -> dict[str, SegmentationMetrics]:
    """Train `model` on `train_ids`, evaluate it on every scan of `evaluation` beside the zero-shot
    labels of `zero_shot` (the label stage's store of that split), write weights, metrics and
    plots; `facts` (and the config, the scan count and the seconds) go into the metrics' `run`."""
    start = time.perf_counter()
    history = train_segmenter(model, train_ids, train, config, device, ensemble)
    trained = time.perf_counter()
    results = evaluate_segmenter(model, evaluation, zero_shot, classes, device)
    run = {**asdict(config), **facts, "train_scans": len(train_ids), "steps": len(history),
           "train_seconds": round(trained - start, 1), "evaluate_seconds": round(time.perf_counter() - trained, 1)}
    write_outputs(outputs, name, model, history, results, classes, run)
    return results


def summary_line(results: dict[str, SegmentationMetrics]) -> str:
    """The stage's mIoU beside zero-shot, all / visible / invisible points, for its summary line."""
    return ", ".join(f"{part} {results[part].miou:.3f} (zero-shot {results[f'zero_shot_{part}'].miou:.3f})"
                     for part in ("all", "visible", "invisible"))
