"""The reduced point-feature cache: the PCA basis, its file, and the label stage reading it."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import yaml
from chain_runner import inside, run_stage, tree_hash, write_params

from pipeline.config_loading import ConfigError, build
from pipeline.labelling.feature_pca import (
    PCA_COLUMN,
    FeaturePcaConfig,
    PcaAccumulator,
    encode,
    fit_basis,
    load_basis,
    reduce_store,
    sample_rows,
    sample_scan_ids,
    save_basis,
)
from pipeline.store.ragged import RaggedReader


def low_rank_features(rows: int = 3000, dim: int = 24, rank: int = 3, seed: int = 0) -> np.ndarray:
    """Features on a rank-`rank` affine subspace of R^dim, plus a little noise."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim)
    axes = rng.normal(size=(rank, dim))
    return (mean + rng.normal(size=(rows, rank)) * [5.0, 2.0, 1.0][:rank] @ axes
            + 1e-4 * rng.normal(size=(rows, dim))).astype(np.float32)


def fitted(features: np.ndarray, dims: int):
    accumulator = PcaAccumulator(features.shape[1])
    accumulator.add(features)
    return accumulator.fit(dims)


def test_basis_keeps_the_subspace_the_features_span():
    features = low_rank_features()
    basis = fitted(features, 3)
    assert basis.components.shape == (3, 24) and basis.mean.shape == (24,)
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(3), atol=1e-5)
    assert np.all(np.diff(basis.variance) <= 0) and basis.explained > 0.999999
    np.testing.assert_allclose(basis.reconstruct(basis.project(features)), features, atol=2e-3)
    # fewer dims than the rank lose the rest
    assert np.abs(fitted(features, 2).reconstruct(fitted(features, 2).project(features)) - features).max() > 0.1


def test_components_are_the_principal_axes():
    features = np.random.default_rng(1).normal(size=(500, 8)) * np.arange(1, 9)
    basis = fitted(features, 4)
    centred = features - features.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(basis.components * axes[:4], axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(basis.variance, singular[:4] ** 2 / len(features), rtol=1e-6)
    assert basis.total_variance == pytest.approx(float(centred.var(axis=0).sum()))


def test_sample_depends_only_on_seed_and_scan_id():
    features = np.arange(1000, dtype=np.float32)[:, None]
    first = sample_rows(features, "scan-a", 100, seed=0)
    assert first.shape == (100, 1) and np.all(np.diff(first[:, 0]) > 0)
    np.testing.assert_array_equal(first, sample_rows(features, "scan-a", 100, seed=0))
    assert not np.array_equal(first, sample_rows(features, "scan-b", 100, seed=0))
    assert not np.array_equal(first, sample_rows(features, "scan-a", 100, seed=1))
    assert sample_rows(features, "scan-a", 5000, seed=0) is features
    ids = [f"s{i}" for i in range(10)]
    assert sample_scan_ids(ids, 4) == ["s0", "s3", "s6", "s9"]
    assert sample_scan_ids(ids, 40) == ids


def test_sums_from_several_processes_fit_the_same_basis():
    """Ranks accumulate their own scans; summing count/total/outer gives one process's basis."""
    scans = {f"s{i}": low_rank_features(rows=400, seed=i) for i in range(6)}
    config = FeaturePcaConfig(dims=3, points_per_scan=300)
    whole = fit_basis(scans.items(), config, 24)
    ranks = [PcaAccumulator(24), PcaAccumulator(24)]
    for i, (scan_id, features) in enumerate(reversed(scans.items())):
        ranks[i % 2].add_scan(scan_id, features, config)
    for name in ("count", "total", "outer"):
        setattr(ranks[0], name, getattr(ranks[0], name) + getattr(ranks[1], name))
    merged = ranks[0].fit(3)
    np.testing.assert_allclose(merged.components, whole.components, atol=1e-5)
    assert merged.samples == whole.samples == 6 * 300


def test_basis_file_round_trips_with_its_fingerprint(tmp_path):
    features = low_rank_features()
    basis = fitted(features, 3)
    fingerprint = save_basis(tmp_path / "basis.safetensors", basis)
    assert fingerprint == hashlib.sha256((tmp_path / "basis.safetensors").read_bytes()).hexdigest()
    assert fitted(features, 3).fingerprint() == fingerprint  # same sample, same bytes
    loaded = load_basis(tmp_path / "basis.safetensors", fingerprint=fingerprint)
    np.testing.assert_array_equal(loaded.components, basis.components)
    assert (loaded.total_variance, loaded.samples) == (basis.total_variance, basis.samples)
    with pytest.raises(ValueError, match="not the one the coefficients were made with"):
        load_basis(tmp_path / "basis.safetensors", fingerprint="0" * 64)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match=r"point_features.pca.dims: must be >= 1"):
        build(FeaturePcaConfig, {"dims": 0}, "params.yaml: point_features.pca")
    with pytest.raises(ConfigError, match=r"point_features.pca.sample: unknown key"):
        build(FeaturePcaConfig, {"sample": 3}, "params.yaml: point_features.pca")
    assert build(FeaturePcaConfig, {"dims": None}, "params.yaml: point_features.pca").dims is None
    with pytest.raises(ValueError, match=r"pca dims must be in \[1, 24\]"):
        fitted(low_rank_features(), 25)
    features = low_rank_features()
    assert encode(fitted(features, 3), features)[PCA_COLUMN].dtype == np.float16
    with pytest.raises(ValueError, match="overflow float16"):
        encode(fitted(features, 3), features * 1e5)


