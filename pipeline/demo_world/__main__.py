"""python -m pipeline.demo_world --out DIR [--size default|small] [--seed N]"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .config import PRESETS, DemoWorldConfig
from .world import write_demo_world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo_world", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    parser.add_argument("--size", choices=sorted(PRESETS), default="default", help="size preset")
    parser.add_argument("--seed", type=int, default=0, help="world seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    summary = write_demo_world(args.out, DemoWorldConfig.preset(args.size, args.seed))
    elapsed = time.perf_counter() - start
    nus, kitti = summary["nuscenes"], summary["semantic_kitti"]
    print(f"demo world '{args.size}' (seed {args.seed}) -> {args.out} in {elapsed:.1f} s")
    print(f"  nuScenes: {nus['scenes']} scenes, {nus['keyframes']} keyframes, "
          f"points/scan {json.dumps(nus['points_per_scan'])}")
    print(f"  SemanticKITTI: {kitti['sequences']} sequences, {kitti['frames']} frames, "
          f"points/scan {json.dumps(kitti['points_per_scan'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
