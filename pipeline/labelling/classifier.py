"""Label points from their features with a classifier fitted on the template features.

Two classifiers, chosen by `ClassifierMethod` (`label.method` in params.yaml, `LabelConfig`):

* **logistic** (the IGLOSS reference): class-balanced one-vs-rest logistic regression,
  scikit-learn `LogisticRegression(solver="liblinear", class_weight="balanced", C=1,
  random_state=0)`, fitted on the L2-normalised template vectors. A point's logits are
  its L2-normalised feature times W transposed plus b, in float64; its label the argmax.
* **nearest_prototype**: the class of the most cosine-similar template (max over each
  class's templates).

Both are refitted by the label stage from the template features (`fit_from_templates`);
nothing is stored. `prompt_to_eval_label` maps a classifier's prompt classes to the
evaluation classes they count as.

Matching the reference on current scikit-learn: scikit-learn >= 1.8 refuses liblinear on
three or more classes. Older versions ran liblinear's own one-vs-rest there, which
weights the positive class of problem k by the "balanced" weight n / (K * n_k) and leaves
the rest at weight 1. `fit_logistic` fits the same K binary problems explicitly, with
those weights as sample weights, so it gives the reference's classifier on any
scikit-learn version (the tests compare it with liblinear's native one-vs-rest).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression

from pipeline.store.safetensors import load_safetensors

# Rows per block when labelling: bounds the float64 work arrays to ~ block x max(D, M).
_PREDICT_BLOCK = 16384


class ClassifierMethod(enum.Enum):
    """How template features become a point classifier."""

    LOGISTIC = "logistic"
    NEAREST_PROTOTYPE = "nearest_prototype"


@dataclass(frozen=True)
class LabelConfig:
    """The `label:` params section: how points are labelled from their features.

    "logistic": class-balanced liblinear logistic regression on the template
    features (IGLOSS). "nearest_prototype": cosine similarity, max over a class's prototypes.
    """

    method: Literal["logistic", "nearest_prototype"] = "logistic"


def l2_normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64 (all-zero rows stay zero)."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, eps)


def normalized_product(features: np.ndarray, matrix: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """`l2_normalize(features) @ matrix` in float64, without the normalised (N, D) copy.

    The row norms divide the (N, K) product instead of the (N, D) features: with K classes
    far fewer than D feature channels this is one pass less over the features (labelling a
    split spends its time here). Equal to the plain form up to float64 rounding.
    """
    features = np.asarray(features, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", features, features))
    return (features @ matrix) / np.maximum(norms, eps)[:, None]


def _check_templates(features: np.ndarray, labels: np.ndarray, num_classes: int | None) -> int:
    """Validate template features/labels; return the number of classes K."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"template features must be (M, D) and labels (M,), got "
                         f"{features.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"template labels must be integers, got {labels.dtype}")
    if labels.size == 0:
        raise ValueError("no template features to fit a classifier on")
    if labels.min() < 0:
        raise ValueError(f"template labels must be >= 0, got {labels.min()}")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= k:
        raise ValueError(f"template label {labels.max()} out of range for {k} classes")
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"classes {empty.tolist()} have no template features: every class "
                         "of the vocabulary needs at least one prototype")
    if k < 2:
        raise ValueError("a classifier needs at least two classes")
    if not np.isfinite(features).all():
        raise ValueError("template features contain NaN or inf")
    return k


@dataclass(frozen=True)
class LinearClassifier:
    """logits = normalize(f) @ weight.T + bias, in float64; label = argmax.

    weight: (K, D) float64; bias: (K,) float64.
    """

    weight: np.ndarray
    bias: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, K) float64 logits of (N, D) features of any float dtype."""
        return normalized_product(features, self.weight.T) + self.bias

    def predict(self, features: np.ndarray, block: int = _PREDICT_BLOCK) -> np.ndarray:
        """(N,) int64 labels, computed block by block so N can be millions."""
        return _predict_blocks(self.logits, features, block)


@dataclass(frozen=True)
class NearestPrototypeClassifier:
    """Logit of class k = max cosine similarity to the templates of class k.

    prototypes: (M, D) float64, unit rows, sorted by label; starts: (K,) index of each
    class's first prototype in that order.
    """

    prototypes: np.ndarray
    starts: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.starts.shape[0]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, K) float64: the best cosine similarity per class."""
        similarity = normalized_product(features, self.prototypes.T)
        return np.maximum.reduceat(similarity, self.starts, axis=1)

    def predict(self, features: np.ndarray, block: int = _PREDICT_BLOCK) -> np.ndarray:
        """(N,) int64 labels, computed block by block."""
        return _predict_blocks(self.logits, features, block)


