"""Image and truth-map file writers (PIL; byte-stable for identical arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MAX_DEPTH_CM = 65535


def write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality)


def write_png(path: Path, array: np.ndarray) -> None:
    """RGB uint8, grey uint8 or 16-bit grey (uint16) PNG."""
    # compress_level 1: several times faster than the default, files a bit larger.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def depth_centimetres(depth_m: np.ndarray) -> np.ndarray:
    """uint16 depth in cm; 0 stays "nothing", hits are at least 1 cm, far ones saturate."""
    cm = np.clip(np.rint(depth_m * 100.0), 1, MAX_DEPTH_CM)
    return np.where(depth_m > 0.0, cm, 0).astype(np.uint16)
