"""Several teachers, one label: each teacher's classifier on its own features, fused per point.

With `extra_teachers`, the student has one head per teacher (consecutive column blocks of its
features) and each teacher has its own template features, hence its own label classifier. A
`TeacherEnsemble` holds each teacher's classifier and its columns, and labels a point from all
of them as `label.fusion` says:

* **capability** (SAS, seed 001, sections 3.2-3.3): each teacher m gives per-class probabilities
  p_m (softmax of its classifier's logits) and a predicted class c_m = argmax p_m. Its score is
  its capability on the classes the teachers predict, s_m = mean_j S_m[c_j] (SAS eq. 7, with
  S_m the per-class held-out accuracy on the prototypes, measured as the capability stage
  measures it for metrics/capability.json: `measured_capability`), and the
  fused probabilities are sum_m w_m p_m with w = softmax_m(s_m / temperature) (eq. 8; SAS fuses
  aligned features, our teachers' features live in different spaces, so we fuse what they have
  in common: probabilities over the same vocabulary). SAS does not give its temperature.
* **average**: the mean of the teachers' probabilities.
* **a teacher's name**: that teacher alone (its classifier's own `predict`).

`logits` gives the log of the fused probabilities (what region pooling may average before the
argmax); `predict` their argmax. An ensemble of one teacher is that teacher's classifier, logits
and labels unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.labelling.capability import measure_capability
from pipeline.labelling.classifier import Classifier, fit_classifier
from pipeline.store.safetensors import load_safetensors

FUSIONS = ("capability", "average")  # and any teacher's name


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, in float64."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def capability_weights(predicted: np.ndarray, capability: np.ndarray, temperature: float) -> np.ndarray:
    """SAS eqs. 7-8: (T, N) weights of T teachers at N points.

    predicted: (T, N) each teacher's predicted class; capability: (T, K) each teacher's per-class
    capability. Teacher m's score at a point is the mean of its capability over the classes the
    T teachers predict there; the weights are the softmax of the scores / temperature over teachers.
    """
    scores = np.stack([capability[m][predicted].mean(axis=0) for m in range(len(capability))])
    return probabilities((scores / temperature).T).T


def fuse(probs: Sequence[np.ndarray], fusion: str, capability: np.ndarray | None = None,
         temperature: float = 0.1) -> np.ndarray:
    """(N, K) fused probabilities of T teachers' (N, K) probabilities: "average" or "capability"
    (with `capability` (T, K) and `temperature`; module docstring)."""
    stacked = np.stack(probs)  # (T, N, K)
    if fusion == "average":
        return stacked.mean(axis=0)
    if fusion != "capability":
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if capability is None or len(capability) != len(stacked):
        raise ValueError("capability fusion needs one capability vector per teacher")
    weights = capability_weights(stacked.argmax(axis=2), np.asarray(capability, dtype=np.float64), temperature)
    return np.einsum("tn,tnk->nk", weights, stacked)


@dataclass(frozen=True)
class Member:
    """One teacher of an ensemble: its name, its classifier and its columns of the features."""

    name: str
    classifier: Classifier
    columns: slice


class TeacherEnsemble:
    """Labels points from the features of several teachers side by side (module docstring).

    members: every teacher, in column order; fusion: "capability", "average" or a member's name;
    capability: per member name, its (K,) per-class capability (needed for "capability").
    """

    def __init__(self, members: Sequence[Member], fusion: str, capability: Mapping[str, np.ndarray] | None = None,
                 temperature: float = 0.1) -> None:
        names = [m.name for m in members]
        if fusion not in FUSIONS and fusion not in names:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS + tuple(names))}, got {fusion!r}")
        self.members = [m for m in members if m.name == fusion] if fusion in names else list(members)
        self.fusion = fusion
        self.temperature = temperature
        self.capability = None
        if fusion == "capability" and len(self.members) > 1:
            if capability is None or any(m.name not in capability for m in self.members):
                raise ValueError(f"capability fusion needs the capability of every teacher ({', '.join(names)})")
            self.capability = np.stack([np.asarray(capability[m.name], dtype=np.float64) for m in self.members])

    @property
    def num_classes(self) -> int:
        return self.members[0].classifier.num_classes

    def _alone(self) -> Member | None:
        return self.members[0] if len(self.members) == 1 else None

    def fused(self, features: np.ndarray) -> np.ndarray:
        """(N, K) fused probabilities of (N, sum of widths) features."""
        probs = [probabilities(m.classifier.logits(features[:, m.columns])) for m in self.members]
        if len(probs) == 1:
            return probs[0]
        return fuse(probs, self.fusion, self.capability, self.temperature)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, K) float64: one teacher's own logits, or the log of the fused probabilities."""
        alone = self._alone()
        if alone is not None:
            return alone.classifier.logits(features[:, alone.columns])
        return np.log(np.maximum(self.fused(features), 1e-300))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) int64 labels: one teacher's own `predict`, or the argmax of the fused probabilities."""
        alone = self._alone()
        if alone is not None:
            return alone.classifier.predict(features[:, alone.columns])
        return self.fused(features).argmax(axis=1)


