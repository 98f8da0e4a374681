"""Images as teachers read them: any image source, resized, as float tensors in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ImageLike = Image.Image | np.ndarray | str | Path


def load_image(source: ImageLike, size: tuple[int, int]) -> torch.Tensor:
    """Load (if a path) and resize an image to `size` (H, W): a float32 (3, H, W) tensor in [0, 1].

    Accepts a PIL image, a uint8 array (H, W, 3) or (H, W), or a file path. Grey and RGBA
    images become RGB. Resizing is PIL bilinear (antialiased when shrinking).
    """
    if isinstance(source, (str, Path)):
        with Image.open(source) as opened:
            image = opened.convert("RGB")
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {source.dtype}")
        image = Image.fromarray(source).convert("RGB")
    elif isinstance(source, Image.Image):
        image = source.convert("RGB")
    else:
        raise TypeError(f"cannot read an image from {type(source).__name__}")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_images(sources: Sequence[ImageLike], size: tuple[int, int]) -> torch.Tensor:
    """`load_image` for several images: a float32 (B, 3, H, W) tensor in [0, 1]."""
    return torch.stack([load_image(source, size) for source in sources])
