"""Per-scan random generators of the distillation: what a scan draws depends on the seed, the
epoch and which scan it is, never on the order the scans come in or on the process that
handles them, so a distributed training run draws exactly what one process draws.

* `epoch_scan_rng(seed, epoch, scan_index)`: keyed by the training epoch and the scan's
  position in the training list, for the augmentation of a training scan.
* `epoch_camera_rng(seed, epoch, scan_index)`: the same keys, for which camera teaches a
  training scan or each of its points (`pipeline.training.recipe`).

The training draws (these and those of `pipeline.training.sampling`) come from
`training_sequence(seed, stream, epoch, index)`: a `np.random.SeedSequence` of fixed length
with a stream tag, so no two purposes can share a stream.
"""

from __future__ import annotations

import numpy as np

# The stream tags of the training draws.
ORDER_STREAM = 0  # the order an epoch visits the scans in
AUGMENT_STREAM = 1  # a training scan's augmentation
TORCH_STREAM = 2  # a rank's torch seed of an epoch (drop-path masks)
CAMERA_STREAM = 3  # which camera teaches a training scan (or each of its points)


def training_sequence(seed: int, stream: int, epoch: int, index: int) -> np.random.SeedSequence:
    """The seed sequence of one training draw: `stream` is one of the tags above."""
    return np.random.SeedSequence((seed, stream, epoch, index))


def epoch_scan_rng(seed: int, epoch: int, scan_index: int) -> np.random.Generator:
    """The generator that augments scan `scan_index` (its position in the scan list) in `epoch`."""
    return np.random.default_rng(training_sequence(seed, AUGMENT_STREAM, epoch, scan_index))


def epoch_camera_rng(seed: int, epoch: int, scan_index: int) -> np.random.Generator:
    """The generator that draws which camera teaches scan `scan_index` (or each of its points)."""
    return np.random.default_rng(training_sequence(seed, CAMERA_STREAM, epoch, scan_index))
