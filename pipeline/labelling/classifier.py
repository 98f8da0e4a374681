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

`predict` gives the argmax of those float64 logits without computing most of them in
float64: it takes the product in float32 (fp16 features are exact there), bounds the error
of every float32 logit against the float64 one (`float32_margin`), and recomputes in float64
only the rows whose top-2 margin is within that bound (zero rows and rows near a tie: 0.001%
of the demo's points, 0.8% of random features). Where the float32 margin exceeds the bound,
both argmaxes are provably the same; a row recomputed in float64 gets the reference's logits
up to BLAS rounding, which depends on how many rows one product holds (~1e-13 here), so only
rows whose reference logits tie within that can differ, as they already did between two
block sizes of the reference (`predict_float64`). Blocks of rows are labelled on every core
side by side; at nuScenes width (1024-d fp16, 16 classes) decoding and labelling take ~1 us
per point on this 2-core machine against ~8 for the float64 path over zarr
(`python -m bench --only vocabulary`, the relabel row).

Matching the reference on current scikit-learn: scikit-learn >= 1.8 refuses liblinear on
three or more classes. Older versions ran liblinear's own one-vs-rest there, which
weights the positive class of problem k by the "balanced" weight n / (K * n_k) and leaves
the rest at weight 1. `fit_logistic` fits the same K binary problems explicitly, with
those weights as sample weights, so it gives the reference's classifier on any
scikit-learn version (the tests compare it with liblinear's native one-vs-rest).
"""

from __future__ import annotations

import enum
import functools
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from threadpoolctl import ThreadpoolController  # a dependency of scikit-learn

from pipeline.config_loading import require
from pipeline.labelling.regions import RegionsConfig
from pipeline.store.safetensors import load_safetensors

if TYPE_CHECKING:  # scikit-learn is imported where a classifier is fitted, not by every stage
    from sklearn.linear_model import LogisticRegression

# Rows per block when labelling: bounds the float64 work arrays to ~ block x max(D, M).
_PREDICT_BLOCK = 16384
# Rows per float32 piece of the fast path: 1 MiB of float32 at D = 1024, so the piece stays in a
# core's L2 cache (2 MiB here) between its conversion, its product and its norms.
_FLOAT32_ROWS = 256
# The float32 path takes rows whose float32 norm lies in this range (and columns whose norms do):
# its error bound assumes no float32 overflow and only negligible underflow. Other rows (all-zero
# ones, say) are computed in float64.
_FLOAT32_RANGE = (2.0 ** -40, 2.0 ** 40)


class ClassifierMethod(enum.Enum):
    """How template features become a point classifier."""

    LOGISTIC = "logistic"
    NEAREST_PROTOTYPE = "nearest_prototype"


@dataclass(frozen=True)
class LabelConfig:
    """The `label:` params section: how points are labelled from their features.

    "logistic": class-balanced liblinear logistic regression on the template
    features (IGLOSS). "nearest_prototype": cosine similarity, max over a class's prototypes.

    With several teachers (`extra_teachers`), `fusion` says how their per-class probabilities
    become one label (`pipeline.labelling.fusion`): "capability" (SAS: each teacher weighted by
    its held-out capability on the classes the teachers predict, softmax at `temperature`),
    "average", or a teacher's name (that teacher alone). One teacher: both are unused.
    `swap_capability` is a sabotage check: capability fusion with the first two teachers'
    capability vectors swapped must label worse (README, "Several teachers").

    `regions`: pool the logits per 3D segment of the scan before the argmax
    (`pipeline.labelling.regions`); off by default.
    """

    method: Literal["logistic", "nearest_prototype"] = "logistic"
    fusion: str = "capability"
    temperature: float = 0.1
    swap_capability: bool = False
    regions: RegionsConfig = field(default_factory=RegionsConfig)

    def __post_init__(self) -> None:
        require(self, positive=("temperature",))


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
        """(N,) int64 argmax of `logits`, computed block by block so N can be millions, in
        float32 where that provably gives the same label (module docstring)."""
        return _predict_blocks(self, features, block, self.weight.T, self.bias)

    def predict_float64(self, features: np.ndarray, block: int = _PREDICT_BLOCK) -> np.ndarray:
        """(N,) int64 argmax of `logits`, all computed in float64 (the reference)."""
        return _predict_blocks(self, features, block)

    def finish(self, product: np.ndarray) -> np.ndarray:
        """Logits from the (N, K) normalised product with the weight: plus the bias."""
        return product + self.bias


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
        return self.finish(normalized_product(features, self.prototypes.T))

    def predict(self, features: np.ndarray, block: int = _PREDICT_BLOCK) -> np.ndarray:
        """(N,) int64 argmax of `logits`, block by block, in float32 where that provably gives
        the same label (module docstring)."""
        return _predict_blocks(self, features, block, self.prototypes.T, np.zeros(self.prototypes.shape[0]))

    def predict_float64(self, features: np.ndarray, block: int = _PREDICT_BLOCK) -> np.ndarray:
        """(N,) int64 argmax of `logits`, all computed in float64 (the reference)."""
        return _predict_blocks(self, features, block)

    def finish(self, similarity: np.ndarray) -> np.ndarray:
        """Logits from the (N, M) cosine similarities to the prototypes: the max per class."""
        return np.maximum.reduceat(similarity, self.starts, axis=1)


Classifier = LinearClassifier | NearestPrototypeClassifier


def _gamma(n: int, unit: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): bounds the relative error of n rounded operations."""
    return n * unit / (1 - n * unit)


def float32_margin(columns: np.ndarray, offsets: np.ndarray) -> float:
    """A top-2 logit margin above which the float32 path's label is the float64 logits' label.

    columns: (D, M) float64, the matrix the normalised features multiply; offsets: (M,) what is
    added to each product (the bias; zeros for prototypes). For a feature f exact in float32
    (fp16 or float32) whose norm lies in `_FLOAT32_RANGE`, with u = 2**-24 and column w:
    - the float32 product with the float32-rounded w errs by at most gamma_{D+2}(u) ||f|| ||w||
      (any summation order, fused or not; Cauchy-Schwarz bounds sum |f_i w_i|);
    - the float32 norm, a sum of squares then a square root, by gamma_{D/2+2}(u) relatively;
    - so their float64 quotient by (gamma_{D+2} + gamma_{D/2+2}) ||w|| / (1 - gamma_{D/2+2}), and
      the float64 division and offset by gamma_4(2**-53) (||w|| + |offset|) more;
    - the float64 reference by gamma_{2D+8}(2**-53) (||w|| + |offset|).
    A max over columns (nearest prototype) errs no more than its terms. Two logits each err by
    at most e in each computation, so a margin above 2 e (e the largest over columns, plus a
    slack for float32 underflow) leaves the argmax where the float64 logits put it.
    """
    dim = columns.shape[0]
    norms = np.linalg.norm(columns, axis=0)
    norm_error = _gamma((dim + 1) // 2 + 2, 2.0 ** -24)
    float32_error = (_gamma(dim + 2, 2.0 ** -24) + norm_error) / (1 - norm_error) * norms
    float64_error = (_gamma(4, 2.0 ** -53) + _gamma(2 * dim + 8, 2.0 ** -53)) * (norms + np.abs(offsets))
    underflow = dim * 2.0 ** -60 * (norms + 1)
    return 2 * float(np.max(float32_error + float64_error + underflow))


@functools.cache
def _thread_controller() -> ThreadpoolController:
    return ThreadpoolController()  # scans the loaded libraries once


@contextmanager
def _one_thread() -> Iterator[None]:
    """BLAS and torch on one thread: on pieces this small their thread pools spin more than they
    work when the cores are busy (15x slower than one thread on this 2-core machine under load).
    Labelling spreads blocks of rows over the cores instead (`_predict_blocks`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _thread_controller().limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


def _float32_products(features: np.ndarray, matrix: torch.Tensor, products: np.ndarray, norms: np.ndarray,
                      piece: torch.Tensor) -> None:
    """Fill `products` (N, M) with the float32 products of float16/32 `features` (N, D) and the
    (D, M) float32 `matrix`, and `norms` (N,) with their float32 norms.

    Converts the rows into `piece` (a (R, D) float32 work buffer, R rows at a time: torch's fp16
    cast is vectorised, numpy's ~10x slower), so each piece is multiplied and its norms taken
    while in cache. The product is torch's float32 matmul (MKL: ~1.5x numpy's OpenBLAS on this
    skinny (N, 1024) x (1024, 16) shape), which `_float32_matmul_is_ieee` checks is not allowed a
    reduced-precision mode.
    """
    array = np.ascontiguousarray(features)
    source = torch.from_numpy(array if array.flags.writeable else array.copy())  # torch wants writeable
    products_out, norms_out = torch.from_numpy(products), torch.from_numpy(norms)
    for start in range(0, len(features), len(piece)):
        rows = piece[:min(len(piece), len(features) - start)]
        rows.copy_(source[start:start + len(rows)])
        torch.mm(rows, matrix, out=products_out[start:start + len(rows)])
        torch.linalg.vector_norm(rows, dim=1, out=norms_out[start:start + len(rows)])


def _float32_matmul_is_ieee() -> bool:
    """Whether torch's float32 matmul is plain float32 (the default "highest" precision):
    "high" or "medium" let it use bf16 or TF32 pieces, outside `float32_margin`'s bound."""
    return torch.get_float32_matmul_precision() == "highest"


@dataclass(frozen=True)
class _Float32Path:
    """What every block of the float32 path shares, computed once per `predict` call."""

    matrix: torch.Tensor  # (D, M) the float32-rounded columns
    margin: float         # `float32_margin` of the columns and offsets

    @classmethod
    def of(cls, classifier: Classifier, features: np.ndarray, columns: np.ndarray,
           offsets: np.ndarray) -> _Float32Path | None:
        """None where the float32 path does not apply: features neither fp16 nor float32 (not
        exact in float32), fewer than two classes, columns outside `_FLOAT32_RANGE` or a torch
        float32 matmul allowed a reduced precision."""
        norms_ok = np.isfinite(columns).all() and np.linalg.norm(columns, axis=0).max() <= _FLOAT32_RANGE[1]
        if (features.dtype not in (np.float16, np.float32) or classifier.num_classes < 2 or not norms_ok
                or not _float32_matmul_is_ieee()):
            return None
        return cls(torch.from_numpy(np.ascontiguousarray(columns, dtype=np.float32)), float32_margin(columns, offsets))


def _predict_block(classifier: Classifier, features: np.ndarray, path: _Float32Path, products: np.ndarray,
                   norms: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """The argmax of `classifier.logits(features)`: float32 where its margin is safe, else float64.
    products, norms: the block's rows of the call's work arrays (`_float32_products`)."""
    piece = torch.empty((min(_FLOAT32_ROWS, len(features)), features.shape[1]), dtype=torch.float32)
    _float32_products(features, path.matrix, products, norms, piece)
    norms = norms.astype(np.float64)
    logits = classifier.finish(np.divide(products, np.maximum(norms, eps)[:, None]))  # float64, as the reference
    labels = logits.argmax(axis=1)
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    safe = (top2[:, 1] - top2[:, 0] > path.margin) & \
        (norms >= _FLOAT32_RANGE[0]) & (norms <= _FLOAT32_RANGE[1])  # NaN rows are not safe
    unsure = np.flatnonzero(~safe)
    if len(unsure):
        labels[unsure] = classifier.logits(features[unsure]).argmax(axis=1)
    return labels


def _predict_blocks(classifier: Classifier, features: np.ndarray, block: int, columns: np.ndarray | None = None,
                    offsets: np.ndarray | None = None) -> np.ndarray:
    """Labels block by block: in float64 (columns None) or through the float32 path."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    out = np.empty(features.shape[0], dtype=np.int64)
    path = None if columns is None else _Float32Path.of(classifier, features, columns, offsets)
    if path is None:
        for start in range(0, features.shape[0], block):
            out[start:start + block] = classifier.logits(features[start:start + block]).argmax(axis=1)
        return out

    # Blocks of rows spread over the cores, each product on one BLAS thread (numpy and torch
    # release the GIL): the cores work on different rows instead of spinning in a shared product.
    cores = os.cpu_count() or 1
    block = max(1, min(block, -(-features.shape[0] // cores)))

    errors = np.geterr()  # the caller's floating-point error handling: a worker thread starts without it
    products = np.empty((features.shape[0], path.matrix.shape[1]), dtype=np.float32)
    norms = np.empty(features.shape[0], dtype=np.float32)

    def label_block(start: int) -> None:
        rows = slice(start, start + block)
        with np.errstate(**errors):
            out[rows] = _predict_block(classifier, features[rows], path, products[rows], norms[rows])

    starts = range(0, features.shape[0], block)
    with _one_thread(), ThreadPoolExecutor(max(1, min(len(starts), cores))) as pool:
        list(pool.map(label_block, starts))
    return out


def _liblinear_logistic() -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression  # here: 1-2 s of imports every stage would pay

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
        from sklearn.linear_model import LogisticRegression

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
