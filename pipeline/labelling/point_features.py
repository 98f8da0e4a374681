"""Reading a split's point-feature store, whichever form it holds.

The point features of a split are one ragged store (`pipeline.store.ragged`): either the full
(N, D) feature of every point (column "feature"), or, with `point_features.pca.dims` set, its
k PCA coefficients (column `PCA_COLUMN`) with the basis in a file beside the store, named in
the store's attributes with the fingerprint it must have (`pipeline.labelling.feature_pca`).
`PointFeatureReader` reads both the same way: `read(scan_id)` is the (N, D) features a
classifier fitted on the full template features labels (reconstructed from the coefficients
for a reduced store).

A student distilled from several teachers has one head per teacher, consecutive column blocks
named by the store's attribute `heads`; `read(scan_id, head)` gives one head's columns.

Both kinds hold one row per raw point of the scan file, in file order, and a bool column
`VALID_COLUMN`: False at the points the reader dropped for NaN/inf coordinates, whose rows are
zeros (`valid(scan_id)`; a store without the column, written by hand, counts every row valid).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.labelling.feature_pca import PCA_COLUMN, VALID_COLUMN, PcaBasis, load_basis
from pipeline.store.ragged import RaggedReader


class PointFeatureReader:
    """The point features of one split, scan by scan.

    path: the store's folder. store: its ragged store. basis: the PCA basis its coefficients
    were made with (the file its attributes name, beside the store, checked against the
    fingerprint they carry), or None when it holds full features.
    """

    def __init__(self, path: Path, reuse_buffers: bool = False, decode_threads: int = 1) -> None:
        """reuse_buffers: each `read` overwrites the arrays the previous one returned (faster; for
        a caller done with a scan before it reads the next, `RaggedReader`). decode_threads:
        threads decoding one scan's chunks side by side."""
        self.path = Path(path)
        self.store = RaggedReader(self.path, reuse_buffers=reuse_buffers, decode_threads=decode_threads)
        pca = self.store.attributes.get("pca")
        self.basis: PcaBasis | None = (
            None if pca is None else load_basis(self.path.parent / pca["basis"], fingerprint=pca["fingerprint"]))

    @property
    def scan_ids(self) -> tuple[str, ...]:
        return self.store.scan_ids

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, scan_id: object) -> bool:
        return scan_id in self.store

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    @property
    def heads(self) -> list[dict] | None:
        """A student of several teachers: each head's `name` (its teacher) and `dim`, in column
        order; None for one teacher (every column is its head)."""
        return self.store.attributes.get("heads")

    def head_columns(self, head: str) -> slice:
        """The columns of the named head."""
        if self.heads is None:
            raise ValueError(f"{self.path}: the student has one head (no `heads` attribute), not {head!r}; "
                             "rerun distill and point_features with the extra teachers")
        start = 0
        for entry in self.heads:
            if entry["name"] == head:
                return slice(start, start + entry["dim"])
            start += entry["dim"]
        raise ValueError(f"{self.path}: no head {head!r}; the heads are {', '.join(h['name'] for h in self.heads)}")

    def read(self, scan_id: str, head: str | None = None) -> np.ndarray:
        """(N, D) features of every raw point of one scan: as stored, or reconstructed from its
        PCA coefficients; zeros at the dropped points (`valid`). head: only that head's columns."""
        if self.basis is None:
            features = self.store.read(scan_id, ["feature"])["feature"]
        else:
            features = self.basis.reconstruct(self.store.read(scan_id, [PCA_COLUMN])[PCA_COLUMN])
            valid = self.valid(scan_id)
            if not valid.all():
                features[~valid] = 0
        return features if head is None else np.ascontiguousarray(features[:, self.head_columns(head)])

    def valid(self, scan_id: str) -> np.ndarray:
        """(N,) bool: False at the points dropped for NaN/inf coordinates (no feature)."""
        if VALID_COLUMN not in self.store.columns:
            return np.ones(self.store.scan_rows(scan_id), dtype=bool)
        return self.store.read(scan_id, [VALID_COLUMN])[VALID_COLUMN]
