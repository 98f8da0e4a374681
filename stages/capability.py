"""Stage capability: how well the label classifier recognises each class's held-out prototypes.

    python -m stages.capability

Run it after editing the vocabulary, before any 3D work (`dvc repro capability`): it needs
only the template features, and takes seconds. For each vocabulary class it fits the label
classifier (`label.method`) on the other prototypes and labels the held-out ones
(`capability.folds`: k folds by prototype index, 8 by default, or null for
leave-one-prototype-out; see pipeline/labelling/capability.py for why not the latter). Writes metrics/capability.json (per teacher, keyed by the
teacher id of the template features: overall and mean class accuracy; per class the accuracy,
the held-out count and the class it is most confused with, and how often; the warning lines)
and plots/capability/confusion.png (held-out prototypes, rows their class, columns the label).
Logs one warning line per class whose accuracy is below `capability.warn_below`.
"""

from __future__ import annotations

import json
import logging

from tqdm import tqdm

from pipeline.labelling.capability import CapabilityConfig, measure_capability
from pipeline.store.atomic import atomic_output, save_json
from pipeline.store.safetensors import load_safetensors
from pipeline.viz import save_confusion_heatmap
from stages.common import METRICS, PLOTS, TEMPLATES_FILE, run_command, stage_arguments, stage_scratch, start_stage, summary

CAPABILITY_FILE = METRICS / "capability.json"
CAPABILITY_PICTURES = PLOTS / "capability"

log = logging.getLogger("stages")


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("capability", args)
    config = params.section("capability", CapabilityConfig)
    scratch = stage_scratch("capability")
    with summary("capability") as facts:
        tensors, metadata = load_safetensors(TEMPLATES_FILE)
        stored = tuple(json.loads(metadata["class_names"]))
        if stored != params.class_names:
            raise ValueError(f"{TEMPLATES_FILE}: holds classes {stored}, params list {params.class_names}; "
                             "rerun the template_features stage")
        teacher = metadata["teacher"]
        result = measure_capability(tensors["features"], tensors["labels"], stored, params.label.method,
                                    config.folds, progress=lambda sets: tqdm(sets, desc="held-out fits", unit="fit"),
                                    eval_labels=[params.vocabulary[c].label for c in stored])
        warnings = result.warnings(config.warn_below)
        report = {"method": params.label.method, "protocol": config.protocol, "warn_below": config.warn_below,
                  "teachers": {teacher: {**result.to_dict(), "warnings": warnings}}}
        METRICS.mkdir(exist_ok=True)
        save_json(CAPABILITY_FILE, report, scratch)
        with atomic_output(CAPABILITY_PICTURES, scratch) as folder:
            folder.mkdir(parents=True)
            save_confusion_heatmap(result.confusion, stored, folder / "confusion.png",
                                   f"held-out prototypes ({config.protocol}, {params.label.method})")
        for line in warnings:
            log.warning("%s", line)
        scores = report["teachers"][teacher]
        facts["teacher"] = teacher
        facts["held out"] = f"{int(result.held_out.sum())} prototypes of {len(stored)} classes ({config.protocol})"
        facts["accuracy"] = f"{scores['accuracy']:.3f} (mean over classes {scores['mean_class_accuracy']:.3f})"
        facts["below warn_below"] = len(warnings)
        facts["wrote"] = f"{CAPABILITY_FILE}, {CAPABILITY_PICTURES / 'confusion.png'}"


if __name__ == "__main__":
    run_command(main)
