"""Template classifiers: the reference's balanced one-vs-rest logistic regression and
the nearest-prototype option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pipeline.labelling import classifier as classifier_module
from pipeline.labelling.classifier import (
    ClassifierMethod,
    LinearClassifier,
    NearestPrototypeClassifier,
    fit_classifier,
    fit_logistic,
    _float32_products,
    fit_nearest_prototype,
    float32_margin,
    l2_normalize,
)


def _blobs(num_classes: int, dim: int = 32, noise: float = 0.3, seed: int = 0, per_class=None):
    """Well separated clusters; class sizes differ so class balancing matters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 3
    counts = per_class if per_class is not None else rng.integers(3, 15, num_classes)
    labels = np.repeat(np.arange(num_classes), counts)
    features = centres[labels] + noise * rng.normal(size=(labels.size, dim))
    test_labels = rng.integers(0, num_classes, 2000)
    test = centres[test_labels] + noise * rng.normal(size=(test_labels.size, dim))
    return features.astype(np.float32), labels, test, test_labels


@pytest.mark.parametrize("method", list(ClassifierMethod))
def test_recovers_labels_on_separable_data(method):
    features, labels, test, test_labels = _blobs(6)
    classifier = fit_classifier(method.value, features, labels)
    assert classifier.num_classes == 6
    np.testing.assert_array_equal(classifier.predict(test), test_labels)
    # Any float dtype in, same labels out; blocks do not change the result.
    np.testing.assert_array_equal(classifier.predict(test.astype(np.float16), block=7), test_labels)


def test_logistic_equals_liblinear_native_one_vs_rest():
    """The reference fitted liblinear's own OvR (scikit-learn < 1.8); so must we."""
    base = pytest.importorskip("sklearn.svm._base")
    features, labels, test, _ = _blobs(5, noise=2.0, seed=1)
    classifier = fit_logistic(features, labels)
    coef, intercept, _ = base._fit_liblinear(
        l2_normalize(features), labels, 1.0, True, 1.0, "balanced", "l2", False, 0, 100,
        1e-4, 0, multi_class="ovr", loss="logistic_regression",
    )
    np.testing.assert_allclose(classifier.weight, coef, atol=1e-10)
    np.testing.assert_allclose(classifier.bias, intercept, atol=1e-10)
    assert classifier.weight.dtype == np.float64 and classifier.weight.shape == (5, 32)


def test_binary_case_has_two_rows_and_matches_sklearn_predict():
    features, labels, test, _ = _blobs(2, noise=3.0, seed=2, per_class=[4, 11])
    classifier = fit_logistic(features, labels)
    assert isinstance(classifier, LinearClassifier)
    assert classifier.weight.shape == (2, 32) and classifier.bias.shape == (2,)
    sklearn_model = LogisticRegression(solver="liblinear", class_weight="balanced", C=1,
                                       random_state=0).fit(l2_normalize(features), labels)
    np.testing.assert_array_equal(classifier.predict(test), sklearn_model.predict(l2_normalize(test)))


def test_logits_are_normalised_features_times_weight_plus_bias():
    features, labels, test, _ = _blobs(4)
    classifier = fit_logistic(features, labels)
    scaled = test * 17.0  # the norm of a feature must not matter
    expected = l2_normalize(test) @ classifier.weight.T + classifier.bias
    np.testing.assert_allclose(classifier.logits(scaled), expected)


