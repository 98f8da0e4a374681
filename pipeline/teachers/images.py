"""Images as teachers read them: any image source, resized, as float tensors in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ImageLike = Image.Image | np.ndarray | str | Path


def load_image(source: ImageLike, size: tuple[int, int], expected_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Load (if a path) and resize an image to `size` (H, W): a float32 (3, H, W) tensor in [0, 1].

    Accepts a PIL image, a uint8 array (H, W, 3) or (H, W), or a file path. Grey and RGBA
    images become RGB. Resizing is PIL bilinear (antialiased when shrinking).
    expected_size: (H, W) the image must have before resizing, e.g. the size its camera
    calibration is for (`CameraView.height, .width`); another size is a ValueError naming the
    file and both sizes, not a silent stretch. A file that cannot be decoded (truncated,
    not an image) is a ValueError naming it.
    """
    if isinstance(source, (str, Path)):
        try:
            with Image.open(source) as opened:
                image = opened.convert("RGB")
        except FileNotFoundError:
            raise
        except (OSError, SyntaxError) as error:  # PIL: truncated, unidentified or broken files
            text = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"{source}: cannot read the image: {text} (the file is damaged or not an image)") from None
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {source.dtype}")
        image = Image.fromarray(source).convert("RGB")
    elif isinstance(source, Image.Image):
        image = source.convert("RGB")
    else:
        raise TypeError(f"cannot read an image from {type(source).__name__}")
    if expected_size is not None and image.size != (expected_size[1], expected_size[0]):
        name = source if isinstance(source, (str, Path)) else "an image"
        raise ValueError(f"{name}: the image is {image.size[0]}x{image.size[1]} pixels but its calibration is for "
                         f"{expected_size[1]}x{expected_size[0]} (width x height), so points would be given the "
                         "wrong pixels; put back the image of the calibrated size")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_images(sources: Sequence[ImageLike], size: tuple[int, int]) -> torch.Tensor:
    """`load_image` for several images: a float32 (B, 3, H, W) tensor in [0, 1]."""
    return torch.stack([load_image(source, size) for source in sources])
