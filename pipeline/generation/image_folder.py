"""Ready-made prototype images in the IGLOSS authors' folder layout.

The authors released the images they generated, one folder per class::

    prototypes/
        0_barrier/      00000.png  00001.png ... st3_00000.png ...
        1_bicycle/
        ...
        12_sidewalk/

* A folder is named `<index>_<class name>`; the index is the class's position in the
  authors' vocabulary, so sorting by index reproduces their class order. Only the first
  underscore separates the two, so class names may contain underscores
  (`7_traffic_cone`).
* Images are PNGs of mixed sizes (128 to 1536 px), named `000NN.png` (one generator) or
  `st3_000NN.png` (Stable Diffusion 3). They are read in file-name order and converted to
  RGB.

Every problem raises `PrototypeFolderError` naming the path: a missing root, a class
with no folder (listing the classes found), a folder with no PNG, two folders with the
same index or class name, an unreadable image, a folder that does not follow the
naming. Hidden entries (".DS_Store", ".ipynb_checkpoints") are skipped; other files
next to the PNGs are logged, not read.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

_FOLDER_NAME = re.compile(r"^(\d+)_(.+)$")


class PrototypeFolderError(ValueError):
    """The prototype image folder does not follow the expected layout; names the path."""


class ClassFolder(NamedTuple):
    """One class folder: `index, class_name, folder = entry` unpacks it."""

    index: int
    class_name: str
    folder: Path


class FolderImage(NamedTuple):
    """One prototype image read from a class folder (always RGB)."""

    path: Path
    image: Image.Image


def scan_class_folders(root: str | Path) -> list[ClassFolder]:
    """The class folders under `root`, sorted by their index (the authors' class order)."""
    root = Path(root)
    if not root.is_dir():
        raise PrototypeFolderError(
            f"prototype image folder {root} does not exist or is not a directory "
            "(expected one sub-folder per class named <index>_<class name>, e.g. 0_barrier)"
        )
    by_index: dict[int, ClassFolder] = {}
    by_name: dict[str, ClassFolder] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        match = _FOLDER_NAME.match(entry.name)
        if match is None:
            raise PrototypeFolderError(
                f"{entry}: a folder in the prototype root must be named <index>_<class name>, e.g. 0_barrier"
            )
        found = ClassFolder(int(match.group(1)), match.group(2), entry)
        if found.index in by_index:
            raise PrototypeFolderError(
                f"{root}: two class folders share index {found.index}: {by_index[found.index].folder.name} "
                f"and {entry.name}"
            )
        if found.class_name in by_name:
            raise PrototypeFolderError(
                f"{root}: two class folders share the class name {found.class_name!r}: "
                f"{by_name[found.class_name].folder.name} and {entry.name}"
            )
        by_index[found.index] = by_name[found.class_name] = found
    if not by_index:
        raise PrototypeFolderError(
            f"prototype image folder {root} holds no class folder (expected sub-folders named "
            "<index>_<class name>, e.g. 0_barrier)"
        )
    return [by_index[i] for i in sorted(by_index)]


def class_folder(root: str | Path, class_name: str) -> Path:
    """The folder of `class_name` under `root`; the error lists the classes found."""
    folders = scan_class_folders(root)
    for entry in folders:
        if entry.class_name == class_name:
            return entry.folder
    found = ", ".join(entry.class_name for entry in folders)
    raise PrototypeFolderError(
        f"prototype image folder {root} has no folder for class {class_name!r} "
        f"(expected <index>_{class_name}); classes found: {found}"
    )


def list_class_images(folder: str | Path) -> list[Path]:
    """The PNG files of one class folder, sorted by file name; a folder without any is an error."""
    folder = Path(folder)
    pngs, others = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() == ".png":
            pngs.append(entry)
        else:
            others.append(entry.name)
    if others:
        log.warning("%s: ignoring %d entries that are not PNG images: %s", folder, len(others), ", ".join(others[:5]))
    if not pngs:
        raise PrototypeFolderError(f"{folder}: class folder holds no PNG image")
    return pngs


def read_rgb(path: str | Path) -> Image.Image:
    """Read one image fully and convert it to RGB; an unreadable file is a `PrototypeFolderError`."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise PrototypeFolderError(f"{path}: cannot read the image ({error})") from None


def load_class_images(root: str | Path, class_name: str) -> list[FolderImage]:
    """All images of `class_name` under `root` as (path, RGB image), sorted by file name."""
    return [FolderImage(path, read_rgb(path)) for path in list_class_images(class_folder(root, class_name))]
