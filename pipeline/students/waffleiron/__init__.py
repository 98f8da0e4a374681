"""The WaffleIron student (ScaLR / ScaLR+), one module per concern:

- `model`: `WaffleIronConfig` (the `student.waffleiron` params) and the `WaffleIron` network,
  whose module tree loads released ScaLR checkpoints strictly;
- `inputs`: a raw scan -> `PreparedScan` (voxels, kNN, grid cells), `collate` -> `PointBatch`;
- `folded`: `InferenceWaffleIron`, the same function folded and laid out for fast prediction;
- `checkpoint`: reading a ScaLR `ckpt_last.pth` safely and strictly.

The names other packages use are importable from here.
"""

from pipeline.students.waffleiron.checkpoint import CheckpointError, load_scalr_checkpoint
from pipeline.students.waffleiron.folded import InferenceOptions, InferenceWaffleIron, bf16_supported
from pipeline.students.waffleiron.inputs import PointBatch, PreparedScan, collate, prepare_scan
from pipeline.students.waffleiron.model import WaffleIron, WaffleIronConfig

__all__ = [
    "CheckpointError",
    "InferenceOptions",
    "InferenceWaffleIron",
    "PointBatch",
    "PreparedScan",
    "WaffleIron",
    "WaffleIronConfig",
    "bf16_supported",
    "collate",
    "load_scalr_checkpoint",
    "prepare_scan",
]
