"""Stage label: label every point by matching its feature to the template features.

    python -m stages.label

Fits the classifier of `label.method` on the template features (one class per vocabulary
entry), maps each prompt class to its evaluation label (several prompt classes may count as
one label), and labels:
- every point of the evaluation split from its cached 3D feature (`label`); a store of PCA
  coefficients (`point_features.pca.dims`) is read back through its basis, so the same
  classifier labels the reconstructed features (see pipeline/feature_pca.py for why);
- the 2D baseline: every point some camera sees, from the teacher feature of its pixel
  (`baseline`; 255 for points no camera sees), as OpenScene's 2D fusion does.
Writes cache/predictions/<split>/, a ragged zarr store of uint8 columns per scan.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.assignments import combine_taps
from pipeline.classifier import fit_classifier
from pipeline.datasets.base import IGNORE_LABEL
from pipeline.feature_pca import PCA_COLUMN, PcaBasis, load_basis
from pipeline.store import RaggedReader, RaggedWriter, load_safetensors
from stages.common import (
    ASSIGNMENTS,
    POINT_FEATURES,
    PREDICTIONS,
    TEACHER_FEATURES,
    TEMPLATES_FILE,
    human_size,
    stage_arguments,
    start_stage,
    summary,
)


def prompt_to_eval_label(params) -> np.ndarray:
    """uint8 (K,) evaluation label of each prompt class, in vocabulary order."""
    eval_index = {name: i for i, name in enumerate(params.dataset.label_map().classes)}
    return np.array([eval_index[params.vocabulary[c].label] for c in params.class_names], dtype=np.uint8)


def fit_from_templates(params):
    tensors, metadata = load_safetensors(TEMPLATES_FILE)
    stored = tuple(json.loads(metadata["class_names"]))
    if stored != params.class_names:
        raise ValueError(f"{TEMPLATES_FILE}: holds classes {stored}, params list {params.class_names}; "
                         "rerun the template_features stage")
    return fit_classifier(params.label.method, tensors["features"], tensors["labels"], len(stored))


def open_point_features(path: Path) -> tuple[RaggedReader, PcaBasis | None]:
    """A split's point-feature store and, when it holds PCA coefficients rather than full
    features, the basis they were made with: the file its attributes name, beside the store,
    checked against the fingerprint they carry."""
    store = RaggedReader(path)
    pca = store.attributes.get("pca")
    if pca is None:
        return store, None
    return store, load_basis(path.parent / pca["basis"], fingerprint=pca["fingerprint"])


def read_point_features(store: RaggedReader, basis: PcaBasis | None, scan_id: str) -> np.ndarray:
    """(N, D) features of one scan: as stored, or reconstructed from its PCA coefficients."""
    if basis is None:
        return store.read(scan_id, ["feature"])["feature"]
    return basis.reconstruct(store.read(scan_id, [PCA_COLUMN])[PCA_COLUMN])


def main(argv: list[str] | None = None) -> None:
    args = stage_arguments(__doc__).parse_args(argv)
    params = start_stage("label", args)
    split = params.dataset.eval_split
    out = PREDICTIONS / split
    with summary("label") as facts:
        classifier = fit_from_templates(params)
        to_eval = prompt_to_eval_label(params)
        features, basis = open_point_features(POINT_FEATURES / split)
        assignments = RaggedReader(ASSIGNMENTS / split)
        patches = RaggedReader(TEACHER_FEATURES / split / "patches")
        taps = RaggedReader(TEACHER_FEATURES / split / "taps")
        points = seen = 0
        columns = {"label": ("uint8", ()), "baseline": ("uint8", ())}
        with RaggedWriter(out, columns, attributes={"method": params.label.method}) as writer:
            for scan_id in tqdm(features.scan_ids, desc=f"label {split}", unit="scan"):
                point_features = read_point_features(features, basis, scan_id)
                label = to_eval[classifier.predict(point_features)]
                tap = taps.read(scan_id)
                pixel_features = combine_taps(torch.from_numpy(patches.read(scan_id, ["feature"])["feature"]),
                                              torch.from_numpy(tap["tap"]), torch.from_numpy(tap["weight"]))
                baseline = np.full(len(label), IGNORE_LABEL, dtype=np.uint8)
                point_index = assignments.read(scan_id, ["point_index"])["point_index"]
                if len(point_index):
                    baseline[point_index] = to_eval[classifier.predict(pixel_features.numpy())]
                writer.append(scan_id, label=label, baseline=baseline)
                points += len(label)
                seen += len(point_index)
        if basis is not None:
            facts["point features"] = (f"reconstructed from {basis.dims} PCA coefficients "
                                       f"({basis.explained:.2%} of the sample variance)")
        facts[split] = f"{len(features)} scans, {points} points labelled, {seen} seen by a camera (2D baseline)"
        facts["wrote"] = f"{out} ({human_size(out)})"


if __name__ == "__main__":
    main()
