"""The per-class `manifest.json` of the prototypes artifact (`cache/prototypes/<class>/`).

Each class folder holds its PNG images and one manifest that says where every image came
from, enough to regenerate any single image::

    {
      "class_name": "car",
      "images": [
        {"attempt": 0, "file": "00000.png", "generator": "stabilityai/stable-diffusion-3-medium-diffusers",
         "height": 1024, "prompt": "a photo of a car", "seed": 1234567, "width": 1024},
        ...
      ],
      "source": "diffusers",
      "version": 1
    }

* `source` is "diffusers", "procedural" (the demo world's exemplar renderer) or
  "folder" (ready-made images, e.g. the authors'; `generator` is then the source file's
  path, and `prompt` / `seed` are null because nobody knows them).
* The file is byte-stable: sorted keys, fixed indentation, ASCII only, no timestamps, a
  final newline, images in index order. The same inputs give the same bytes, so DVC
  sees an unchanged output.
* `read_manifest` validates everything and stops with a `ManifestError` naming the file
  and the problem: a missing or mistyped field, a listed image that is missing or whose
  size disagrees, or a PNG in the folder that the manifest does not list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SOURCES = ("procedural", "diffusers", "folder")
Source = Literal["procedural", "diffusers", "folder"]
PROCEDURAL_GENERATOR_ID = "procedural-demo-world"

_IMAGE_KEYS = ("file", "prompt", "seed", "attempt", "generator", "width", "height")
_TOP_KEYS = ("version", "class_name", "source", "images")


class ManifestError(ValueError):
    """A manifest is missing, malformed or disagrees with its folder; names the file."""


@dataclass(frozen=True)
class ManifestImage:
    """How one prototype image was made.

    Args:
        file: the PNG's file name inside the class folder (no directories).
        prompt: the text prompt; None for ready-made images.
        seed: the seed that produced the accepted image; None for ready-made images.
        attempt: 0, or how many blank images were discarded before this one.
        generator: the model id / folder, "procedural-demo-world", or the source file path.
        width, height: the image size in pixels.
    """

    file: str
    prompt: str | None
    seed: int | None
    attempt: int
    generator: str
    width: int
    height: int

    @classmethod
    def for_image(
        cls,
        file: str,
        image: Image.Image,
        generator: str,
        prompt: str | None = None,
        seed: int | None = None,
        attempt: int = 0,
    ) -> "ManifestImage":
        """The entry for `image` saved as `file`, taking its size from the image."""
        return cls(file, prompt, seed, attempt, generator, image.width, image.height)


@dataclass(frozen=True)
class ClassManifest:
    """The manifest of one class folder."""

    class_name: str
    source: Source
    images: tuple[ManifestImage, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "class_name": self.class_name,
            "source": self.source,
            "images": [{key: getattr(image, key) for key in _IMAGE_KEYS} for image in self.images],
        }


def prototype_file_name(index: int) -> str:
    """The PNG name of image `index`, as in the authors' layout: 00000.png, 00001.png, ..."""
    return f"{index:05d}.png"


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as an RGB PNG with no metadata, so equal pixels give equal bytes."""
    path = Path(path)
    clean = Image.fromarray(np.asarray(image.convert("RGB")))
    clean.save(path, format="PNG")
    return path


def manifest_bytes(manifest: ClassManifest) -> bytes:
    """The exact bytes written for `manifest` (after validating it)."""
    data = manifest.to_json()
    _validate(data, "<manifest being written>")
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def write_manifest(folder: str | Path, manifest: ClassManifest) -> Path:
    """Write `folder/manifest.json` (through a temporary file, then an atomic rename)."""
    path = Path(folder) / MANIFEST_NAME
    payload = manifest_bytes(manifest)
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return path


def read_manifest(folder: str | Path, check_images: bool = True) -> ClassManifest:
    """Read and validate `folder/manifest.json`.

    With `check_images`, every listed image must exist with the recorded size, and every
    PNG in the folder must be listed.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from None
    manifest = _validate(data, str(path))
    if check_images:
        _check_folder(folder, manifest, str(path))
    return manifest


def _validate(data: Any, where: str) -> ClassManifest:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object at the top level")
    _require_keys(data, _TOP_KEYS, where)
    if data["version"] != MANIFEST_VERSION:
        raise ManifestError(f"{where}: version {data['version']!r} is not supported (expected {MANIFEST_VERSION})")
    class_name = data["class_name"]
    if not isinstance(class_name, str) or not class_name:
        raise ManifestError(f"{where}: class_name must be a non-empty string, got {class_name!r}")
    source = data["source"]
    if source not in SOURCES:
        raise ManifestError(f"{where}: source {source!r} is not one of {', '.join(SOURCES)}")
    entries = data["images"]
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{where}: images must be a non-empty list")
    images, seen = [], set()
    for i, entry in enumerate(entries):
        at = f"{where}: images[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{at}: expected an object")
        _require_keys(entry, _IMAGE_KEYS, at)
        file = entry["file"]
        if not isinstance(file, str) or not file.lower().endswith(".png") or Path(file).name != file or file.startswith("."):
            raise ManifestError(f"{at}.file: must be a PNG file name inside the class folder, got {file!r}")
        if file in seen:
            raise ManifestError(f"{at}.file: {file!r} is listed twice")
        seen.add(file)
        prompt, seed = entry["prompt"], entry["seed"]
        if prompt is not None and not isinstance(prompt, str):
            raise ManifestError(f"{at}.prompt: must be a string or null, got {prompt!r}")
        if source == "diffusers" and prompt is None:
            raise ManifestError(f"{at}.prompt: a diffusers image must record its prompt")
        if seed is None:
            if source != "folder":
                raise ManifestError(f"{at}.seed: a {source} image must record its seed")
        elif not _is_int(seed) or seed < 0:
            raise ManifestError(f"{at}.seed: must be a non-negative integer or null, got {seed!r}")
        if not _is_int(entry["attempt"]) or entry["attempt"] < 0:
            raise ManifestError(f"{at}.attempt: must be a non-negative integer, got {entry['attempt']!r}")
        if not isinstance(entry["generator"], str) or not entry["generator"]:
            raise ManifestError(f"{at}.generator: must be a non-empty string, got {entry['generator']!r}")
        for key in ("width", "height"):
            if not _is_int(entry[key]) or entry[key] < 1:
                raise ManifestError(f"{at}.{key}: must be a positive integer, got {entry[key]!r}")
        images.append(ManifestImage(**{key: entry[key] for key in _IMAGE_KEYS}))
    return ClassManifest(class_name, source, tuple(images))


def _check_folder(folder: Path, manifest: ClassManifest, where: str) -> None:
    for image in manifest.images:
        file = folder / image.file
        if not file.is_file():
            raise ManifestError(f"{where}: lists {image.file}, which is missing from {folder}")
        try:
            with Image.open(file) as opened:
                size = opened.size
        except OSError as error:
            raise ManifestError(f"{where}: cannot read listed image {file} ({error})") from None
        if size != (image.width, image.height):
            raise ManifestError(
                f"{where}: {image.file} is {size[0]}x{size[1]} but the manifest says {image.width}x{image.height}"
            )
    listed = {image.file for image in manifest.images}
    unlisted = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".png" and p.name not in listed)
    if unlisted:
        raise ManifestError(f"{where}: {folder} holds PNGs the manifest does not list: {', '.join(unlisted)}")


def _require_keys(data: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
