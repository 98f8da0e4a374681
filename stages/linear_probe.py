"""Stage linear_probe: a linear head on the frozen point features, trained with labels (ScaLR / ScaLR+).

    python -m stages.linear_probe          (dvc repro segmenters/dvc.yaml:linear_probe)

Trains a linear layer from the cached student features of the distillation split
(cache/distill_split/point_features/, `point_features --split distill`) to the evaluation
classes, on the true labels of `linear_probe.fraction` of its scans (chosen by scan with
`linear_probe.seed`), and evaluates it on the evaluation split's cached features, beside the
zero-shot labels (cache/predictions/). Writes cache/segmenters/linear_probe.safetensors,
metrics/linear_probe.json and plots/linear_probe/ (loss curve, per-class IoU beside zero-shot).
"""

from __future__ import annotations

import torch

from pipeline.datasets import open_reader
from pipeline.devices import resolve_device
from pipeline.segmentation.config import LinearProbeConfig
from pipeline.segmentation.data import ScanSource, labelled_fraction
from pipeline.segmentation.models import FeatureProbe
from pipeline.segmentation.outputs import SegmenterOutputs
from pipeline.segmentation.run import run_segmenter, summary_line
from stages.common import run_command, segmenter_outputs, split_folders, stage_arguments, start_stage, summary

NAME = "linear_probe"


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage(NAME, args)
    config = params.section("linear_probe", LinearProbeConfig)
    train_split, eval_split = split_folders(params, "distill"), split_folders(params, "eval")
    stats, classes = params.dataset.intensity_stats(), params.dataset.label_map().classes
    with summary(NAME) as facts:
        train = ScanSource(open_reader(params.dataset, train_split.split), stats, features=train_split.point_features)
        evaluation = ScanSource(open_reader(params.dataset, eval_split.split), stats,
                                features=eval_split.point_features)
        train_ids = labelled_fraction(train.scan_ids, config.fraction, config.seed)
        torch.manual_seed(config.seed)
        model = FeatureProbe(train.features.read(train_ids[0]).shape[1], len(classes))
        results = run_segmenter(NAME, model, train, train_ids, evaluation, eval_split.predictions, classes, config,
                                resolve_device("auto"), SegmenterOutputs(**segmenter_outputs(NAME)))
        facts["trained on"] = f"{len(train_ids)} of {len(train.scan_ids)} scans of {train_split.split} (true labels)"
        facts["mIoU"] = summary_line(results)


if __name__ == "__main__":
    run_command(main)
