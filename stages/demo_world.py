"""Stage demo_world: generate the synthetic demo world (nuScenes and SemanticKITTI formats).

    python -m stages.demo_world

Writes data/demo/{nuscenes,semantic_kitti}, a summary.json and one preview picture per
format (points coloured by class over the cameras, and a bird's-eye view).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets.nuscenes import NuScenesReader
from pipeline.datasets.semantic_kitti import SemanticKittiReader
from pipeline.demo_world import write_demo_world
from pipeline.viz import save_scan_preview
from stages.common import (
    DEMO_ROOT,
    human_size,
    log,
    run_command,
    stage_arguments,
    start_stage,
    summary,
)


def write_previews(root: Path) -> list[Path]:
    """One picture per format, drawn through the project's own readers and projection."""
    nuscenes = NuScenesReader(root / "nuscenes", "v1.0-demo", "val")
    kitti = SemanticKittiReader(root / "semantic_kitti", "val")
    return [
        save_scan_preview(nuscenes.read(nuscenes.scan_ids[0]), nuscenes.label_map.classes,
                          root / "preview_nuscenes.png", title="demo world, nuScenes format"),
        save_scan_preview(kitti.read(kitti.scan_ids[0]), kitti.label_map.classes,
                          root / "preview_semantic_kitti.png", title="demo world, SemanticKITTI format"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("--out", type=Path, default=DEMO_ROOT)
    args = parser.parse_args(argv)
    params = start_stage("demo_world", args)
    with summary("demo_world") as facts:
        config = params.demo_world.world()
        world = write_demo_world(args.out, config)
        previews = write_previews(args.out)
        log.info("world: %s", json.dumps(world, sort_keys=True)[:600])
        facts["wrote"] = f"{args.out} ({human_size(args.out)})"
        facts["previews"] = ", ".join(str(p) for p in previews)


if __name__ == "__main__":
    run_command(main)
