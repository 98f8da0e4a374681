"""Stage label: label every point by matching its feature to the template features.

    python -m stages.label

Fits the classifier of `label.method` on the template features (one class per vocabulary
entry), maps each prompt class to its evaluation label (several prompt classes may count as
one label), and labels:
- every point of the evaluation split from its cached 3D feature (`label`); a store of PCA
  coefficients (`point_features.pca.dims`) is read back through its basis
  (`pipeline.labelling.point_features`), so the same classifier labels the reconstructed
  features (see pipeline/labelling/feature_pca.py for why);
- the 2D baseline: every point some camera sees, from the teacher feature of its pixel
  (`baseline`; 255 for points no camera sees), as OpenScene's 2D fusion does; a point seen by
  several cameras takes the mean of their features.
Writes cache/predictions/<split>/, a ragged zarr store of uint8 columns per scan, one row per
raw point of the scan file in file order, like the point features: the points the reader
dropped for NaN/inf coordinates (`valid` false in the point features) get 255 in both
columns, and their count is the store's attribute `dropped_points`.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from pipeline.assignments import combine_taps, per_point_mean
from pipeline.datasets.base import IGNORE_LABEL
from pipeline.kill_switch import kill_point
from pipeline.labelling.classifier import fit_from_templates, prompt_to_eval_label
from pipeline.labelling.point_features import PointFeatureReader
from pipeline.store.ragged import RaggedReader, RaggedWriter
from stages.common import (
    ASSIGNMENTS,
    POINT_FEATURES,
    PREDICTIONS,
    TEACHER_FEATURES,
    TEMPLATES_FILE,
    human_size,
    run_command,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("label", args)
    split = params.dataset.eval_split
    out = PREDICTIONS / split
    with summary("label") as facts:
        classifier = fit_from_templates(TEMPLATES_FILE, params.class_names, params.label.method)
        to_eval = prompt_to_eval_label([params.vocabulary[c].label for c in params.class_names],
                                       params.dataset.label_map().classes)
        features = PointFeatureReader(POINT_FEATURES / split)
        assignments = RaggedReader(ASSIGNMENTS / split)
        patches = RaggedReader(TEACHER_FEATURES / split / "patches")
        taps = RaggedReader(TEACHER_FEATURES / split / "taps")
        points = seen = unseen_scans = 0
        dropped = sum(int((~features.valid(scan_id)).sum()) for scan_id in features.scan_ids)
        columns = {"label": ("uint8", ()), "baseline": ("uint8", ())}
        with RaggedWriter(out, columns, attributes={"method": params.label.method, "dropped_points": dropped},
                          scratch=stage_scratch("label")) as writer:
            for done, scan_id in enumerate(tqdm(features.scan_ids, desc=f"label {split}", unit="scan"), start=1):
                point_features, valid = features.read(scan_id), features.valid(scan_id)
                kept = None if valid.all() else np.flatnonzero(valid)  # raw index of the finite points
                if kept is None:
                    label = to_eval[classifier.predict(point_features)]
                else:
                    label = np.full(len(valid), IGNORE_LABEL, dtype=np.uint8)
                    label[kept] = to_eval[classifier.predict(point_features[kept])]
                tap = taps.read(scan_id)
                pixel_features = combine_taps(torch.from_numpy(patches.read(scan_id, ["feature"])["feature"]),
                                              torch.from_numpy(tap["tap"]), torch.from_numpy(tap["weight"]))
                baseline = np.full(len(label), IGNORE_LABEL, dtype=np.uint8)
                # Of the finite points; a point seen by several cameras has one row per camera.
                point_index, pixel_features = per_point_mean(
                    assignments.read(scan_id, ["point_index"])["point_index"], pixel_features)
                if len(point_index):
                    baseline[point_index if kept is None else kept[point_index]] = \
                        to_eval[classifier.predict(pixel_features.numpy())]
                writer.append(scan_id, label=label, baseline=baseline)
                kill_point("label", done)
                points += len(label) if kept is None else len(kept)
                seen += len(point_index)
                unseen_scans += not len(point_index)  # no camera (or none sees a point): no 2D baseline
        if features.basis is not None:
            facts["point features"] = (f"reconstructed from {features.basis.dims} PCA coefficients "
                                       f"({features.basis.explained:.2%} of the sample variance)")
        facts[split] = (f"{len(features)} scans, {points} points labelled, {seen} seen by a camera (2D baseline; "
                        f"{unseen_scans} scans with no point seen by a camera, e.g. no camera at all), "
                        f"{dropped} dropped for NaN/inf coordinates (label 255)")
        facts["wrote"] = f"{out} ({human_size(out)})"


if __name__ == "__main__":
    run_command(main)
