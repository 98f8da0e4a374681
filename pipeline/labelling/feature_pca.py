"""A reduced point-feature cache: k PCA coefficients per point instead of the full feature.

The student's feature of every point is D fp16 numbers (D = 1024 for ScaLR+, about 70 KB
per 34k-point nuScenes scan): the whole nuScenes val split is about 420 GB. Storing the
point's coordinates in a k-dimensional PCA basis of the features (k = 128: 8x smaller)
keeps the directions along which the features vary and drops the rest.

How it is used:

1. The basis is fitted on a deterministic sample: `sample_scan_ids` picks evenly spaced
   scans, `sample_rows` a seeded subset of each scan's points (keyed by the scan id, so it
   does not depend on scan order or on which process reads the scan), and `PcaAccumulator`
   sums their first and second moments in float64. Sums from several processes add up.
   `fit_basis` does all three for an iterable of (scan id, features).
2. `PcaAccumulator.fit(k)` gives a `PcaBasis`: the sample mean and the top-k eigenvectors
   of the sample covariance, each with a fixed sign, so one sample gives one basis.
3. A writer stores `encode(basis, features, valid)`: the (N, k) coefficients, fp16, in column
   `PCA_COLUMN` (`reduced_columns`; zeros at rows `VALID_COLUMN` marks dropped, and only
   valid rows are sampled for the basis); the basis as safetensors (`save_basis`); and
   `basis_attributes(...)` in the store's attributes: the basis file's name and its
   fingerprint, so a reader never pairs coefficients with another basis.
4. A reader calls `basis.reconstruct(codes)`: mean + codes @ components, an (N, D) feature
   for the classifier fitted on the full template features (`PointFeatureReader`,
   `pipeline.labelling.point_features`, reads either kind of store so).

Why reconstruct rather than refit the classifier on templates projected into the basis:
the classifier then stays exactly the one the full features are labelled with, and only
the points' features are approximated (on the demo, refitting moved more labels).
Reconstructing is the same as mapping the classifier into the basis (W @ components.T on
the codes, with the norm of the reconstruction for the L2 normalisation), written the
plain way. bench/pca_agreement.py measures how many labels a given k changes.

Nothing here knows where files live: the stages choose the paths.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config_loading import FieldError, require
from pipeline.store.ragged import Compressor, RaggedReader, RaggedWriter, scans_per_block
from pipeline.store.safetensors import load_safetensors, safetensors_bytes, save_safetensors

PCA_COLUMN = "feature_pca"  # the ragged column of (N, k) coefficients; full stores use "feature"
# Every point-feature store, full or reduced, has one row per raw point of a scan and this bool
# column: False at the points the reader dropped for NaN/inf coordinates (their rows are zeros).
VALID_COLUMN = "valid"
BASIS_FORMAT = "igloss-pca"
BASIS_VERSION = 1


@dataclass(frozen=True)
class FeaturePcaConfig:
    """How point features are reduced (`point_features.pca` in params.yaml).

    dims: None stores the full features (the default); k stores k PCA coefficients per
        point, fp16, and the basis beside the store.
    sample_scans: how many evenly spaced scans of the split the basis is fitted on.
    points_per_scan: how many points of each sampled scan (all when a scan has fewer).
    seed: seeds the choice of points.
    """

    dims: int | None = None
    sample_scans: int = 32
    points_per_scan: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dims is not None and self.dims < 1:
            raise FieldError("dims", f"must be >= 1 or null (full features), got {self.dims}")
        require(self, positive=("sample_scans", "points_per_scan"), non_negative=("seed",))


@dataclass(frozen=True)
class PcaBasis:
    """An orthonormal k-dimensional basis of D-dimensional features, centred on their mean.

    mean: (D,) float32. components: (k, D) float32, orthonormal rows by decreasing variance.
    variance: (k,) float64, the sample variance along each component.
    total_variance: the sample's variance summed over all D dimensions.
    samples: how many feature rows the basis was fitted on.
    """

    mean: np.ndarray
    components: np.ndarray
    variance: np.ndarray
    total_variance: float
    samples: int

    @property
    def dims(self) -> int:
        return self.components.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.components.shape[1]

    @property
    def explained(self) -> float:
        """Fraction of the sample's variance the k components keep."""
        return float(self.variance.sum() / self.total_variance) if self.total_variance > 0 else 1.0

    def project(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features of any float dtype -> (N, k) float32 coefficients."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (N, {self.feature_dim}), got {features.shape}")
        return (features - self.mean) @ self.components.T

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """(N, k) coefficients of any float dtype -> (N, D) float32 features."""
        codes = np.asarray(codes, dtype=np.float32)
        if codes.ndim != 2 or codes.shape[1] != self.dims:
            raise ValueError(f"coefficients must be (N, {self.dims}), got {codes.shape}")
        return self.mean + codes @ self.components

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "variance": self.variance}

    def metadata(self) -> dict[str, str]:
        return {"format": BASIS_FORMAT, "version": str(BASIS_VERSION),
                "total_variance": repr(float(self.total_variance)), "samples": str(self.samples)}

    def fingerprint(self) -> str:
        """sha256 of the basis's safetensors bytes (equal to the file's)."""
        return hashlib.sha256(safetensors_bytes(self.tensors(), self.metadata())).hexdigest()


