"""Generate the whole demo world (both formats) atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from .config import DemoWorldConfig
from .kitti_writer import write_semantic_kitti
from .nuscenes_writer import write_nuscenes

log = logging.getLogger(__name__)


def write_demo_world(out_dir: Path, config: DemoWorldConfig, *, show_progress: bool = True) -> dict:
    """Write <out_dir>/nuscenes, <out_dir>/semantic_kitti and <out_dir>/summary.json.

    Everything is generated into a temporary sibling directory that replaces `out_dir`
    only once complete, so an interrupted run never leaves a partial world behind. The
    output is a pure function of `config`: the same config gives byte-identical files.
    Returns the summary (also written to summary.json).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    start = time.perf_counter()
    frames = config.nuscenes_scenes * config.keyframes_per_scene + config.kitti_sequences * config.kitti_frames_per_sequence
    try:
        with tqdm(total=frames, desc="demo world", unit="frame", disable=not show_progress) as progress:
            nuscenes = write_nuscenes(tmp / "nuscenes", config, progress)
            kitti = write_semantic_kitti(tmp / "semantic_kitti", config, progress)
        summary = {"seed": config.seed, "size": config.size, "nuscenes": nuscenes, "semantic_kitti": kitti}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "demo world (%s, seed %d) written to %s in %.1f s: %d nuScenes keyframes, %d SemanticKITTI frames",
        config.size, config.seed, out_dir, time.perf_counter() - start, nuscenes["keyframes"], kitti["frames"],
    )
    return summary
