"""Prototype image sources: where the "visual words" of each class come from.

* `diffusers_backend`: a diffusers text-to-image pipeline (`DiffusersGenerator`), loaded
  lazily from a local folder or a hub id, one fixed seed per image.
* `blank`: detection of the safety checker's black images, and the per-class loop
  `generate_class_images` that regenerates them with the next attempt's seed.
* `image_folder`: ready-made images in the IGLOSS authors' layout (`<index>_<class>/*.png`).
* `seeds`: per-image seeds and prompts, reproducible image by image.
* `manifest`: the per-class `manifest.json` written next to the PNGs in the artifact.

The procedural exemplars of the demo world live in `pipeline.demo_world.exemplars`.
Importing this package does not import diffusers; the backend imports it on first use.
"""

from pipeline.generation.blank import (
    BlankImageError,
    GeneratedImage,
    ImageGenerator,
    generate_class_images,
    is_blank,
)
from pipeline.generation.diffusers_backend import (
    DiffusersConfig,
    DiffusersConfigError,
    DiffusersGenerator,
    ModelUnavailableError,
)
from pipeline.generation.image_folder import (
    ClassFolder,
    FolderImage,
    PrototypeFolderError,
    load_class_images,
    scan_class_folders,
)
from pipeline.generation.manifest import (
    MANIFEST_NAME,
    PROCEDURAL_GENERATOR_ID,
    ClassManifest,
    ManifestError,
    ManifestImage,
    prototype_file_name,
    read_manifest,
    save_png,
    write_manifest,
)
from pipeline.generation.seeds import image_seed, prompt_for

__all__ = [
    "BlankImageError",
    "ClassFolder",
    "ClassManifest",
    "DiffusersConfig",
    "DiffusersConfigError",
    "DiffusersGenerator",
    "FolderImage",
    "GeneratedImage",
    "ImageGenerator",
    "MANIFEST_NAME",
    "ManifestError",
    "ManifestImage",
    "ModelUnavailableError",
    "PROCEDURAL_GENERATOR_ID",
    "PrototypeFolderError",
    "generate_class_images",
    "image_seed",
    "is_blank",
    "load_class_images",
    "prompt_for",
    "prototype_file_name",
    "read_manifest",
    "save_png",
    "scan_class_folders",
    "write_manifest",
]
