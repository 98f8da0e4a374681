"""Points with NaN/inf coordinates: dropped by the readers, yet every per-point artifact a user reads
keeps one row per raw point, in raw order, and metrics.json counts them (issue 13, item 7).

A copy of the finished small chain gets five extra points with NaN/inf coordinates inserted into
one val scan's lidar file (and its lidarseg labels), so the scan's finite points are exactly the
clean scan's: every other row must be byte for byte what the clean chain gives.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from chain_runner import inside, run_stage, tree_hash

from pipeline.datasets.nuscenes import NuScenesReader
from pipeline.labelling.feature_pca import PCA_COLUMN, FeaturePcaConfig, reduce_store
from pipeline.labelling.point_features import PointFeatureReader
from pipeline.store.ragged import RaggedReader, RaggedWriter

VERSION = "v1.0-demo"
POINT_VALUES = 5  # nuScenes .pcd.bin: x, y, z, intensity, ring
# Where the bad points go in the new file (its raw order), and what is wrong with each.
BAD_AT = (0, 7, 8, 300)
BAD_VALUES = ((0, np.nan), (1, np.inf), (2, -np.inf), (0, np.nan), (1, np.nan))
VALID_COLUMN = "valid"  # the point-feature stores' flag column (pipeline.labelling.feature_pca.VALID_COLUMN)


@pytest.fixture(scope="module")
def bad_chain(chain, tmp_path_factory):
    """(folder, scan id, raw index of the bad points, how many of them carry a class): the chain
    copied, one val scan given bad points, and the stages from assignments on rerun (teacher
    features are skipped: their input, the assignments, is checked to be unchanged)."""
    folder = tmp_path_factory.mktemp("dropped") / "chain"
    shutil.copytree(chain, folder, symlinks=True)
    root = folder / "data/demo/nuscenes"
    reader = NuScenesReader(root, VERSION, "val")
    scan_id = reader.scan_ids[0]  # also the first preview scan of evaluate
    point_path = root / reader.nusc.get("sample_data", scan_id)["filename"]
    label_path = root / reader.nusc.get("lidarseg", scan_id)["filename"]
    points = np.fromfile(point_path, dtype=np.float32).reshape(-1, POINT_VALUES)
    labels = np.fromfile(label_path, dtype=np.uint8)
    positions = [*BAD_AT, len(points) + len(BAD_AT)]  # the last one ends the file
    bad_rows = points[:len(positions)].copy()
    for row, (column, value) in zip(bad_rows, BAD_VALUES):
        row[column] = value
    # nuScenes "noise" (no class: 255), then classes of the scan: points nobody can label
    bad_labels = np.array([0, 17, 24, 17, 9], dtype=np.uint8)  # noise, car, driveable_surface, car, barrier
    keep = np.ones(len(points) + len(positions), dtype=bool)
    keep[positions] = False
    new_points = np.empty((len(keep), POINT_VALUES), dtype=np.float32)
    new_points[keep], new_points[~keep] = points, bad_rows
    new_labels = np.empty(len(keep), dtype=np.uint8)
    new_labels[keep], new_labels[~keep] = labels, bad_labels
    for path, data in ((point_path, new_points), (label_path, new_labels)):
        path.unlink()  # never write through a link into the shared chain
        data.tofile(path)
    labelled = int((reader.label_map(bad_labels) != 255).sum())
    assert labelled == len(positions) - 1
    with inside(folder):
        for stage in ("assignments", "point_features", "label", "evaluate"):
            run_stage(stage)
    return folder, scan_id, np.flatnonzero(~keep), labelled


def test_reader_reports_the_dropped_points_and_their_raw_order(bad_chain):
    folder, scan_id, bad, labelled = bad_chain
    record = NuScenesReader(folder / "data/demo/nuscenes", VERSION, "val").read(scan_id)
    assert record.dropped_points == len(bad) and record.raw_count == len(record.points) + len(bad)
    assert record.dropped.labelled == labelled
    np.testing.assert_array_equal(np.flatnonzero(record.dropped.mask()), bad)
    raw = record.to_raw(record.labels.astype(np.uint8), 255)
    assert len(raw) == record.raw_count and (raw[bad] == 255).all()


def test_assignments_of_the_finite_points_do_not_move(bad_chain, chain):
    folder, *_ = bad_chain
    assert tree_hash(folder / "cache/assignments/val") == tree_hash(chain / "cache/assignments/val")


def test_point_features_keep_one_row_per_raw_point_with_the_dropped_flagged(bad_chain, chain):
    folder, scan_id, bad, _ = bad_chain
    got, clean = RaggedReader(folder / "cache/point_features/val"), RaggedReader(chain / "cache/point_features/val")
    assert got.scan_ids == clean.scan_ids and VALID_COLUMN in got.columns
    for sid in got.scan_ids:
        rows, expected = got.read(sid), clean.read(sid)
        if sid != scan_id:
            np.testing.assert_array_equal(rows["feature"], expected["feature"])
            assert rows[VALID_COLUMN].all()
            continue
        assert len(rows["feature"]) == len(expected["feature"]) + len(bad)
        np.testing.assert_array_equal(np.flatnonzero(~rows[VALID_COLUMN]), bad)
        assert not rows["feature"][bad].any()
        np.testing.assert_array_equal(rows["feature"][rows[VALID_COLUMN]], expected["feature"])
        features = PointFeatureReader(folder / "cache/point_features/val")
        np.testing.assert_array_equal(features.valid(sid), rows[VALID_COLUMN])


def test_a_reduced_store_keeps_the_rows_and_flags(bad_chain, chain, tmp_path):
    """`reduce_store` (what the stage writes with `pca.dims`) carries the flags, gives the dropped
    points zero codes, and fits the basis on the valid rows only: the clean chain's basis."""
    folder, scan_id, bad, _ = bad_chain
    config = FeaturePcaConfig(dims=8, sample_scans=4, points_per_scan=512)
    for name, source in (("bad", folder), ("clean", chain)):
        (tmp_path / name).mkdir()
        reduce_store(source / "cache/point_features/val", tmp_path / name / "val",
                     tmp_path / name / "val.pca.safetensors", config)
    reduced, clean = PointFeatureReader(tmp_path / "bad/val"), PointFeatureReader(tmp_path / "clean/val")
    assert reduced.basis.fingerprint() == clean.basis.fingerprint()
    codes, expected = reduced.store.read(scan_id), clean.store.read(scan_id)
    np.testing.assert_array_equal(np.flatnonzero(~codes[VALID_COLUMN]), bad)
    assert not codes[PCA_COLUMN][bad].any()
    np.testing.assert_array_equal(np.delete(codes[PCA_COLUMN], bad, axis=0), expected[PCA_COLUMN])
    features = reduced.read(scan_id)
    assert not features[bad].any()
    np.testing.assert_array_equal(np.delete(features, bad, axis=0), clean.read(scan_id))


