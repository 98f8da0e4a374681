"""Stage finetune: the student plus a linear head trained end to end with labels (ScaLR+, D-DITR).

    python -m stages.finetune              (dvc repro segmenters/dvc.yaml:finetune)

`finetune.init: distilled` starts from the distilled student (cache/student); `random` from
the same architecture freshly initialised (D-DITR's baseline), with the same budget. Trained on
the true labels of `finetune.fraction` of the distillation split's scans (chosen by scan with
`finetune.seed`), evaluated on the evaluation split beside the zero-shot labels. Writes
cache/segmenters/finetune.safetensors, metrics/finetune.json and plots/finetune/.
"""

from __future__ import annotations

import torch

from pipeline.datasets import open_reader
from pipeline.devices import resolve_device
from pipeline.segmentation.config import FinetuneConfig
from pipeline.segmentation.data import ScanSource, labelled_fraction
from pipeline.segmentation.models import BackboneSegmenter
from pipeline.segmentation.outputs import SegmenterOutputs
from pipeline.segmentation.run import run_segmenter, summary_line
from pipeline.students.io import CONFIG_FILE, load_student, read_student_config
from stages.common import (
    STUDENT,
    run_command,
    segmenter_outputs,
    split_folders,
    stage_arguments,
    start_stage,
    summary,
)

NAME = "finetune"


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage(NAME, args)
    config = params.section("finetune", FinetuneConfig)
    train_split, eval_split = split_folders(params, "distill"), split_folders(params, "eval")
    stats, classes = params.dataset.intensity_stats(), params.dataset.label_map().classes
    with summary(NAME) as facts:
        train = ScanSource(open_reader(params.dataset, train_split.split), stats)
        evaluation = ScanSource(open_reader(params.dataset, eval_split.split), stats)
        train_ids = labelled_fraction(train.scan_ids, config.fraction, config.seed)
        torch.manual_seed(config.seed)
        if config.init == "distilled":
            backbone, _ = load_student(STUDENT)
        else:  # the distilled student's architecture, freshly initialised
            backbone = read_student_config(STUDENT / CONFIG_FILE).build()
        model = BackboneSegmenter(backbone, len(classes))
        results = run_segmenter(NAME, model, train, train_ids, evaluation, eval_split.predictions, classes, config,
                                resolve_device("auto"), SegmenterOutputs(**segmenter_outputs(NAME)),
                                arch=backbone.config.arch)
        facts["trained"] = (f"{backbone.config.arch} from {config.init} init on {len(train_ids)} of "
                            f"{len(train.scan_ids)} scans of {train_split.split} (true labels)")
        facts["mIoU"] = summary_line(results)


if __name__ == "__main__":
    run_command(main)
