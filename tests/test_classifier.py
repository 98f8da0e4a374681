"""Template classifiers: the reference's balanced one-vs-rest logistic regression and
the nearest-prototype option."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipeline.labelling.classifier import (
    ClassifierMethod,
    LinearClassifier,
    NearestPrototypeClassifier,
    fit_classifier,
    fit_logistic,
    fit_nearest_prototype,
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
