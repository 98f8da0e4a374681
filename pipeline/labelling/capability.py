"""How well the label classifier recognises each vocabulary class, from the prototypes alone.

SAS (sections 3.2-3.3) measures a 2D model's per-class capability on generated images, whose
class is known without annotation. Our prototypes are such images, so before any 3D work we
can ask: fitted on the other prototypes, does the label classifier (`label.method`, the same
`fit_classifier` the label stage uses) put a held-out prototype in its own class?

Protocol (`CapabilityConfig.folds`):
* k >= 2 (the default, 8): k folds by prototype index: the i-th prototype of each class
  (prototypes are drawn in seed order) is held out in fold i mod k, so every fold holds out
  the same number of prototypes of every class (with equal class sizes) and the classes stay
  balanced; k fits in all.
* null: leave-one-prototype-out: one fit per prototype, on all the others. It leaves the
  held-out class one prototype short of every other class, which weakens that class's
  one-vs-rest logistic fit (on the demo, for a held-out `pole`: both its bias and its score
  w.x fall below `building`'s); where classes differ by tiny margins that alone decides. On
  the demo (random teacher: `pole` and `building` templates at cosine 0.977) every held-out
  `pole` becomes a `building` (0 of 8 with logistic; 8 of 8 with 8 folds, also when the folds
  are shifted per class so the same seeds are not held out together, and with nearest
  prototype either way). So it measures the protocol's imbalance as much as the class: not
  the default.
Either way every prototype is labelled exactly once by a classifier that never saw it, and
the run is deterministic (liblinear with a fixed random_state). A class with a single
prototype cannot be held out (its class would have no template to fit): it is reported with
`held_out: 0` and accuracy null, and its prototype stays in every fit.

Per class: the share of its held-out prototypes labelled as itself (`accuracy`), and the
class its prototypes are most often mistaken for (`confused_with`, `confused_count`; null and
0 when none is). A class below `warn_below` gets a warning line naming that class, and saying
so when both count as the same evaluation class (a confusion evaluation does not see).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config_loading import FieldError
from pipeline.labelling.classifier import fit_classifier


@dataclass(frozen=True)
class CapabilityConfig:
    """The `capability:` params section (the capability stage's own).

    folds: k >= 2 for k folds by prototype index; null for leave-one-prototype-out (module
        docstring: why it is not the default).
    warn_below: a class whose held-out accuracy is below this (in [0, 1]) gets a warning line.
    """

    folds: int | None = 8
    warn_below: float = 0.75

    def __post_init__(self) -> None:
        if self.folds is not None and self.folds < 2:
            raise FieldError("folds", f"must be null (leave-one-prototype-out) or >= 2, got {self.folds}")
        if not 0.0 <= self.warn_below <= 1.0:
            raise FieldError("warn_below", f"must be in [0, 1], got {self.warn_below}")

    @property
    def protocol(self) -> str:
        return "leave-one-prototype-out" if self.folds is None else f"{self.folds} folds by prototype index"


@dataclass(frozen=True)
class Capability:
    """The held-out result of one teacher's templates.

    confusion: (K, K) int64, rows the true class of a held-out prototype, columns the class it
    was labelled as. eval_labels: the evaluation class each counts as (optional).
    """

    class_names: tuple[str, ...]
    confusion: np.ndarray
    eval_labels: tuple[str, ...] | None = None

    @property
    def held_out(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return np.diag(self.confusion).copy()

    def accuracy(self) -> list[float | None]:
        """Per class: correct / held out (None for a class with nothing held out)."""
        return [None if n == 0 else float(c) / float(n) for c, n in zip(self.correct, self.held_out)]

    def most_confused(self, index: int) -> tuple[str | None, int]:
        """The class that class `index`'s prototypes are most often labelled as, other than itself
        (the first in vocabulary order on a tie), and how often; (None, 0) if never."""
        row = self.confusion[index].copy()
        row[index] = 0
        if row.max() == 0:
            return None, 0
        other = int(row.argmax())
        return self.class_names[other], int(row[other])

    def to_dict(self) -> dict:
        accuracy = self.accuracy()
        classes = {}
        for i, name in enumerate(self.class_names):
            other, count = self.most_confused(i)
            classes[name] = {"accuracy": accuracy[i], "held_out": int(self.held_out[i]),
                             "correct": int(self.correct[i]), "confused_with": other, "confused_count": count}
        measured = [a for a in accuracy if a is not None]
        total = int(self.held_out.sum())
        return {
            "accuracy": float(self.correct.sum()) / total if total else None,
            "mean_class_accuracy": float(np.mean(measured)) if measured else None,
            "classes": classes,
        }

    def warnings(self, warn_below: float) -> list[str]:
        """One line per class whose held-out accuracy is below `warn_below`."""
        lines = []
        for i, (name, accuracy) in enumerate(zip(self.class_names, self.accuracy())):
            if accuracy is None or accuracy >= warn_below:
                continue
            other, count = self.most_confused(i)
            n, correct = int(self.held_out[i]), int(self.correct[i])
            same = (f"; both count as `{self.eval_labels[i]}`" if other is not None and self.eval_labels
                    and self.eval_labels[i] == self.eval_labels[self.class_names.index(other)] else "")
            lines.append(f"`{name}` is confused with `{other}` in {count} of {n} held-out prototypes "
                         f"(recognised in {correct}{same}): refine its prompts or add images")
        return lines


def holdout_folds(labels: np.ndarray, folds: int | None) -> list[np.ndarray]:
    """The index sets held out together: one per prototype (folds None) or k by prototype index
    within its class. Prototypes of a class with a single prototype are never held out."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)  # index of each prototype within its class
    counts = np.bincount(labels)
    for cls in np.flatnonzero(counts):
        members = np.flatnonzero(labels == cls)
        rank[members] = np.arange(len(members))
    eligible = counts[labels] >= 2
    if folds is None:
        return [np.array([i]) for i in np.flatnonzero(eligible)]
    sets = [np.flatnonzero(eligible & (rank % folds == f)) for f in range(folds)]
    return [s for s in sets if len(s)]


def measure_capability(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], method: str,
                       folds: int | None = 8, progress=None,
                       eval_labels: Sequence[str] | None = None) -> Capability:
    """Label every held-out prototype with `method` fitted on the rest (module docstring).

    features: (M, D) template features; labels: (M,) class index in [0, K); class_names: the K
    names; eval_labels: the evaluation class of each (for the warnings). `progress` wraps the list of folds (e.g. tqdm).
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = len(class_names)
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(f"template features {np.shape(features)} and labels {labels.shape} do not match")
    sets = holdout_folds(labels, folds)
    confusion = np.zeros((k, k), dtype=np.int64)
    for held in (progress(sets) if progress else sets):
        train = np.ones(len(labels), dtype=bool)
        train[held] = False
        classifier = fit_classifier(method, features[train], labels[train], k)
        predicted = classifier.predict(np.asarray(features[held]))
        np.add.at(confusion, (labels[held], predicted), 1)
    return Capability(tuple(class_names), confusion, None if eval_labels is None else tuple(eval_labels))
