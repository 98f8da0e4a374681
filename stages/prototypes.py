"""Stage prototypes: the prototype images of one vocabulary class.

    python -m stages.prototypes <class name>

dvc.yaml runs one such stage per class (foreach over the vocabulary), so editing one class
regenerates only that class. Writes cache/prototypes/<class>/ with PNG images and a
manifest.json (prompt, seed, attempt, generator and size of every image). The source is
`prototypes.source`: procedural (demo world), diffusers, or a folder of ready-made images
in the IGLOSS authors' layout.
"""

from __future__ import annotations

from pipeline.config_loading import ConfigError
from pipeline.generation.blank import generate_class_images
from pipeline.generation.image_folder import load_class_images
from pipeline.generation.manifest import (
    ClassManifest,
    ManifestImage,
    prototype_file_name,
    save_png,
    write_manifest,
)
from pipeline.store import atomic_output
from stages.common import (
    PROTOTYPES,
    human_size,
    log,
    stage_arguments,
    start_stage,
    summary,
)


def made_images(params, class_name: str) -> tuple[list, str]:
    """(list of (image, ManifestImage fields), source) for the configured source."""
    cfg = params.prototypes
    if cfg.source == "folder":
        images = load_class_images(cfg.folder, class_name)
        # The path inside the folder, so the manifest does not depend on where the folder lives.
        return [(item.image, dict(generator=item.path.relative_to(cfg.folder).as_posix())) for item in images], "folder"
    if cfg.source == "procedural":
        from pipeline.generation.procedural import ProceduralGenerator

        generator = ProceduralGenerator(class_name, cfg.image_size)
    else:
        from pipeline.generation.diffusers_backend import DiffusersGenerator

        generator = DiffusersGenerator(cfg.diffusers)
    generated = generate_class_images(generator, class_name, params.vocabulary[class_name].prompts,
                                      cfg.images_per_class, cfg.seed)
    return [(g.image, dict(generator=generator.generator_id, prompt=g.prompt, seed=g.seed,
                           attempt=g.attempt)) for g in generated], cfg.source


def main(argv: list[str] | None = None) -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("class_name", help="a class of the params vocabulary")
    args = parser.parse_args(argv)
    params = start_stage(f"prototypes {args.class_name}", args)
    if args.class_name not in params.vocabulary:
        raise ConfigError(f"{args.params}: vocabulary has no class {args.class_name!r}; "
                          f"it has {', '.join(params.vocabulary)}")
    out = PROTOTYPES / args.class_name
    with summary(f"prototypes {args.class_name}") as facts:
        images, source = made_images(params, args.class_name)
        entries = []
        with atomic_output(out) as tmp:
            tmp.mkdir(parents=True)
            for index, (image, fields) in enumerate(images):
                name = prototype_file_name(index)
                save_png(image, tmp / name)
                entries.append(ManifestImage.for_image(name, image, **fields))
            write_manifest(tmp, ClassManifest(args.class_name, source, tuple(entries)))
        log.debug("manifest: %s", out / "manifest.json")
        facts["wrote"] = f"{len(entries)} {source} images to {out} ({human_size(out)})"


if __name__ == "__main__":
    main()
