"""How much a PCA-reduced point-feature cache changes the labels (issue #5, item 4).

Takes a finished chain folder (its params.yaml, cache/point_features/<split>,
cache/template_features and the dataset it ran on; nothing in it is written) and, for each
k, writes what `point_features.pca.dims: k` writes (`reduce_store`: the basis fitted on the
same deterministic sample, `--sample-scans` evenly spaced scans of `--points-per-scan`
points, and the fp16 coefficients) to a temporary folder, reads it back through the label
stage's reader (`pipeline.labelling.point_features`) and labels it with the label stage's
classifier. One row per k:

* agree: the fraction of points whose label is the one the full features get;
* mIoU: of the 3D labels on all points (`3d` in metrics.json), full and reduced;
* kept: the share of the sample's variance the k components keep;
* MB/scan: the point-feature store on disk per scan (zarr, blosc zstd), full and reduced
  (the basis file included), the share saved, and the raw fp16 sizes (N x D x 2 bytes
  against N x k x 2).

    .venv/bin/python bench/pca_agreement.py /tmp/chain [--dims 32 64 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import load_project_params  # noqa: E402
from pipeline.datasets import open_reader  # noqa: E402
from pipeline.datasets.base import IGNORE_LABEL  # noqa: E402
from pipeline.labelling.classifier import fit_from_templates, prompt_to_eval_label  # noqa: E402
from pipeline.labelling.feature_pca import FeaturePcaConfig, reduce_store  # noqa: E402
from pipeline.labelling.point_features import PointFeatureReader  # noqa: E402
from pipeline.metrics import ConfusionAccumulator  # noqa: E402

# The chain folder's artifacts (the outs of dvc.yaml) this reads.
POINT_FEATURES = Path("cache/point_features")
TEMPLATES_FILE = Path("cache/template_features/templates.safetensors")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chain", type=Path, help="a finished chain folder (read only)")
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--sample-scans", type=int, default=FeaturePcaConfig.sample_scans)
    parser.add_argument("--points-per-scan", type=int, default=FeaturePcaConfig.points_per_scan)
    args = parser.parse_args()
    os.chdir(args.chain)  # params.yaml and the artifact paths are relative to the chain folder
    params = load_project_params("params.yaml")
    split = params.dataset.eval_split
    classifier = fit_from_templates(TEMPLATES_FILE, params.class_names, params.label.method)
    to_eval = prompt_to_eval_label([params.vocabulary[c].label for c in params.class_names],
                                   params.dataset.label_map().classes)
    reader = open_reader(params.dataset, split)
    classes = reader.label_map.classes
    full = PointFeatureReader(POINT_FEATURES / split)
    if full.basis is not None:
        raise SystemExit(f"{POINT_FEATURES / split} already holds PCA coefficients; give a chain with full features")
    full_store = full.store
    records = (reader.read(s) for s in full_store.scan_ids)  # truth per raw point, like the features' rows
    truth = {r.scan_id: r.to_raw(r.labels, IGNORE_LABEL) for r in records}
    full_labels = {s: to_eval[classifier.predict(full.read(s))] for s in full_store.scan_ids}

    def miou(labels: dict) -> float:
        accumulator = ConfusionAccumulator(len(classes))
        for scan_id, label in labels.items():
            accumulator.add(label, truth[scan_id])
        return accumulator.metrics(classes).miou

    scans, points = len(full_store), full_store.num_rows
    feature_dim = full_store.columns["feature"].inner_shape[0]
    full_bytes = folder_bytes(POINT_FEATURES / split) / scans
    full_miou = miou(full_labels)
    print(f"{args.chain}: {split}, {scans} scans, {points} points, feature width {feature_dim}, "
          f"full mIoU {full_miou:.4f}, {full_bytes / 1e6:.2f} MB/scan on disk")
    print("| k | agree | points changed | mIoU full | mIoU reduced | kept variance "
          "| MB/scan on disk: full, reduced (saved) | MB/scan raw fp16: full, reduced |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for dims in args.dims:
        config = FeaturePcaConfig(dims=dims, sample_scans=args.sample_scans, points_per_scan=args.points_per_scan)
        with tempfile.TemporaryDirectory(prefix="pca-") as tmp:
            reduce_store(POINT_FEATURES / split, Path(tmp) / split, Path(tmp) / f"{split}.pca.safetensors", config)
            reduced = PointFeatureReader(Path(tmp) / split)
            basis = reduced.basis
            labels = {s: to_eval[classifier.predict(reduced.read(s))] for s in reduced.scan_ids}
            reduced_bytes = folder_bytes(Path(tmp)) / scans
        changed = sum(int((labels[s] != full_labels[s]).sum()) for s in labels)
        raw = 2 * points / scans / 1e6  # fp16 bytes per coefficient, in MB per scan
        print(f"| {dims} | {1 - changed / points:.6f} | {changed} | {full_miou:.4f} | {miou(labels):.4f} "
              f"| {basis.explained:.6f} | {full_bytes / 1e6:.2f}, {reduced_bytes / 1e6:.2f} "
              f"({1 - reduced_bytes / full_bytes:.0%}) | {raw * feature_dim:.2f}, {raw * dims:.2f} |")


if __name__ == "__main__":
    main()
