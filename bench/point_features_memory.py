"""Peak memory of the point_features stage with the full-size student, on one scan (issue #4).

Builds a random WaffleIron of the ScaLR+ release sizes (width 768, depth 48, MLP head
2048 -> 1024), prepares it as the stage does (`WaffleIron.for_inference` in the
given precision, or the plain module with `--plain`) and runs the stage's per-scan work
(`PointFeatureComputer`) on the largest scan of the evaluation split of a finished chain
folder, or, with `--real-keyframe`, on the real nuScenes keyframe of ../shared/realdata/ (laid out
as a dataroot in a temporary folder by tests/realdata.py, files linked, not copied). Prints the
scan size, the points after voxelisation and crop, the time and the process's peak resident set
(ru_maxrss: the whole process, weights, inputs and Python included).

    .venv/bin/python bench/point_features_memory.py /tmp/chain [--precision bf16 | --plain]
    .venv/bin/python bench/point_features_memory.py --real-keyframe [--precision bf16 | --plain]
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from stages.common import load_project_params  # noqa: E402
from pipeline.datasets import open_reader  # noqa: E402
from pipeline.students.features import PointFeatureComputer  # noqa: E402
from pipeline.students.waffleiron import WaffleIron, WaffleIronConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chain", type=Path, nargs="?", help="a chain folder: its params.yaml and dataset are read")
    parser.add_argument("--real-keyframe", action="store_true",
                        help="the real nuScenes keyframe of ../shared/realdata/ instead of a chain folder")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--plain", action="store_true", help="the checkpoint-compatible module, not folded")
    args = parser.parse_args()
    if args.real_keyframe == (args.chain is not None):
        parser.error("give either a chain folder or --real-keyframe")
    if args.real_keyframe:
        args.chain = real_keyframe_folder()
    os.chdir(args.chain)
    params = load_project_params("params.yaml")
    reader = open_reader(params.dataset, params.dataset.eval_split)
    sizes = {scan_id: len(reader.read(scan_id).points) for scan_id in reader.scan_ids}
    scan_id = max(sizes, key=sizes.get)
    torch.manual_seed(0)
    model = WaffleIron(WaffleIronConfig()).eval()
    runner = model if args.plain else model.for_inference(args.precision)
    compute = PointFeatureComputer(runner, reader, params.dataset.intensity_stats(), torch.device("cpu"))
    start, cpu_start = time.perf_counter(), time.process_time()
    features, _ = compute(scan_id)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    what = "plain module" if args.plain else f"folded {args.precision}"
    print(f"{what}: scan {scan_id}, {sizes[scan_id]} points ({compute.kept} kept), features {features.shape} "
          f"{features.dtype}, {seconds:.1f} s ({cpu_seconds:.1f} CPU s over {torch.get_num_threads()} threads), "
          f"peak RSS {peak_gib:.2f} GiB")


def real_keyframe_folder() -> Path:
    """A temporary folder with the real keyframe's dataroot and a params.yaml (presets/nuscenes.yaml)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import yaml
    from realdata import MISSING, REALDATA, keyframe_params, write_nuscenes_keyframe

    if not REALDATA.is_dir():
        raise SystemExit(MISSING)
    folder = Path(tempfile.mkdtemp(prefix="real_keyframe_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    dataroot = write_nuscenes_keyframe(folder / "nuscenes")
    (folder / "params.yaml").write_text(yaml.safe_dump(keyframe_params(dataroot), sort_keys=False))
    return folder


if __name__ == "__main__":
    main()
