"""Seeds and prompts for prototype images: each image is reproducible on its own.

A prototype image is identified by (base seed, class name, image index, attempt). Its seed
is a hash of those four values, not a draw from a shared random stream, so:

* the same params give the same seed in every process, on every platform and Python
  version (`hash()` is salted per process; SHA-256 is not);
* regenerating image 7 of "car" needs nothing about images 0..6 or about other classes,
  so adding a class to the vocabulary leaves every other class's images untouched;
* a blank image (see `blank.py`) is regenerated with `attempt + 1`, a fresh seed that is
  still a pure function of the params.

Prompts cycle through the templates: image `i` uses template `i mod len(templates)`.
"""

from __future__ import annotations

import hashlib
import json

SEED_BITS = 31  # torch, numpy and most generators accept a non-negative 31-bit int


def image_seed(base_seed: int, class_name: str, index: int, attempt: int = 0) -> int:
    """The seed of image `index` of `class_name`, at retry `attempt` (0 = first try).

    The four values are serialised canonically (a JSON list, so "a", 1 and "a1" cannot
    collide), hashed with SHA-256, and the first 8 bytes are reduced to 31 bits.
    """
    for name, value in (("base_seed", base_seed), ("index", index), ("attempt", attempt)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if index < 0 or attempt < 0:
        raise ValueError(f"index and attempt must be >= 0, got index={index}, attempt={attempt}")
    if not isinstance(class_name, str) or not class_name:
        raise ValueError(f"class_name must be a non-empty string, got {class_name!r}")
    key = json.dumps([base_seed, class_name, index, attempt], ensure_ascii=True)
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << SEED_BITS) - 1)


def prompt_for(class_name: str, templates: tuple[str, ...], index: int) -> str:
    """The prompt of image `index`: template `index mod len(templates)` with "{}" -> class name.

    Every "{}" is replaced (plain text replacement, so other braces are kept as written);
    a template without "{}" is used literally, which lets a class carry its own wording,
    e.g. ("a photo of a {}", "an empty road seen from a car").
    """
    if not templates:
        raise ValueError(f"no prompt templates given for class {class_name!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    template = templates[index % len(templates)]
    return template.replace("{}", class_name)
