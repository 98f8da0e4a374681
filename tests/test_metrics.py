"""Confusion matrix and segmentation metrics on hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.metrics import ConfusionAccumulator, SegmentationMetrics, confusion_matrix


def test_confusion_matrix_counts_and_ignore():
    truth = np.array([0, 0, 1, 1, 1, 255, 2])
    pred = np.array([0, 1, 1, 1, 0, 2, 2])
    expected = np.array([[1, 1, 0], [1, 2, 0], [0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred, truth, 3), expected)


def test_out_of_range_labels_are_errors_not_dropped():
    with pytest.raises(ValueError, match="truth labels outside"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3)
    with pytest.raises(ValueError, match="prediction labels outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    # A wild prediction on an ignored point is fine.
    confusion_matrix(np.array([0, 99]), np.array([0, 255]), 3)


def test_metrics_hand_computed_with_nan_classes():
    # class 0: TP 2, FN 1 (predicted 2), FP 1 (a class-1 point) -> IoU 2/4, recall 2/3
    # class 1: TP 1, FN 1, FP 0 -> IoU 1/2, recall 1/2
    # class 2: predicted once, never true -> IoU 0 (counts in mIoU), no recall
    # class 3: neither true nor predicted -> NaN IoU and recall
    confusion = np.array([
        [2, 0, 1, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ])
    metrics = SegmentationMetrics.from_confusion(confusion, ["a", "b", "c", "d"])
    np.testing.assert_allclose(metrics.iou[:3], [2 / 4, 1 / 2, 0.0])
    assert math.isnan(metrics.iou[3])
    assert metrics.miou == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert metrics.oacc == pytest.approx(3 / 5)
    np.testing.assert_allclose(metrics.accuracy[:2], [2 / 3, 1 / 2])
    assert math.isnan(metrics.accuracy[2]) and math.isnan(metrics.accuracy[3])
    assert metrics.macc == pytest.approx((2 / 3 + 1 / 2) / 2)
    out = metrics.to_dict()
    assert out["iou"]["d"] is None and out["accuracy"]["c"] is None
    assert out["num_points"] == 5
    json.dumps(out, allow_nan=False)


def test_empty_confusion_gives_nan_metrics_and_null_json():
    metrics = SegmentationMetrics.from_confusion(np.zeros((2, 2), dtype=np.int64))
    assert math.isnan(metrics.miou) and math.isnan(metrics.oacc) and math.isnan(metrics.macc)
    assert metrics.to_dict()["miou"] is None


def test_accumulate_over_scans_equals_one_big_scan():
    rng = np.random.default_rng(0)
    scans = [(rng.integers(0, 4, n), np.where(rng.random(n) < 0.1, 255, rng.integers(0, 4, n)))
             for n in (10, 0, 57)]
    acc = ConfusionAccumulator(4)
    for pred, truth in scans:
        acc.add(pred, truth)
    everything = confusion_matrix(np.concatenate([p for p, _ in scans]),
                                  np.concatenate([t for _, t in scans]), 4)
    np.testing.assert_array_equal(acc.confusion, everything)
    assert acc.metrics().miou == SegmentationMetrics.from_confusion(everything).miou
