"""Blank images and the per-class generation loop that regenerates them.

Stable Diffusion's safety checker does not fail: it replaces an image it flags with an
all-black one of the same size. Such an image would become a prototype whose feature is
the teacher's response to black, a silent poison for the classifier. Some pipelines and
broken fp16 runs give other degenerate outputs (NaNs decoded to one flat colour). So
every generated image is checked with `is_blank`, and a blank one is regenerated with
the next attempt's seed (`seeds.image_seed(..., attempt + 1)`). After
`max_blank_retries` retries the class fails with a message naming the class, the
prompt and every seed tried, so the user can change the prompt or the model instead of
getting fewer prototypes than asked for.

The loop works with anything that has `generate(prompts, seeds) -> images` and a
`max_blank_retries` attribute (the `ImageGenerator` protocol), e.g. `DiffusersGenerator`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from pipeline.generation.seeds import image_seed, prompt_for

log = logging.getLogger(__name__)

BLACK_LEVEL = 3  # brightest value (0..255) an image may have and still count as black
FLAT_TOLERANCE = 2  # largest spread (0..255) of every channel for an image to count as one flat colour


class BlankImageError(RuntimeError):
    """An image stayed blank through every retry; the message names class, prompt and seeds."""


class ImageGenerator(Protocol):
    """What the generation loop needs from a text-to-image backend."""

    max_blank_retries: int

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        """One image per (prompt, seed) pair, in order, deterministic for fixed seeds."""
        ...


@dataclass(frozen=True)
class GeneratedImage:
    """One accepted prototype image and how to make it again.

    `attempt` is 0 when the first seed gave a usable image, k when k blank images were
    discarded before it; `seed == image_seed(base_seed, class_name, index, attempt)`.
    """

    image: Image.Image
    prompt: str
    seed: int
    attempt: int
    index: int


def is_blank(image: Image.Image, black_level: int = BLACK_LEVEL, flat_tolerance: int = FLAT_TOLERANCE) -> bool:
    """True for an (almost) all-black image or an image of a single flat colour.

    Black: every value <= `black_level` (the safety checker writes exact zeros).
    Flat: in every channel, max - min <= `flat_tolerance`. Real photographs, even dark or
    foggy ones, vary by far more than a couple of grey levels somewhere.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    if pixels.size == 0:
        return True
    if int(pixels.max()) <= black_level:
        return True
    spread = pixels.reshape(-1, 3).max(axis=0) - pixels.reshape(-1, 3).min(axis=0)
    return bool(np.all(spread <= flat_tolerance))


def generate_class_images(
    generator: ImageGenerator,
    class_name: str,
    templates: tuple[str, ...],
    count: int,
    base_seed: int,
    max_blank_retries: int | None = None,
) -> list[GeneratedImage]:
    """Generate `count` non-blank images of `class_name`, regenerating blank ones.

    Image i uses `prompt_for(class_name, templates, i)` and
    `image_seed(base_seed, class_name, i, attempt)`. All first attempts go to the
    generator in one call (it batches them); then only the blank ones are retried, each
    with its next attempt's seed, at most `max_blank_retries` times (default: the
    generator's own `max_blank_retries`). Returns the images in index order.
    """
    if count < 1:
        raise ValueError(f"class {class_name!r}: the number of images must be >= 1, got {count}")
    retries = generator.max_blank_retries if max_blank_retries is None else max_blank_retries
    if retries < 0:
        raise ValueError(f"max_blank_retries must be >= 0, got {retries}")

    prompts = [prompt_for(class_name, templates, i) for i in range(count)]
    accepted: dict[int, GeneratedImage] = {}
    seeds_tried: dict[int, list[int]] = {i: [] for i in range(count)}
    pending = list(range(count))
    for attempt in range(retries + 1):
        seeds = [image_seed(base_seed, class_name, i, attempt) for i in pending]
        images = generator.generate([prompts[i] for i in pending], seeds)
        if len(images) != len(pending):
            raise RuntimeError(f"class {class_name!r}: the generator returned {len(images)} images for {len(pending)} prompts")
        still_blank = []
        for index, seed, image in zip(pending, seeds, images):
            seeds_tried[index].append(seed)
            if is_blank(image):
                still_blank.append(index)
            else:
                accepted[index] = GeneratedImage(image, prompts[index], seed, attempt, index)
        if still_blank and attempt < retries:
            log.warning(
                "class %r: %d blank image(s) (safety checker or degenerate output), retrying with new seeds: indices %s",
                class_name, len(still_blank), still_blank,
            )
        pending = still_blank
        if not pending:
            break

    if pending:
        details = "; ".join(
            f"image {i} (prompt {prompts[i]!r}, seeds {', '.join(map(str, seeds_tried[i]))})" for i in pending
        )
        raise BlankImageError(
            f"class {class_name!r}: {len(pending)} image(s) stayed blank (all black or one flat colour, "
            f"as the safety checker returns) after {retries + 1} attempt(s): {details}. "
            "Reword the prompt templates for this class, use another model, or raise "
            "prototypes.diffusers.max_blank_retries."
        )
    return [accepted[i] for i in range(count)]
