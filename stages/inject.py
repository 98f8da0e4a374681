"""Stage inject: DITR's injection of the frozen teacher features into a segmentation network.

    python -m stages.inject                (dvc repro segmenters/dvc.yaml:inject)

A network of `student.<inject.arch>` (random init; its head gives the evaluation classes) that
receives the cached teacher features of each point's camera (cache/teacher_features with
cache/assignments, of both splits), added through linear + BatchNorm + GELU; zero for points no
camera sees (`pipeline.segmentation.inject`): a sparse UNet at every decoder stage (max-pooled
into its voxels), a WaffleIron after a few evenly spaced blocks. Trained on the true labels of
`inject.fraction` of the distillation split's scans, evaluated on all, visible and invisible
points of the evaluation split beside the zero-shot labels. `inject.shuffle_teacher: true` permutes the teacher features
among each scan's visible points (the sabotage check). Writes cache/segmenters/inject.safetensors,
metrics/inject.json and plots/inject/.
"""

from __future__ import annotations

import torch

from pipeline.datasets import open_reader
from pipeline.devices import resolve_device
from pipeline.segmentation.config import InjectConfig
from pipeline.segmentation.data import ScanSource, TeacherPointFeatures, labelled_fraction, shuffled_within_scan
from pipeline.segmentation.inject import build_injected
from pipeline.segmentation.outputs import SegmenterOutputs
from pipeline.segmentation.run import run_segmenter, summary_line
from stages.common import (
    ASSIGNMENTS,
    TEACHER_FEATURES,
    run_command,
    segmenter_outputs,
    split_folders,
    stage_arguments,
    start_stage,
    summary,
)

NAME = "inject"


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage(NAME, args)
    config = params.section("inject", InjectConfig)
    train_split, eval_split = split_folders(params, "distill"), split_folders(params, "eval")
    stats, classes = params.dataset.intensity_stats(), params.dataset.label_map().classes
    shuffle = (shuffled_within_scan("teacher", config.seed),) if config.shuffle_teacher else ()
    with summary(NAME) as facts:
        sources = [ScanSource(open_reader(params.dataset, split), stats, transforms=shuffle,
                              teacher=TeacherPointFeatures(ASSIGNMENTS / split, TEACHER_FEATURES / split))
                   for split in (train_split.split, eval_split.split)]  # the main dataset's keys are its splits
        train, evaluation = sources
        train_ids = labelled_fraction(train.scan_ids, config.fraction, config.seed)
        torch.manual_seed(config.seed)
        model = build_injected(getattr(params.student, config.arch), train.teacher.dim, len(classes))
        results = run_segmenter(NAME, model, train, train_ids, evaluation, eval_split.predictions, classes, config,
                                resolve_device("auto"), SegmenterOutputs(**segmenter_outputs(NAME)),
                                arch=config.arch)
        facts["trained"] = (f"{config.arch} with teacher injection{' (shuffled)' if shuffle else ''} on "
                            f"{len(train_ids)} of {len(train.scan_ids)} scans of {train_split.split} (true labels)")
        facts["mIoU"] = summary_line(results)


if __name__ == "__main__":
    run_command(main)
