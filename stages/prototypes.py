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
from pipeline.generation.prototype_sets import make_prototype_images, write_prototype_folder
from pipeline.store.atomic import atomic_output
from stages.common import (
    PROTOTYPES,
    human_size,
    log,
    run_command,
    stage_arguments,
    stage_scratch,
    start_stage,
    summary,
)


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
        images, source = make_prototype_images(params.prototypes, args.class_name,
                                               params.vocabulary[args.class_name].prompts)
        with atomic_output(out, stage_scratch("prototypes")) as tmp:
            tmp.mkdir(parents=True)
            write_prototype_folder(tmp, args.class_name, source, images)
        log.debug("manifest: %s", out / "manifest.json")
        facts["wrote"] = f"{len(images)} {source} images to {out} ({human_size(out)})"


if __name__ == "__main__":
    run_command(main)