def test_label_stage_labels_a_reduced_store_like_the_full_one(chain, tmp_path):
    """The label stage reconstructs PCA coefficients through their basis: with k = 32 of the
    small world's 192 dims, almost every point keeps its label and the 2D baseline is untouched."""
    folder = tmp_path / "reduced"
    shutil.copytree(chain, folder, symlinks=True)
    store = folder / "cache/point_features/val"
    basis = reduce_store(chain / "cache/point_features/val", store, folder / "cache/point_features/val.pca.safetensors",
                         FeaturePcaConfig(dims=32, sample_scans=4, points_per_scan=2048))
    reduced = RaggedReader(store)
    assert list(reduced.columns) == [PCA_COLUMN, "valid"] and reduced.columns[PCA_COLUMN].inner_shape == (32,)
    assert reduced.attributes["pca"]["fingerprint"] == basis.fingerprint()
    with inside(folder):
        run_stage("label")
    full, fromreduced = RaggedReader(chain / "cache/predictions/val"), RaggedReader(folder / "cache/predictions/val")
    agree = points = 0
    for scan_id in full.scan_ids:
        expected, got = full.read(scan_id), fromreduced.read(scan_id)
        np.testing.assert_array_equal(got["baseline"], expected["baseline"])
        agree += int((got["label"] == expected["label"]).sum())
        points += len(got["label"])
    assert agree / points > 0.98  # 0.991 on the small chain; a wrong basis gives ~1/14

    other = fitted(low_rank_features(dim=192), 32)  # a basis the coefficients were not made with
    save_basis(folder / "cache/point_features/val.pca.safetensors", other)
    with inside(folder), pytest.raises(ValueError, match="val.pca.safetensors: this basis is not the one"):
        run_stage("label")


def test_point_features_stage_writes_what_reduce_store_makes(chain, tmp_path):
    """With `point_features.pca` set the stage fits the basis on its own sample and writes the
    reduced store directly: the bytes `reduce_store` makes of the full store. Turned off again,
    the stage writes full features and leaves no basis behind."""
    folder = tmp_path / "chain"
    shutil.copytree(chain, folder, symlinks=True)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    pca = {"dims": 32, "sample_scans": 4, "points_per_scan": 2048, "seed": 0}
    params["point_features"]["pca"] = pca
    write_params(folder, params)
    with inside(folder):
        run_stage("point_features")
    expected = tmp_path / "expected"
    expected.mkdir()
    reduce_store(chain / "cache/point_features/val", expected / "val", expected / "val.pca.safetensors",
                 FeaturePcaConfig(**pca), compressor=params["point_features"].get("compression", "lz4"))
    out = folder / "cache/point_features"
    assert tree_hash(out / "val") == tree_hash(expected / "val")
    assert (out / "val.pca.safetensors").read_bytes() == (expected / "val.pca.safetensors").read_bytes()

    params["point_features"]["pca"] = {"dims": None}
    write_params(folder, params)
    with inside(folder):
        run_stage("point_features")
    assert sorted(p.name for p in out.iterdir()) == ["val"]
    assert tree_hash(out / "val") == tree_hash(chain / "cache/point_features/val")