def test_predictions_keep_one_row_per_raw_point_with_255_for_the_dropped(bad_chain, chain):
    folder, scan_id, bad, _ = bad_chain
    got, clean = RaggedReader(folder / "cache/predictions/val"), RaggedReader(chain / "cache/predictions/val")
    for sid in got.scan_ids:
        rows, expected = got.read(sid), clean.read(sid)
        for column in ("label", "baseline"):
            if sid != scan_id:
                np.testing.assert_array_equal(rows[column], expected[column])
                continue
            assert len(rows[column]) == len(expected[column]) + len(bad)
            assert (rows[column][bad] == 255).all()
            np.testing.assert_array_equal(np.delete(rows[column], bad), expected[column])
        if sid == scan_id:
            assert (np.delete(rows["label"], bad) != 255).all()  # every finite point is labelled
    assert got.attributes["dropped_points"] == len(bad)  # the rows the point-feature store flags


def test_metrics_count_the_dropped_points_and_leave_them_out(bad_chain, chain):
    folder, _, bad, labelled = bad_chain
    got = json.loads((folder / "metrics/metrics.json").read_text())
    clean = json.loads((chain / "metrics/metrics.json").read_text())
    assert got["dropped_points"] == {"point_features": len(bad), "label": len(bad), "labelled": labelled}
    assert clean["dropped_points"] == {"point_features": 0, "label": 0, "labelled": 0}
    for result in ("3d", "3d_visible", "2d_baseline"):
        assert got[result] == clean[result]  # the dropped points enter no result


def test_evaluate_refuses_predictions_that_do_not_match_the_dropped_points(bad_chain, tmp_path):
    """Predictions written before the scan got its bad points are stale, and evaluate says so."""
    folder, scan_id, bad, _ = bad_chain
    stale = tmp_path / "stale"
    shutil.copytree(folder, stale, symlinks=True)
    path = stale / "cache/predictions/val"
    store = RaggedReader(path)
    scans = {sid: store.read(sid) for sid in store.scan_ids}
    scans[scan_id]["label"][bad] = 0  # as if these points had been labelled
    shutil.rmtree(path)
    with RaggedWriter(path, store.columns, attributes=store.attributes) as writer:
        for sid, rows in scans.items():
            writer.append(sid, **rows)
    with inside(stale), pytest.raises(ValueError, match=rf"scan {scan_id} has 0 predictions at 255.*rerun"):
        run_stage("evaluate")
