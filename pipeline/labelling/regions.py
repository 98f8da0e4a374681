"""Region-level consistency: one label per 3D segment of a scan, pooled from its points.

A point's label comes from its own feature alone, so the points of one car can come out as
car, truck and bus. SAS (seed 001, section 3.3) averages features over superpoints, XMask3D
(seed 002, section 3.3) over masks, both assuming a segment holds one class. Here the scan is
over-segmented geometrically, with no learning and no image, and each point takes the class its
segment pools to (`label.regions` in params.yaml, `RegionsConfig`; off by default:
README, "Region pooling", has its measured effect, which is none on the demo). Both papers use
their segments in training; this applies them at labelling time only, to the classifier's output.

The over-segmentation (`segment_scan`, method "ground_components"), all vectorised (scipy's
k-d tree and connected components, numpy keys; no per-point Python loop):
1. **Ground**: the near-horizontal plane (tilt at most `MAX_GROUND_TILT`) that most points lie
   within `ground_threshold` metres of, by RANSAC (`RANSAC_PLANES` planes through three points
   drawn with a fixed seed from up to `RANSAC_SAMPLE` points), refitted by least squares to its
   inliers. Points within `ground_threshold` of it are ground: objects standing on the ground
   are cut from it (a raised sidewalk too, whose pieces then come from step 3).
   `ground_threshold: null` skips
   this step (a scan with no ground, e.g. pre-cut objects).
2. **Objects**: the other points are linked to their `neighbors` nearest points within `gap`
   metres; each connected component is one object.
3. **Cells**: large pieces are cut by a grid, so that two things that touch (a tree over a
   wall, road next to grass) share a segment over at most one cell: ground points by square
   `ground_cell` x `ground_cell` columns, object points by cubes of `object_cell`.
A segment is one (ground or component, cell) pair. On the demo world's val truth the segments
are 99.5% pure (the share of points whose segment's majority class is their own: the most
pooling can keep right) and on the real SemanticKITTI scan 95% (poles against trees and
terrain against vegetation are the impure ones); README, "Region pooling".

Pooling (`pool`): "vote", each segment takes the class most of its points take (ties: the lower
class index), or "logits", the argmax of its points' mean float64 logits (log-odds for logistic
regression, cosine similarities for the nearest-prototype classifier). The vote is the default:
on the demo the mean logits let a few confident points overrule their segment (a traffic cone's
base pooled with the road it stands on): 3D mIoU -0.026 (-0.015 with another distillation seed),
where the vote gives +0.002 (+0.003), too little to turn pooling on by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from pipeline.config_loading import FieldError, require

MAX_GROUND_TILT = 20.0  # degrees: the ground plane's normal is at most this far from vertical
RANSAC_PLANES = 256  # plane hypotheses per scan
RANSAC_SAMPLE = 8192  # points the hypotheses are scored on (all of a smaller scan)
RANSAC_SEED = 0  # fixed: a scan's segments depend on its points only
_LOGIT_BLOCK = 16384  # rows of float64 logits computed at once


@dataclass(frozen=True)
class RegionsConfig:
    """The `label.regions` params section: whether and how points are pooled per 3D segment.

    method: "none" (every point labelled alone) or "ground_components" (module docstring).
    pool: "vote" (a segment's most frequent class) or "logits" (the argmax of its mean logits).
    ground_threshold: metres from the ground plane that count as ground; null: no ground step.
    gap: metres; object points closer than this (among their `neighbors` nearest) share a segment.
    neighbors: how many nearest points each object point may link to.
    ground_cell / object_cell: metres; the grid that cuts ground / object segments.
    """

    method: Literal["none", "ground_components"] = "none"
    pool: Literal["vote", "logits"] = "vote"
    ground_threshold: float | None = 0.08
    gap: float = 0.2
    neighbors: int = 8
    ground_cell: float = 0.5
    object_cell: float = 1.0

    def __post_init__(self) -> None:
        require(self, positive=("gap", "neighbors", "ground_cell", "object_cell"))
        if self.ground_threshold is not None and not self.ground_threshold > 0:
            raise FieldError("ground_threshold", f"must be > 0 or null, got {self.ground_threshold!r}")


def ground_mask(xyz: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) bool: the points within `threshold` of the scan's ground plane (RANSAC over
    near-horizontal planes, refitted by least squares); all False when no such plane exists."""
    xyz = np.asarray(xyz, dtype=np.float64)
    rng = np.random.default_rng(RANSAC_SEED)
    sample = xyz if len(xyz) <= RANSAC_SAMPLE else xyz[np.sort(rng.choice(len(xyz), RANSAC_SAMPLE, replace=False))]
    if len(sample) < 3:
        return np.zeros(len(xyz), dtype=bool)
    triples = sample[rng.integers(0, len(sample), size=(RANSAC_PLANES, 3))]
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    upright = np.abs(normals[:, 2]) >= np.cos(np.radians(MAX_GROUND_TILT)) * np.maximum(lengths, 1e-12)
    keep = upright & (lengths > 1e-12)
    if not keep.any():
        return np.zeros(len(xyz), dtype=bool)
    normals = normals[keep] / lengths[keep, None]
    offsets = -np.einsum("ij,ij->i", normals, triples[keep, 0])
    inliers = np.abs(sample @ normals.T + offsets) < threshold  # (sample, planes)
    best = inliers[:, np.argmax(inliers.sum(axis=0))]
    # z = a x + b y + c through the best plane's inliers (it is near-horizontal, so z is a function).
    support = sample[best]
    design = np.column_stack([support[:, :2], np.ones(len(support))])
    coefficients = np.linalg.lstsq(design, support[:, 2], rcond=None)[0]
    height = xyz[:, 2] - (xyz[:, :2] @ coefficients[:2] + coefficients[2])
    # The vertical distance, as a distance to the (tilted) plane.
    return np.abs(height) / np.sqrt(1 + coefficients[0] ** 2 + coefficients[1] ** 2) < threshold


def linked_components(xyz: np.ndarray, gap: float, neighbors: int) -> np.ndarray:
    """(N,) int64 component of each point, linking each point to its `neighbors` nearest
    points within `gap`."""
    from scipy.sparse import coo_matrix  # here, not at the top: every stage imports this module's config
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    count = len(xyz)
    if count < 2:
        return np.zeros(count, dtype=np.int64)
    _, index = cKDTree(xyz).query(xyz, k=min(neighbors + 1, count), distance_upper_bound=gap)
    linked = (index < count) & (index != np.arange(count)[:, None])  # missing neighbours come back as `count`
    rows = np.broadcast_to(np.arange(count)[:, None], index.shape)[linked]
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, index[linked])), shape=(count, count))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def segment_scan(xyz: np.ndarray, config: RegionsConfig) -> np.ndarray:
    """(N,) int64 segment of each point of one scan (x, y, z in metres), numbered 0..S-1 in
    the order of their sorted keys (deterministic); module docstring."""
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    ground = (np.zeros(len(xyz), dtype=bool) if config.ground_threshold is None
              else ground_mask(xyz, config.ground_threshold))
    component = np.full(len(xyz), -1, dtype=np.int64)  # ground: -1
    component[~ground] = linked_components(xyz[~ground], config.gap, config.neighbors)
    cell = np.floor(xyz / np.where(ground, config.ground_cell, config.object_cell)[:, None]).astype(np.int64)
    cell[ground, 2] = 0  # ground cells are columns
    return dense_rows(np.column_stack([component, cell]))