Classifier = LinearClassifier | NearestPrototypeClassifier


def _predict_blocks(logits, features: np.ndarray, block: int) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    out = np.empty(features.shape[0], dtype=np.int64)
    for start in range(0, features.shape[0], block):
        out[start:start + block] = logits(features[start:start + block]).argmax(axis=1)
    return out


def _liblinear_logistic() -> LogisticRegression:
    # No class_weight here: the balanced weights go in as sample weights (module docstring).
    return LogisticRegression(solver="liblinear", C=1.0, random_state=0)


def fit_logistic(
    template_features: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> LinearClassifier:
    """Class-balanced one-vs-rest logistic regression on L2-normalised templates.

    Args:
        template_features: (M, D) template vectors.
        labels: (M,) class index of each template, in [0, K).
        num_classes: K; defaults to labels.max() + 1. Every class needs a template.

    Returns:
        A `LinearClassifier` with K rows, also for K = 2 (where scikit-learn fits a single
        row w for class 1; the classifier then uses rows -w/2 and +w/2, same argmax,
        logits still centred).
    """
    k = _check_templates(template_features, labels, num_classes)
    labels = np.asarray(labels)
    x = l2_normalize(template_features)
    if k == 2:
        model = LogisticRegression(solver="liblinear", class_weight="balanced", C=1.0,
                                   random_state=0).fit(x, labels)
        w, b = model.coef_[0], model.intercept_[0]
        return LinearClassifier(weight=np.stack([-w, w]) / 2, bias=np.array([-b, b]) / 2)
    counts = np.bincount(labels, minlength=k)
    balanced = len(labels) / (k * counts)  # scikit-learn's "balanced" class weights
    weight = np.empty((k, x.shape[1]), dtype=np.float64)
    bias = np.empty(k, dtype=np.float64)
    for cls in range(k):
        positive = labels == cls
        sample_weight = np.where(positive, balanced[cls], 1.0)
        model = _liblinear_logistic().fit(x, positive.astype(np.int64), sample_weight=sample_weight)
        weight[cls], bias[cls] = model.coef_[0], model.intercept_[0]
    return LinearClassifier(weight=weight, bias=bias)


def fit_nearest_prototype(
    template_features: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> NearestPrototypeClassifier:
    """Cosine nearest-prototype classifier (max over each class's templates)."""
    _check_templates(template_features, labels, num_classes)
    order = np.argsort(np.asarray(labels), kind="stable")
    sorted_labels = np.asarray(labels)[order]
    starts = np.searchsorted(sorted_labels, np.arange(sorted_labels.max() + 1))
    return NearestPrototypeClassifier(prototypes=l2_normalize(np.asarray(template_features)[order]),
                                      starts=starts)


def fit_classifier(
    method: ClassifierMethod | str,
    template_features: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
) -> Classifier:
    """Fit the classifier `method` names ("logistic" or "nearest_prototype")."""
    try:
        method = ClassifierMethod(method)
    except ValueError:
        allowed = ", ".join(m.value for m in ClassifierMethod)
        raise ValueError(f"classifier method must be one of {allowed}, got {method!r}") from None
    if method is ClassifierMethod.LOGISTIC:
        return fit_logistic(template_features, labels, num_classes)
    return fit_nearest_prototype(template_features, labels, num_classes)


def fit_from_templates(path: Path, class_names: Sequence[str], method: ClassifierMethod | str) -> Classifier:
    """Fit `method` on a template-features file (safetensors: `features`, `labels`, and the
    `class_names` in its metadata), whose classes must be `class_names`, in that order."""
    tensors, metadata = load_safetensors(path)
    stored = tuple(json.loads(metadata["class_names"]))
    if stored != tuple(class_names):
        raise ValueError(f"{path}: holds classes {stored}, params list {tuple(class_names)}; "
                         "rerun the template_features stage")
    return fit_classifier(method, tensors["features"], tensors["labels"], len(stored))


def prompt_to_eval_label(labels: Sequence[str], eval_classes: Sequence[str]) -> np.ndarray:
    """uint8 (K,) evaluation label of each of K prompt classes: `labels[k]`, the evaluation class
    prompt class k counts as, as its index in `eval_classes` (several may count as one)."""
    eval_index = {name: i for i, name in enumerate(eval_classes)}
    return np.array([eval_index[label] for label in labels], dtype=np.uint8)
