"""Per-scan random generators: what a scan draws depends on the seed and on which scan it is,
never on the order the scans come in or on the process that handles them, so a sharded stage
or a distributed training run draws exactly what one process draws.

* `scan_id_rng(seed, scan_id)`: keyed by the scan's id, for work done once per scan (the
  assignments' choice of camera, `pipeline.assignments`).
* `epoch_scan_rng(seed, epoch, scan_index)`: keyed by the training epoch and the scan's
  position in the training list, for the augmentation of a training scan.

The training draws (`epoch_scan_rng` and those of `pipeline.training.sampling`) come from
`training_sequence(seed, stream, epoch, index)`: a `np.random.SeedSequence` of fixed length
with a stream tag, so no two purposes can share a stream.
"""

from __future__ import annotations

import hashlib

import numpy as np

# The stream tags of the training draws.
ORDER_STREAM = 0  # the order an epoch visits the scans in
AUGMENT_STREAM = 1  # a training scan's augmentation
TORCH_STREAM = 2  # a rank's torch seed of an epoch (drop-path masks)


def scan_id_rng(seed: int, scan_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, scan id): the same draw whatever the sharding."""
    digest = hashlib.sha256(f"{seed}:{scan_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def training_sequence(seed: int, stream: int, epoch: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of one training draw: `stream` is one of the tags above."""
    return np.random.SeedSequence((seed, stream, epoch, index))


def epoch_scan_rng(seed: int, epoch: int, scan_index: int) -> np.random.Generator:
    """The generator that augments scan `scan_index` (its position in the scan list) in `epoch`."""
    return np.random.default_rng(training_sequence(seed, AUGMENT_STREAM, epoch, scan_index))
