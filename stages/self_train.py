"""Stage self_train: annotation-free closed-set segmentation by self-training on IGLOSS
pseudo-labels, with SAS's temporal ensembling (seed 001, section 3.4).

    python -m stages.self_train            (dvc repro segmenters/dvc.yaml:self_train)

Fine-tunes the distilled student (cache/student) with a linear head for the evaluation classes
on the IGLOSS pseudo-labels of the distillation split (cache/distill_split/predictions/,
`label --split distill`): each point's target is the argmax of an exponential moving average of
its predictions across epochs (`self_train.alpha`), started from its pseudo-label. No
ground-truth label of the distillation split is read: its reader is opened with `labels=False`.
Evaluated on the evaluation split beside the zero-shot labels. `self_train.shuffle_pseudo_labels:
true` permutes the pseudo-labels within each scan (the sabotage check). Writes
cache/segmenters/self_train.safetensors, metrics/self_train.json and plots/self_train/.
"""

from __future__ import annotations

import torch

from pipeline.datasets import open_reader
from pipeline.devices import resolve_device
from pipeline.segmentation.config import SelfTrainConfig
from pipeline.segmentation.data import ScanSource, shuffled_within_scan
from pipeline.segmentation.ensembling import TemporalEnsemble
from pipeline.segmentation.models import BackboneSegmenter
from pipeline.segmentation.outputs import SegmenterOutputs
from pipeline.segmentation.run import run_segmenter, summary_line
from pipeline.students.io import load_student
from stages.common import (
    STUDENT,
    run_command,
    segmenter_outputs,
    split_folders,
    stage_arguments,
    start_stage,
    summary,
)

NAME = "self_train"


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage(NAME, args)
    config = params.section("self_train", SelfTrainConfig)
    train_split, eval_split = split_folders(params, "distill"), split_folders(params, "eval")
    stats, classes = params.dataset.intensity_stats(), params.dataset.label_map().classes
    shuffle = (shuffled_within_scan("labels", config.seed),) if config.shuffle_pseudo_labels else ()
    with summary(NAME) as facts:
        train = ScanSource(open_reader(params.dataset, train_split.split, labels=False), stats,
                           label_store=train_split.predictions, transforms=shuffle)
        evaluation = ScanSource(open_reader(params.dataset, eval_split.split), stats)
        torch.manual_seed(config.seed)
        backbone, _ = load_student(STUDENT)
        model = BackboneSegmenter(backbone, len(classes))
        results = run_segmenter(NAME, model, train, train.scan_ids, evaluation, eval_split.predictions, classes,
                                config, resolve_device("auto"), SegmenterOutputs(**segmenter_outputs(NAME)),
                                TemporalEnsemble(len(classes), config.alpha), arch=backbone.config.arch)
        facts["trained"] = (f"{backbone.config.arch} from the distilled student on the pseudo-labels"
                            f"{' (shuffled)' if shuffle else ''} of {len(train.scan_ids)} scans of "
                            f"{train_split.split}, no ground truth")
        facts["mIoU"] = summary_line(results)


if __name__ == "__main__":
    run_command(main)
