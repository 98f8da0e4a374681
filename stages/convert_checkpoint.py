"""Convert a released ScaLR / ScaLR+ checkpoint into the project's student folder.

    python -m stages.convert_checkpoint ckpt_last.pth OUT_FOLDER [--params params.yaml | --release] [--overwrite]

Reads the `model_point` weights of `ckpt_last.pth` (torch.load with weights_only=True, the
`module.` prefix stripped) into a WaffleIron, strictly, and writes OUT_FOLDER/model.safetensors
+ config.json, the layout of cache/student that `load_student` and the point_features stage
read. The architecture comes from `student.waffleiron` of the params file, or with
`--release` from the ScaLR+ release (width 768, depth 48, head 2048 -> 1024). An existing
OUT_FOLDER that is not empty is refused (nothing is read or written) unless `--overwrite` is
given, which replaces it and everything in it, whole, once the conversion has succeeded. Not a
DVC stage: a one-off tool, e.g. to copy the result to cache/student or to share weights without
pickle.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.store.atomic import atomic_output
from pipeline.students.io import load_scalr_student, save_student
from pipeline.students.waffleiron import WaffleIronConfig
from stages.common import human_size, load_project_params, run_command

log = logging.getLogger("stages")


def check_out_folder(out: Path, overwrite: bool) -> None:
    """OUT must be new, an empty folder, or (with --overwrite) a folder to replace; never a file."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out}: exists and is not a folder (a file or a link); choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: the folder exists and is not empty; "
                              "pass --overwrite to replace everything in it")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a ScaLR / ScaLR+ ckpt_last.pth")
    parser.add_argument("out", type=Path, help="the student folder to write (model.safetensors + config.json)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="take the architecture from student.waffleiron of this file (default: params.yaml)")
    source.add_argument("--release", action="store_true", help="the ScaLR+ release architecture")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="let torch.load fully unpickle the file (runs code: only for files you trust)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT when it is a non-empty folder (everything in it is deleted)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[convert_checkpoint] %(message)s", force=True)
    check_out_folder(args.out, args.overwrite)  # before anything is read: a refusal costs nothing

    config = WaffleIronConfig() if args.release else load_project_params(args.params).student.waffleiron
    model, metadata = load_scalr_student(args.checkpoint, config, args.allow_unsafe_pickle)
    with atomic_output(args.out) as tmp:
        save_student(tmp, model, metadata)
    log.info("wrote %s (%s): WaffleIron width %d, depth %d, %d outputs, from %s",
             args.out, human_size(args.out), config.width, config.depth, config.out_channels, args.checkpoint)


if __name__ == "__main__":
    run_command(main)
