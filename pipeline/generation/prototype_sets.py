"""A class's set of prototype images, made by the configured source and kept as a folder.

Shared by the `prototypes` stage (one vocabulary class) and by queries (any name): both make
the images with `make_prototype_images` and write them with `write_prototype_folder`, so a
query's cached prototypes are exactly what the stage would make for that name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from PIL import Image

from pipeline.config_loading import FieldError, require
from pipeline.generation.diffusers_backend import DiffusersConfig
from pipeline.generation.blank import generate_class_images
from pipeline.generation.image_folder import load_class_images
from pipeline.generation.manifest import (
    ClassManifest,
    ManifestImage,
    prototype_file_name,
    read_manifest,
    save_png,
    write_manifest,
)


@dataclass(frozen=True)
class PrototypesConfig:
    """The `prototypes:` params section: where the prototype images come from.

    source: "procedural" renders demo-world exemplars (the demo default; it knows only the
    demo classes); "diffusers" draws them with a text-to-image model (see `diffusers`);
    "folder" reads ready-made images in the IGLOSS authors' layout `<index>_<class>/*.png`.
    """

    source: Literal["procedural", "diffusers", "folder"] = "procedural"
    images_per_class: int = 8
    seed: int = 0
    image_size: int = 224
    folder: str | None = None
    diffusers: DiffusersConfig = field(default_factory=DiffusersConfig)

    def __post_init__(self) -> None:
        require(self, positive=("images_per_class", "image_size"), non_negative=("seed",))
        if self.source == "folder" and not self.folder:
            raise FieldError("folder", "source 'folder' needs prototypes.folder (the root of <index>_<class> folders)")


def make_prototype_images(cfg: PrototypesConfig, name: str, prompts: Sequence[str]) -> tuple[list, str]:
    """(list of (image, ManifestImage fields), source) of `name` from the configured source.

    Any name and prompts, not only the vocabulary's: the procedural source refuses names it
    does not know, the others draw anything.
    """
    if cfg.source == "folder":
        images = load_class_images(cfg.folder, name)
        # The path inside the folder, so the manifest does not depend on where the folder lives.
        return [(item.image, dict(generator=item.path.relative_to(cfg.folder).as_posix())) for item in images], "folder"
    if cfg.source == "procedural":
        from pipeline.generation.procedural import ProceduralGenerator

        generator = ProceduralGenerator(name, cfg.image_size)
    else:
        from pipeline.generation.diffusers_backend import DiffusersGenerator

        generator = DiffusersGenerator(cfg.diffusers)
    generated = generate_class_images(generator, name, tuple(prompts), cfg.images_per_class, cfg.seed)
    return [(g.image, dict(generator=generator.generator_id, prompt=g.prompt, seed=g.seed,
                           attempt=g.attempt)) for g in generated], cfg.source


def write_prototype_folder(folder: Path, name: str, source: str, images: list) -> ClassManifest:
    """PNGs 00000.png, ... and manifest.json of `images` ((image, fields) pairs) into an existing folder."""
    entries = []
    for index, (image, fields) in enumerate(images):
        file = prototype_file_name(index)
        save_png(image, folder / file)
        entries.append(ManifestImage.for_image(file, image, **fields))
    manifest = ClassManifest(name, source, tuple(entries))
    write_manifest(folder, manifest)
    return manifest


def read_prototype_folder(folder: Path) -> list[Image.Image]:
    """The RGB images a prototype folder's manifest lists, in order (validated by `read_manifest`)."""
    images = []
    for entry in read_manifest(folder).images:
        with Image.open(folder / entry.file) as image:
            images.append(image.convert("RGB"))
    return images