def dense_rows(keys: np.ndarray) -> np.ndarray:
    """(N,) int64 rank of each row of the (N, C) int64 `keys` among its distinct rows, in
    lexicographic order: `np.unique(keys, axis=0, return_inverse=True)[1]`, column by column in
    one-dimensional uniques (several times faster; ranks stay below N * N, so never overflow)."""
    rank = np.zeros(len(keys), dtype=np.int64)
    for column in keys.T:
        values, column_rank = np.unique(column, return_inverse=True)
        rank = np.unique(rank * len(values) + column_rank.reshape(-1), return_inverse=True)[1].reshape(-1)
    return rank.astype(np.int64)


def pool_argmax(scores: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """(N,) int64: for each point, the argmax of the mean (N, K) `scores` over its segment."""
    scores = np.asarray(scores, dtype=np.float64)
    segments = np.asarray(segments, dtype=np.int64)
    if scores.ndim != 2 or segments.shape != (len(scores),):
        raise ValueError(f"scores must be (N, K) and segments (N,), got {scores.shape} and {segments.shape}")
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    from scipy.sparse import coo_matrix

    count = int(segments.max()) + 1
    members = coo_matrix((np.ones(len(segments)), (segments, np.arange(len(segments)))),
                         shape=(count, len(segments))).tocsr()
    sums = members @ scores  # (S, K); the mean's argmax is the sum's
    return sums.argmax(axis=1)[segments]


class PointClassifier(Protocol):
    """What `region_labels` needs of a classifier (`pipeline.labelling.classifier`)."""

    @property
    def num_classes(self) -> int: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...  # (n, D) -> (n,) int64 argmax

    def logits(self, features: np.ndarray) -> np.ndarray: ...  # (n, D) -> (n, K) float64


def pool_votes(classes: np.ndarray, segments: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) int64: for each point, the class most points of its segment take (ties: the lower)."""
    return pool_argmax(np.eye(num_classes)[np.asarray(classes, dtype=np.int64)], segments)


def region_labels(classifier: PointClassifier, features: np.ndarray, xyz: np.ndarray,
                  config: RegionsConfig) -> np.ndarray:
    """(N,) int64 class of each point of one scan, pooled over its segment as `config.pool` says.

    features: (N, D); xyz: (N, 3+) the same points' coordinates.
    """
    if len(features) != len(xyz):
        raise ValueError(f"{len(features)} point features for {len(xyz)} points")
    if len(features) == 0:
        return np.zeros(0, dtype=np.int64)
    segments = segment_scan(xyz, config)
    if config.pool == "vote":
        return pool_votes(classifier.predict(features), segments, classifier.num_classes)
    scores = np.concatenate([classifier.logits(features[start:start + _LOGIT_BLOCK])
                             for start in range(0, len(features), _LOGIT_BLOCK)])
    return pool_argmax(scores, segments)