class PcaAccumulator:
    """Running float64 sums of feature rows, their outer products and their count.

    To fit one basis over several processes, all-reduce (sum) `count`, `total` and
    `outer` across them before `fit`.
    """

    def __init__(self, feature_dim: int) -> None:
        self.count = np.zeros((), dtype=np.float64)
        self.total = np.zeros(feature_dim, dtype=np.float64)
        self.outer = np.zeros((feature_dim, feature_dim), dtype=np.float64)

    def add(self, rows: np.ndarray) -> None:
        """Add (n, D) feature rows of any float dtype."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.total.shape[0]:
            raise ValueError(f"rows must be (n, {self.total.shape[0]}), got {rows.shape}")
        self.count += rows.shape[0]
        self.total += rows.sum(axis=0)
        self.outer += rows.T @ rows

    def add_scan(self, scan_id: str, features: np.ndarray, config: FeaturePcaConfig) -> None:
        """Add the sampled rows of one scan (`sample_rows` with the config's count and seed)."""
        self.add(sample_rows(np.asarray(features), scan_id, config.points_per_scan, config.seed))

    def fit(self, dims: int) -> PcaBasis:
        """The mean and top-`dims` principal directions of the rows added so far."""
        feature_dim = self.total.shape[0]
        count = int(self.count)
        if not 1 <= dims <= feature_dim:
            raise ValueError(f"pca dims must be in [1, {feature_dim}] (the feature width), got {dims}")
        if count < 2:
            raise ValueError(f"a PCA basis needs at least 2 sample rows, got {count}")
        mean = self.total / count
        covariance = self.outer / count - np.outer(mean, mean)
        eigenvalues, eigenvectors = np.linalg.eigh((covariance + covariance.T) / 2)
        order = np.argsort(eigenvalues, kind="stable")[::-1][:dims]
        components = eigenvectors[:, order].T
        # A component and its negation are the same axis; fix the sign so the bytes are stable.
        largest = np.abs(components).argmax(axis=1)
        components *= np.sign(components[np.arange(dims), largest])[:, None]
        return PcaBasis(mean=mean.astype(np.float32), components=np.ascontiguousarray(components, dtype=np.float32),
                        variance=np.maximum(eigenvalues[order], 0.0), total_variance=float(np.trace(covariance)),
                        samples=count)


def sample_scan_ids(scan_ids: Sequence[str], count: int) -> list[str]:
    """`count` scans spread evenly over the sequence (all of them when there are fewer)."""
    if count >= len(scan_ids):
        return list(scan_ids)
    return [scan_ids[i] for i in np.linspace(0, len(scan_ids) - 1, count).round().astype(int)]


def sample_rows(features: np.ndarray, scan_id: str, count: int, seed: int) -> np.ndarray:
    """A seeded subset of `count` rows of one scan's features, in row order (all rows when
    the scan has fewer). The choice depends on the seed and the scan id only."""
    if len(features) <= count:
        return features
    rng = np.random.default_rng([seed, zlib.crc32(scan_id.encode("utf-8"))])
    return features[np.sort(rng.choice(len(features), size=count, replace=False))]


def fit_basis(scans: Iterable[tuple[str, np.ndarray]], config: FeaturePcaConfig, feature_dim: int) -> PcaBasis:
    """Fit a `config.dims` basis on (scan id, (N, D) features) pairs, sampling each scan's rows.

    Pass the scans of `sample_scan_ids(all_ids, config.sample_scans)`; the features may be
    computed on the fly (a generator): only the sums are kept.
    """
    if config.dims is None:
        raise ValueError("fit_basis needs pca dims; dims None means full features")
    accumulator = PcaAccumulator(feature_dim)
    for scan_id, features in scans:
        accumulator.add_scan(scan_id, features, config)
    return accumulator.fit(config.dims)


def save_basis(path: str | Path, basis: PcaBasis, scratch: str | Path | None = None) -> str:
    """Write the basis as safetensors (atomically, through `scratch`); return its fingerprint."""
    save_safetensors(path, basis.tensors(), basis.metadata(), scratch)
    return basis.fingerprint()


def load_basis(path: str | Path, fingerprint: str | None = None) -> PcaBasis:
    """Read a basis written by `save_basis`; with `fingerprint`, refuse any other basis."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PCA basis not found")
    tensors, metadata = load_safetensors(path)
    if metadata.get("format") != BASIS_FORMAT or metadata.get("version") != str(BASIS_VERSION):
        raise ValueError(f"{path} is not an {BASIS_FORMAT} v{BASIS_VERSION} file")
    basis = PcaBasis(mean=tensors["mean"], components=tensors["components"], variance=tensors["variance"],
                     total_variance=float(metadata["total_variance"]), samples=int(metadata["samples"]))
    if fingerprint is not None and basis.fingerprint() != fingerprint:
        raise ValueError(f"{path}: this basis is not the one the coefficients were made with "
                         f"(fingerprint {basis.fingerprint()[:12]}, expected {fingerprint[:12]}); "
                         "rerun the point_features stage")
    return basis


def basis_attributes(basis: PcaBasis, file_name: str) -> dict:
    """What a reduced store's attributes carry: {"pca": {basis file, dims, fingerprint}}.

    `file_name` is relative to the store's parent folder.
    """
    return {"pca": {"basis": file_name, "dims": basis.dims, "fingerprint": basis.fingerprint(),
                    "explained": round(basis.explained, 6)}}


def reduced_columns(basis: PcaBasis) -> dict[str, tuple[str, tuple[int]]]:
    """The ragged columns of a reduced store: fp16 (N, k) coefficients and the valid flags."""
    return {PCA_COLUMN: ("float16", (basis.dims,)), VALID_COLUMN: ("bool", ())}


def encode(basis: PcaBasis, features: np.ndarray, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One scan's coefficients in a reduced store: {PCA_COLUMN: fp16 (N, k)} of (N, D) features.
    With `valid` (N,) bool, only the valid rows are projected; the others get zero codes."""
    if valid is not None and not valid.all():
        codes = np.zeros((len(features), basis.dims), dtype=np.float16)
        codes[valid] = encode(basis, features[valid])[PCA_COLUMN]
        return {PCA_COLUMN: codes}
    codes = basis.project(features)
    if codes.size and np.abs(codes).max() > np.finfo(np.float16).max:
        raise ValueError(f"PCA coefficients up to {np.abs(codes).max():.3g} overflow float16")
    return {PCA_COLUMN: codes.astype(np.float16)}


def _full_rows(source: RaggedReader, scan_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, valid) of one scan of a full store (every row valid in a store without the column)."""
    if VALID_COLUMN not in source.columns:
        features = source.read(scan_id, ["feature"])["feature"]
        return features, np.ones(len(features), dtype=bool)
    rows = source.read(scan_id, ["feature", VALID_COLUMN])
    return rows["feature"], rows[VALID_COLUMN]


def _valid_rows(features: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The rows of the points that have a feature (what the basis is fitted on)."""
    return features if valid.all() else features[valid]


def reduce_store(full: str | Path, reduced: str | Path, basis_file: str | Path, config: FeaturePcaConfig,
                 compressor: Compressor = "lz4") -> PcaBasis:
    """Rewrite a store of full features (column "feature") as a reduced store.

    Fits the basis on the config's sample of `full`, saves it to `basis_file` (beside
    `reduced`: the store names it relative to its parent folder) and writes `reduced` with
    the same scans and attributes. The result is what the point_features stage writes with
    `pca.dims` set (and `compression` as `compressor`); use it to shrink a cache already on
    disk, or to measure a k.
    """
    full, reduced, basis_file = Path(full), Path(reduced), Path(basis_file)
    if basis_file.parent != reduced.parent:
        raise ValueError(f"the basis {basis_file} must sit beside the store {reduced}")
    source = RaggedReader(full)
    sample = sample_scan_ids(source.scan_ids, config.sample_scans)
    basis = fit_basis(((s, _valid_rows(*_full_rows(source, s))) for s in sample), config,
                      source.columns["feature"].inner_shape[0])
    save_basis(basis_file, basis)
    attributes = {**source.attributes, **basis_attributes(basis, basis_file.name)}
    with RaggedWriter(reduced, reduced_columns(basis), attributes=attributes,
                      scans_per_block=scans_per_block(len(source.scan_ids)), compressor=compressor) as writer:
        for scan_id in source.scan_ids:
            features, valid = _full_rows(source, scan_id)
            writer.append(scan_id, **encode(basis, features, valid), **{VALID_COLUMN: valid})
    return basis
