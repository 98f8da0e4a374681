"""The one training loop of every segmenter, and its evaluation beside the zero-shot labels.

`train_segmenter` trains a segmenter (`models`, `inject`) on the scans of a `ScanSource`: each
epoch visits the scans in a seeded order, `batch_size` per step; each scan is prepared with the
training augmentations (cut to `max_points`), the loss is the cross-entropy of the logits of its
kept points against their labels (255 ignored), or, with a `TemporalEnsemble`, against the
ensemble's targets, which then take in the predictions. AdamW, cosine decay to 0.

`evaluate_segmenter` predicts every point of the evaluation split and counts, against the
truth: the segmenter and the zero-shot 3D labels on all, visible and invisible points (visible:
some camera sees it, i.e. the 2D baseline labelled it), and the 2D baseline on visible points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.datasets.base import IGNORE_LABEL
from pipeline.metrics import ConfusionAccumulator, SegmentationMetrics
from pipeline.seeding import epoch_scan_rng
from pipeline.segmentation.config import TrainingConfig
from pipeline.segmentation.data import ScanSource
from pipeline.segmentation.ensembling import TemporalEnsemble
from pipeline.store.ragged import RaggedReader
from pipeline.students.inputs import Augmentation


@dataclass(frozen=True)
class StepRecord:
    step: int
    epoch: int
    lr: float
    loss: float
    points: int


def train_segmenter(model: torch.nn.Module, scan_ids: Sequence[str], source: ScanSource, config: TrainingConfig,
                    device: torch.device, ensemble: TemporalEnsemble | None = None,
                    on_step: Callable[[StepRecord], None] | None = None) -> list[StepRecord]:
    """Train `model` in place on `scan_ids` of `source`; one record per optimiser step."""
    if not scan_ids:
        raise ValueError("a segmenter needs at least one training scan")
    torch.manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(scan_ids) / config.batch_size)
    total = config.epochs * steps_per_epoch
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))
    # Without `augment`, only the cut to max_points (and a random point per voxel).
    subsample = Augmentation(max_points=config.max_points, cap="uniform") if config.augment else \
        Augmentation(max_points=config.max_points, rotate_z=False, flip_probability=0.0, scale_range=0.0)
    model.to(device).train()
    history: list[StepRecord] = []
    progress = tqdm(total=total, desc="train", unit="step")
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(scan_ids))
        for start in range(0, len(order), config.batch_size):
            batch = [int(i) for i in order[start:start + config.batch_size]]
            scans = [source(scan_ids[i]) for i in batch]
            rngs = [epoch_scan_rng(config.seed, epoch, i) for i in batch]
            prepared = [model.prepare(scan, subsample, rng) for scan, rng in zip(scans, rngs)]
            logits = model.logits(prepared, device)
            targets = [ensemble.targets(scan.scan_id, scan.labels, p.point_index) if ensemble
                       else scan.labels[p.point_index] for scan, p in zip(scans, prepared)]
            target = torch.from_numpy(np.concatenate(targets)).to(device)
            counted = int((target != IGNORE_LABEL).sum())
            loss = F.cross_entropy(torch.cat(logits), target, ignore_index=IGNORE_LABEL) if counted \
                else torch.cat(logits).sum() * 0  # nothing labelled in this batch: a step of zero
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ensemble:
                for scan, p, out in zip(scans, prepared, logits):
                    ensemble.update(scan.scan_id, p.point_index, out.softmax(dim=1))
            history.append(StepRecord(len(history), epoch, scheduler.get_last_lr()[0], loss.item(), counted))
            scheduler.step()
            if on_step:
                on_step(history[-1])
            progress.update()
            progress.set_postfix(loss=f"{history[-1].loss:.4f}", epoch=epoch)
    progress.close()
    model.eval()
    return history


RESULTS = ("all", "visible", "invisible", "zero_shot_all", "zero_shot_visible", "zero_shot_invisible",
           "2d_baseline_visible")


def evaluate_segmenter(model: torch.nn.Module, source: ScanSource, zero_shot: Path, classes: Sequence[str],
                       device: torch.device) -> dict[str, SegmentationMetrics]:
    """The segmenter's metrics on every scan of `source` (the evaluation split, with its truth),
    beside the zero-shot labels of the label stage's store `zero_shot` (RESULTS)."""
    store = RaggedReader(zero_shot)
    accumulators = {name: ConfusionAccumulator(len(classes)) for name in RESULTS}
    model.to(device).eval()
    for scan_id in tqdm(source.scan_ids, desc="evaluate", unit="scan"):
        scan = source(scan_id)
        with torch.inference_mode():
            prepared = model.prepare(scan, None, None)
            predicted = model.logits([prepared], device)[0].argmax(dim=1).cpu().numpy()[prepared.back_projection]
        stored = store.read(scan_id)
        label, baseline = scan.finite(stored["label"]), scan.finite(stored["baseline"])
        visible = baseline != IGNORE_LABEL
        for suffix, rows in (("all", slice(None)), ("visible", visible), ("invisible", ~visible)):
            accumulators[suffix].add(predicted[rows], scan.labels[rows])
            accumulators[f"zero_shot_{suffix}"].add(label[rows], scan.labels[rows])
        accumulators["2d_baseline_visible"].add(baseline[visible], scan.labels[visible])
    return {name: acc.metrics(classes) for name, acc in accumulators.items()}