def measured_capability(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], method: str,
                        folds: int | None) -> np.ndarray:
    """(K,) per-class held-out accuracy of one teacher's templates, as the capability stage
    measures and reports it (`pipeline.labelling.capability`, the same folds and classifier); a
    class with nothing held out takes the teacher's mean class accuracy."""
    accuracy = measure_capability(features, labels, class_names, method, folds).accuracy()
    measured = [a for a in accuracy if a is not None]
    fallback = float(np.mean(measured)) if measured else 1.0
    return np.array([fallback if a is None else a for a in accuracy], dtype=np.float64)


def fit_ensemble(template_files: Mapping[str, Path], widths: Mapping[str, int], class_names: Sequence[str],
                 method: str, fusion: str, temperature: float, folds: int | None,
                 heads: Sequence[Mapping] | None = None, where: str = "point features",
                 swap_capability: bool = False) -> TeacherEnsemble:
    """Each teacher's classifier, fitted on its template file, over its columns of features that
    hold every teacher's side by side (in the order of `template_files`, `widths[name]` each).

    heads: the `heads` a point-feature store records, checked against the teachers (names and
    widths, in order); None skips the check (the teacher features, whose widths these are).
    folds: `capability.folds`; for "capability" fusion each teacher's capability is measured on
    its templates as the capability stage measures it (seconds), rather than read from its
    report, so that the report's own settings (`warn_below`) do not rerun `label`.
    swap_capability: the sabotage check: the first two teachers' capability vectors swapped.
    """
    order = [(name, int(widths[name])) for name in template_files]
    if heads is not None and [(h["name"], int(h["dim"])) for h in heads] != order:
        raise ValueError(f"{where}: the student's heads {[(h['name'], h['dim']) for h in heads]} are not the "
                         f"teachers {order}; rerun distill and point_features")
    members, capability, start = [], {}, 0
    for name, width in order:
        file = template_files[name]
        tensors, metadata = load_safetensors(file)
        stored = tuple(json.loads(metadata["class_names"]))
        if stored != tuple(class_names):
            raise ValueError(f"{file}: holds classes {stored}, params list {tuple(class_names)}; "
                             "rerun the template features stages")
        members.append(Member(name, fit_classifier(method, tensors["features"], tensors["labels"], len(stored)),
                              slice(start, start + width)))
        if fusion == "capability":
            capability[name] = measured_capability(tensors["features"], tensors["labels"], stored, method, folds)
        start += width
    if swap_capability and len(capability) >= 2:
        first, second = list(capability)[:2]
        capability[first], capability[second] = capability[second], capability[first]
    return TeacherEnsemble(members, fusion, capability, temperature)
