"""Which scans each training step draws, on which rank, and with which random numbers.

Every random draw of the distillation is a pure function of (seed, epoch, scan or rank),
never of a generator carried from step to step. That buys two properties:

* Sharding does not change training. Epoch e visits the scans in the order
  `epoch_order(seed, e, n)`, cut into global batches of `batch_size` scans. With W ranks
  (torchrun), rank r takes `rank_share(batch, r, W)`: every W-th scan of the global
  batch, starting at the r-th. A scan is augmented by `pipeline.seeding.epoch_scan_rng(seed, e,
  index)` and its teaching camera drawn by `epoch_camera_rng(seed, e, index)`, whichever rank
  draws it, so the union of the ranks' samples is the single process's batch, sample for
  sample (`batch_size` is the global batch for any W).
* Resuming is exact. The random state at the start of epoch e is fully determined by
  e, so a checkpoint needs no generator state: `torch_seed(seed, e, rank)` reseeds
  torch (drop-path masks) at every epoch start.

Each draw comes from `pipeline.seeding.training_sequence(seed, stream, epoch, index)`: the
entropy has a fixed length and a stream tag, so no two purposes can share a stream.
"""

from __future__ import annotations

import numpy as np

from pipeline.seeding import ORDER_STREAM, TORCH_STREAM, training_sequence


def epoch_order(seed: int, epoch: int, num_scans: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the scans: a permutation of range(num_scans)."""
    return np.random.default_rng(training_sequence(seed, ORDER_STREAM, epoch, 0)).permutation(num_scans)


def global_batches(order: np.ndarray, batch_size: int, drop_last: bool = False) -> list[np.ndarray]:
    """Consecutive batches of `batch_size` scan indices. The last one may be shorter; with
    `drop_last` (ScaLR+) a shorter last batch is dropped, so its scans miss that epoch."""
    end = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[start:min(start + batch_size, end)] for start in range(0, end, batch_size)]


def steps_per_epoch(num_scans: int, batch_size: int, drop_last: bool) -> int:
    """How many global batches `global_batches` cuts an epoch of `num_scans` scans into."""
    return num_scans // batch_size if drop_last else -(-num_scans // batch_size)


def rank_share(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The scans of a global batch that rank `rank` of `world_size` draws: batch[rank::world_size].

    Every rank must train on at least one scan (DistributedDataParallel needs a backward
    pass on each), so a batch shorter than `world_size` (only an epoch's last batch can
    be) is first repeated cyclically to `world_size` scans, as torch's DistributedSampler
    pads its last round. Only then does the result differ from a single process's batch.
    """
    if len(batch) < world_size:
        batch = np.resize(batch, world_size)
    return batch[rank::world_size]


def torch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of `rank` for `epoch` (drop-path masks, the only torch draws in training)."""
    return int(training_sequence(seed, TORCH_STREAM, epoch, rank).generate_state(1)[0])
