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
With `extra_teachers` (README, "Several teachers") each teacher has its own classifier, on its
template features and its head of the point features (its own teacher features for the 2D
baseline), and each point's label fuses theirs as `label.fusion` says: "capability" (SAS: by the
teachers' per-class capability on the prototypes, measured as the capability stage does with
`capability.folds`), "average", or one teacher's name
(pipeline/labelling/fusion.py).
With `label.regions.method` set, each point's class is pooled over its 3D segment of the scan
(its coordinates read from the dataset; pipeline/labelling/regions.py); the 2D baseline is not.
With `--split distill` it labels the distillation split instead (its point features from
cache/distill_split/point_features/), into cache/distill_split/predictions/<split>/: the
pseudo-labels the self_train stage trains on (segmenters/dvc.yaml).
Writes cache/predictions/<split>/, a ragged zarr store of uint8 columns per scan, one row per
raw point of the scan file in file order, like the point features: the points the reader
dropped for NaN/inf coordinates (`valid` false in the point features) get 255 in both
columns, and their count is the store's attribute `dropped_points`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from pipeline.assignments import combine_taps, per_point_mean
from pipeline.datasets import open_reader
from pipeline.datasets.base import IGNORE_LABEL
from pipeline.kill_switch import kill_point
from pipeline.labelling.classifier import fit_from_templates, prompt_to_eval_label
from pipeline.labelling.capability import CapabilityConfig
from pipeline.labelling.fusion import fit_ensemble
from pipeline.labelling.point_features import PointFeatureReader
from pipeline.labelling.regions import region_labels
from pipeline.store.ragged import RaggedReader, RaggedWriter
from pipeline.teachers.patch_encoding import patch_feature_dim, read_patch_features
from stages.common import (
    add_split_option,
    split_folders,
    ASSIGNMENTS,
    TEMPLATES_FILE,
    human_size,
    run_command,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
    teacher_features_folder,
    template_file,
)


def pixel_rows(patches: RaggedReader, taps: RaggedReader, scan_id: str) -> torch.Tensor:
    """One teacher's (A, D) feature at each assignment row of a scan."""
    tap = taps.read(scan_id)
    return combine_taps(torch.from_numpy(read_patch_features(patches, scan_id)),
                        torch.from_numpy(tap["tap"]), torch.from_numpy(tap["weight"]))


def main(argv: list[str] | None = None) -> None:
    args = add_split_option(stage_arguments(__doc__)).parse_args(argv)
    params = start_stage("label", args)
    folders = split_folders(params, args.split)
    split, out = folders.split, folders.predictions
    with summary("label") as facts:
        # One scan at a time, decoded on every core: labelling a split is mostly decoding and one product.
        features = PointFeatureReader(folders.point_features, reuse_buffers=True, decode_threads=os.cpu_count() or 1)
        # Each teacher's feature stores of the split; with several teachers, one classifier per
        # teacher over its head's columns, fused as `label.fusion` says (pipeline/labelling/fusion.py).
        stores = [(RaggedReader(teacher_features_folder(name) / split / "patches"),
                   RaggedReader(teacher_features_folder(name) / split / "taps")) for name in params.all_teachers]
        classifier = (fit_from_templates(TEMPLATES_FILE, params.class_names, params.label.method)
                      if len(params.all_teachers) == 1 else fit_ensemble(
                          {name: template_file(name) for name in params.all_teachers},
                          {name: patch_feature_dim(patches)
                           for name, (patches, _) in zip(params.all_teachers, stores)},
                          params.class_names, params.label.method, params.label.fusion, params.label.temperature,
                          params.section("capability", CapabilityConfig).folds, features.heads,
                          str(folders.point_features), params.label.swap_capability))
        to_eval = prompt_to_eval_label([params.vocabulary[c].label for c in params.class_names],
                                       params.dataset.label_map().classes)
        assignments = RaggedReader(ASSIGNMENTS / split)
        regions = params.label.regions  # pooling per 3D segment needs the scans' coordinates
        scans = None if regions.method == "none" else open_reader(params.dataset, split, labels=False)
        points = seen = unseen_scans = 0
        dropped = sum(int((~features.valid(scan_id)).sum()) for scan_id in features.scan_ids)
        columns = {"label": ("uint8", ()), "baseline": ("uint8", ())}
        with RaggedWriter(out, columns, attributes={"method": params.label.method, "dropped_points": dropped}
                          | ({"fusion": params.label.fusion} if len(params.all_teachers) > 1 else {}),
                          scratch=stage_scratch("label")) as writer:
            for done, scan_id in enumerate(tqdm(features.scan_ids, desc=f"label {split}", unit="scan"), start=1):
                point_features, valid = features.read(scan_id), features.valid(scan_id)
                kept = None if valid.all() else np.flatnonzero(valid)  # raw index of the finite points
                finite = point_features if kept is None else point_features[kept]
                classes = (classifier.predict(finite) if scans is None
                           else region_labels(classifier, finite, scans.read(scan_id).points, regions))
                if kept is None:
                    label = to_eval[classes]
                else:
                    label = np.full(len(valid), IGNORE_LABEL, dtype=np.uint8)
                    label[kept] = to_eval[classes]
                pixel_features = torch.cat([pixel_rows(patches, taps, scan_id) for patches, taps in stores], dim=1)
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
