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
With `extra_teachers`, every teacher is measured on its own template features: one entry per
teacher id (an extra teacher's also holds its `name`) and plots/capability/confusion_<name>.png;
capability fusion in `label` reads these per-class accuracies (pipeline/labelling/fusion.py).
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
from stages.common import (
    CAPABILITY_FILE,
    FIRST_TEACHER,
    METRICS,
    PLOTS,
    run_command,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
    template_file,
)

CAPABILITY_PICTURES = PLOTS / "capability"

log = logging.getLogger("stages")


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("capability", args)
    config = params.section("capability", CapabilityConfig)
    scratch = stage_scratch("capability")
    with summary("capability") as facts:
        report = {"method": params.label.method, "protocol": config.protocol, "warn_below": config.warn_below,
                  "teachers": {}}
        pictures = {}
        for name in params.all_teachers:
            file = template_file(name)
            tensors, metadata = load_safetensors(file)
            stored = tuple(json.loads(metadata["class_names"]))
            if stored != params.class_names:
                raise ValueError(f"{file}: holds classes {stored}, params list {params.class_names}; "
                                 "rerun the template_features stage")
            teacher = metadata["teacher"]
            if teacher in report["teachers"]:
                raise ValueError(f"{file}: teacher {name!r} is the same teacher as "
                                 f"{report['teachers'][teacher]['name']!r} ({teacher}); give it other settings")
            result = measure_capability(tensors["features"], tensors["labels"], stored, params.label.method,
                                        config.folds,
                                        progress=lambda sets: tqdm(sets, desc=f"held-out fits {name}", unit="fit"),
                                        eval_labels=[params.vocabulary[c].label for c in stored])
            warnings = result.warnings(config.warn_below)
            scores = {**result.to_dict(), "warnings": warnings}
            report["teachers"][teacher] = scores if name == FIRST_TEACHER else {"name": name, **scores}
            pictures[name] = result.confusion
            for line in warnings:
                log.warning("%s%s", "" if name == FIRST_TEACHER else f"teacher {name}: ", line)
            facts[name] = (f"{teacher}: accuracy {scores['accuracy']:.3f} (mean over classes "
                           f"{scores['mean_class_accuracy']:.3f}), {len(warnings)} below warn_below")
        METRICS.mkdir(exist_ok=True)
        save_json(CAPABILITY_FILE, report, scratch)
        with atomic_output(CAPABILITY_PICTURES, scratch) as folder:
            folder.mkdir(parents=True)
            for name, confusion in pictures.items():
                picture = "confusion.png" if name == FIRST_TEACHER else f"confusion_{name}.png"
                save_confusion_heatmap(confusion, params.class_names, folder / picture,
                                       f"held-out prototypes ({config.protocol}, {params.label.method}"
                                       + ("" if name == FIRST_TEACHER else f", teacher {name}") + ")")
        facts["held out"] = f"{int(result.held_out.sum())} prototypes of {len(stored)} classes ({config.protocol})"
        facts["wrote"] = f"{CAPABILITY_FILE}, {CAPABILITY_PICTURES}"

if __name__ == "__main__":
    run_command(main)