def test_nearest_prototype_takes_the_best_prototype_of_each_class():
    prototypes = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    labels = np.array([1, 0, 1, 2])
    classifier = fit_nearest_prototype(prototypes, labels)
    assert isinstance(classifier, NearestPrototypeClassifier)
    logits = classifier.logits(np.array([[0.8, 0.6], [0.0, -2.0]]))
    np.testing.assert_allclose(logits, [[0.6, 0.96, -0.8], [-1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(classifier.predict(np.array([[0.8, 0.6], [-5.0, 0.1]])), [1, 2])


def test_bad_templates_fail_clearly():
    features = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"classes \[1\] have no template"):
        fit_logistic(features, np.array([0, 0, 2, 2]))
    with pytest.raises(ValueError, match=r"classes \[3\] have no template"):
        fit_nearest_prototype(features, np.array([0, 1, 2, 2]), num_classes=4)
    with pytest.raises(ValueError, match="at least two classes"):
        fit_logistic(features, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="method must be one of"):
        fit_classifier("svm", features, np.array([0, 1, 0, 1]))


def _near_tie_classifier(rng, dim: int, num_classes: int = 6, eps: float = 1e-6) -> LinearClassifier:
    """Class 1 is class 0 moved by eps (every point that picks either is a near-tie: their logits
    differ by ~eps, far below float32 rounding); class 3 is class 2 exactly (a tie: the first wins)."""
    weight = rng.standard_normal((num_classes, dim))
    bias = rng.standard_normal(num_classes) * 0.1
    weight[1], bias[1] = weight[0] + eps * rng.standard_normal(dim), bias[0]
    weight[3], bias[3] = weight[2], bias[2]
    return LinearClassifier(weight, bias)


def _hard_rows(rng, count: int, dim: int) -> np.ndarray:
    """Random rows plus the ones the float32 path must leave to float64: zero, NaN, tiny, huge."""
    features = rng.standard_normal((count, dim))
    features[:4] = 0.0
    features[4, 3] = np.nan
    features[5] *= 1e-30  # norm below the float32 range
    features[6] *= 1e30  # above it
    return features


@pytest.mark.parametrize("dim", [64, 1024])
def test_float32_path_gives_the_float64_labels_also_at_near_ties(dim):
    rng = np.random.default_rng(dim)
    classifier = _near_tie_classifier(rng, dim)
    hard = _hard_rows(rng, 6000, dim)
    for dtype in (np.float32, np.float16):  # fp16: the tiny row becomes zero, the huge one inf
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            features = hard.astype(dtype)
            reference = classifier.predict_float64(features)
            np.testing.assert_array_equal(classifier.predict(features), reference)  # every row, exactly
            np.testing.assert_array_equal(classifier.predict(features, block=7), reference)
            # The near-ties are real: labels from float32 logits alone (no float64 re-check) differ.
            x = features.astype(np.float32)
            plain = ((x @ classifier.weight.T.astype(np.float32)) / np.linalg.norm(x, axis=1, keepdims=True)
                     + classifier.bias.astype(np.float32)).argmax(axis=1)
        assert (plain != reference).sum() > 10
        assert set(reference[:4]) == {int(np.argmax(classifier.bias))}  # zero rows: the bias decides
        assert 3 not in reference and 2 in reference  # the exact tie goes to class 2


def test_float32_path_of_nearest_prototypes_at_near_ties():
    rng = np.random.default_rng(3)
    templates = rng.standard_normal((9, 128))
    templates[4] = templates[0] + 1e-7 * rng.standard_normal(128)  # class 2's prototype ~ class 0's
    classifier = fit_nearest_prototype(templates, np.array([0, 0, 1, 1, 2, 2, 3, 3, 3]))
    features = np.concatenate([_hard_rows(rng, 3000, 128), templates[0] + 0.3 * rng.standard_normal((3000, 128))])
    for dtype in (np.float32, np.float16):
        with np.errstate(invalid="ignore", over="ignore"):
            np.testing.assert_array_equal(classifier.predict(features.astype(dtype)),
                                          classifier.predict_float64(features.astype(dtype)))


def test_float32_error_stays_within_its_bound():
    """The margin `predict` trusts is twice a bound on each logit's float32 error: check the bound
    holds on nuScenes-width features with large entries (the worst case of fp16)."""
    rng = np.random.default_rng(5)
    classifier = LinearClassifier(rng.standard_normal((16, 1024)) * 5, rng.standard_normal(16))
    features = (rng.standard_normal((4000, 1024)) * 300).astype(np.float16).astype(np.float32)
    exact = classifier.logits(features)
    products, norms = np.empty((len(features), 16), np.float32), np.empty(len(features), np.float32)
    # The path's own kernels: torch's float32 product and norm, a piece of rows at a time.
    _float32_products(features, torch.from_numpy(classifier.weight.T.astype(np.float32)), products, norms,
                      torch.empty((256, 1024)))
    approximate = products / norms.astype(np.float64)[:, None] + classifier.bias
    error = np.abs(approximate - exact).max()
    bound = float32_margin(classifier.weight.T, classifier.bias) / 2
    assert 0 < error < bound


def test_a_reduced_precision_float32_matmul_is_not_trusted(monkeypatch):
    """torch may take float32 products through bf16 or TF32 when asked ("high"/"medium"), far
    outside `float32_margin`: predict then labels all in float64."""
    rng = np.random.default_rng(6)
    classifier = _near_tie_classifier(rng, 256)
    features = rng.standard_normal((500, 256)).astype(np.float16)
    precision = torch.get_float32_matmul_precision()
    monkeypatch.setattr(classifier_module, "_float32_products", lambda *args: pytest.fail("took the float32 path"))
    try:
        torch.set_float32_matmul_precision("medium")
        np.testing.assert_array_equal(classifier.predict(features), classifier.predict_float64(features))
    finally:
        torch.set_float32_matmul_precision(precision)
