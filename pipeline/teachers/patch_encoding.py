"""How a `patches` store holds a teacher's patch features, and the one reader of them.

A teacher-feature store (`pipeline.teachers.encoding.write_teacher_split`) keeps, per scan, the
flat ids of the patches some assignment reads (`patch_id`) and their features, encoded as its
attribute `encoding` says:

* `fp16` (the default): `feature` float16 (D,), what the targets have always been;
* `int8`: `feature` int8 (D,) and `scale` float32, per patch row: scale = max|x| / 127 and
  x ~ feature * scale, rounded to nearest (the error of each channel at most scale / 2, i.e.
  1/254 of the row's largest magnitude). 4 + D bytes a row against 2 D: about half the store;
* `none`: no feature at all, only the patch ids (the taps point into them): the distillation
  split's store under `distill.teacher_source: online`, whose targets the teacher computes inside
  each distillation step (`pipeline.training.data`).

Every reader of a store's features goes through `read_patch_features` (whatever the encoding)
and `patch_feature_dim`. A store written before encodings existed has no `encoding` attribute:
it is fp16.
"""

from __future__ import annotations

import numpy as np

from pipeline.store.ragged import RaggedReader

ENCODINGS = ("fp16", "int8", "none")


def patch_columns(encoding: str, dim: int) -> dict[str, tuple]:
    """The columns of a `patches` store of this encoding."""
    features = {
        "fp16": {"feature": ("float16", (dim,))},
        "int8": {"feature": ("int8", (dim,)), "scale": ("float32", ())},
        "none": {},
    }[encoding]
    return features | {"patch_id": ("int32", ())}


def quantize_int8(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, D) float -> (U, D) int8 and (U,) float32 scales, symmetric per row (an all-zero row: scale 0)."""
    features = np.asarray(features, dtype=np.float32)
    scale = (np.abs(features).max(axis=1, initial=0.0) / np.float32(127)).astype(np.float32)
    divisor = np.where(scale > 0, scale, np.float32(1))
    return np.clip(np.rint(features / divisor[:, None]), -127, 127).astype(np.int8), scale


def dequantize_int8(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The (U, D) float32 features of int8 rows and their scales."""
    return values.astype(np.float32) * scale.astype(np.float32)[:, None]


def encode_rows(features: np.ndarray, encoding: str) -> dict[str, np.ndarray]:
    """The feature columns of (U, D) float32 patch features in `encoding` (none: no column)."""
    if encoding == "fp16":
        return {"feature": np.asarray(features).astype(np.float16)}
    if encoding == "int8":
        values, scale = quantize_int8(features)
        return {"feature": values, "scale": scale}
    return {}


def store_encoding(store: RaggedReader) -> str:
    """The encoding of a `patches` store; an unknown one is an error naming the store."""
    encoding = store.attributes.get("encoding", "fp16")
    if encoding not in ENCODINGS:
        raise ValueError(f"{store.path}: unknown patch feature encoding {encoding!r}; rerun `dvc repro teacher_features`")
    return encoding


def require_patch_features(store: RaggedReader) -> None:
    """Stop, naming the store and the param, when a store holds patch ids but no features."""
    if store_encoding(store) == "none":
        raise ValueError(
            f"{store.path}: holds no teacher features, only patch ids: teacher_features wrote it for "
            "`distill.teacher_source: online`, which keeps no features of the distillation sources "
            "(the teacher runs inside distill); set distill.teacher_source: store in params.yaml and "
            "rerun `dvc repro teacher_features`")


def read_patch_features(store: RaggedReader, scan_id: str) -> np.ndarray:
    """(U, D) patch features of one scan, decoded: float16 from an fp16 store, float32 from int8."""
    require_patch_features(store)
    if store_encoding(store) == "int8":
        rows = store.read(scan_id, ["feature", "scale"])
        return dequantize_int8(rows["feature"], rows["scale"])
    return store.read(scan_id, ["feature"])["feature"]


def patch_feature_dim(store: RaggedReader) -> int:
    """The feature width D of a `patches` store (also of one that holds no features)."""
    if "feature" in store.columns:
        return store.columns["feature"].inner_shape[0]
    return int(store.attributes["dim"])
