"""Benchmark: a no-op `dvc repro` beside a nuScenes-size dataset folder, through the dataset index
against the old way (a stage depending on the whole dataset folder).

    python -m bench.dataset_index                 # >= 1 M files under /tmp, 5 runs, the old way 3 runs
    python -m bench.dataset_index --keyframes 300 --runs 2 --baseline-runs 1   # a quick look
    python -m bench --only dataset_index          # the same, inside the suite's report

The tree: `--keyframes` keyframes in the nuScenes layout with, per keyframe, trainval's
proportions (34,149 keyframes: about 1.4 M camera images, 0.4 M lidar sweeps, 1.4 M radar
files): under samples/ one LIDAR_TOP file, six camera images and five radar files; under sweeps/
10 lidar sweeps, 6 per camera and 7 per radar; one lidarseg label. 94 empty files per keyframe:
11,000 keyframes make 1.03 M files. Minimal tables (v1.0-bench/*.json and splits.json, the
keyframes only, as nuscenes-devkit needs them) list every keyframe, in 40-keyframe scenes.

Two scratch DVC projects (git + dvc init) with `dataset.root` at the tree:
- ours: the project's `dataset_index` stage as dvc.yaml has it (the project's code copied in,
  and the small demo world in data/demo, as a real-data workspace has it), and one cheap stage
  depending on cache/dataset_index/points.json;
- the old way: one cheap stage depending on `${dataset.root}`, as the scan-reading stages did.
Each runs `dvc repro` once (timed: the first run builds the index, or hashes the whole tree),
then the no-op `dvc repro` is timed (median of the runs); every no-op must run no stage. Then
sweep and radar files are added and ours' no-op must still run nothing. The tree and the
projects are deleted at the end (`--keep` keeps them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import REPO, Check, Fact, Row, Section, Target, measure
from pipeline.demo_world import DemoWorldConfig, write_demo_world
from pipeline.demo_world.classes import NUSCENES_LIDARSEG_CATEGORIES

VERSION = "v1.0-bench"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
RADARS = ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT")
LIDAR_SWEEPS, CAMERA_SWEEPS, RADAR_SWEEPS = 10, 6, 7  # per keyframe, per sensor
FILES_PER_KEYFRAME = 1 + len(CAMERAS) + len(RADARS) + LIDAR_SWEEPS + CAMERA_SWEEPS * len(CAMERAS) \
    + RADAR_SWEEPS * len(RADARS) + 1
KEYFRAMES_PER_SCENE = 40
DEFAULT_KEYFRAMES = 11_000
LISTED_PER_KEYFRAME = 1 + 1 + len(CAMERAS)  # what the index stats: lidar, label, six images


def _touch(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _name(scene: int, channel: str, stamp: int, extension: str) -> str:
    return f"bench-{scene:05d}__{channel}__{stamp}.{extension}"


def build_tree(root: Path, keyframes: int) -> int:
    """Write the nuScenes-layout tree and its tables under `root`; returns the number of files."""
    folders = [f"samples/{c}" for c in ("LIDAR_TOP", *CAMERAS, *RADARS)] + \
              [f"sweeps/{c}" for c in ("LIDAR_TOP", *CAMERAS, *RADARS)] + [f"lidarseg/{VERSION}", VERSION, "maps"]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    channels = ("LIDAR_TOP", *CAMERAS)
    tables: dict[str, list] = {name: [] for name in (
        "attribute", "visibility", "instance", "sample_annotation", "ego_pose", "scene", "sample", "sample_data",
        "lidarseg")}
    tables["category"] = [{"token": f"category-{i}", "name": name, "description": "", "index": i}
                          for i, name in enumerate(NUSCENES_LIDARSEG_CATEGORIES)]
    tables["sensor"] = [{"token": f"sensor-{c}", "channel": c, "modality": "lidar" if c == "LIDAR_TOP" else "camera"}
                        for c in channels]
    tables["calibrated_sensor"] = [
        {"token": f"calibration-{c}", "sensor_token": f"sensor-{c}", "translation": [0.0, 0.0, 1.8],
         "rotation": [1.0, 0.0, 0.0, 0.0],
         "camera_intrinsic": [] if c == "LIDAR_TOP" else [[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]]}
        for c in channels]
    tables["log"] = [{"token": "log-0", "logfile": "bench", "vehicle": "bench", "date_captured": "2024-01-01",
                      "location": "bench"}]
    tables["map"] = [{"token": "map-0", "log_tokens": ["log-0"], "category": "semantic_prior",
                      "filename": "maps/map-0.png"}]
    _touch(root / "maps" / "map-0.png")
    count = 1
    scenes = (keyframes + KEYFRAMES_PER_SCENE - 1) // KEYFRAMES_PER_SCENE
    for scene in range(scenes):
        in_scene = range(scene * KEYFRAMES_PER_SCENE, min((scene + 1) * KEYFRAMES_PER_SCENE, keyframes))
        samples = [f"sample-{k:08d}" for k in in_scene]
        for position, k in enumerate(in_scene):
            stamp = 1_500_000_000_000_000 + k * 500_000
            tables["sample"].append({"token": samples[position], "timestamp": stamp, "scene_token": f"scene-{scene}",
                                     "prev": samples[position - 1] if position else "",
                                     "next": samples[position + 1] if position + 1 < len(samples) else ""})
            for channel in channels:
                token = f"sd-{channel}-{k:08d}"
                extension = "pcd.bin" if channel == "LIDAR_TOP" else "jpg"
                filename = f"samples/{channel}/{_name(scene, channel, stamp, extension)}"
                _touch(root / filename)
                count += 1
                tables["ego_pose"].append({"token": token, "timestamp": stamp, "rotation": [1.0, 0.0, 0.0, 0.0],
                                           "translation": [float(k), 0.0, 0.0]})
                tables["sample_data"].append({
                    "token": token, "sample_token": samples[position], "ego_pose_token": token,
                    "calibrated_sensor_token": f"calibration-{channel}", "timestamp": stamp,
                    "fileformat": "pcd" if channel == "LIDAR_TOP" else "jpg", "is_key_frame": True,
                    "height": 0 if channel == "LIDAR_TOP" else 900, "width": 0 if channel == "LIDAR_TOP" else 1600,
                    "filename": filename, "prev": "", "next": ""})
            lidar = f"sd-LIDAR_TOP-{k:08d}"
            label = f"lidarseg/{VERSION}/{lidar}_lidarseg.bin"
            _touch(root / label)
            tables["lidarseg"].append({"token": lidar, "sample_data_token": lidar, "filename": label})
            for radar in RADARS:
                _touch(root / "samples" / radar / _name(scene, radar, stamp, "pcd"))
            sweeps = [("LIDAR_TOP", LIDAR_SWEEPS, "pcd.bin")] + [(c, CAMERA_SWEEPS, "jpg") for c in CAMERAS] + \
                     [(r, RADAR_SWEEPS, "pcd") for r in RADARS]
            for channel, n, extension in sweeps:
                for i in range(1, n + 1):
                    _touch(root / "sweeps" / channel / _name(scene, channel, stamp + i * 1000, extension))
            count += 1 + len(RADARS) + sum(n for _, n, _ in sweeps)
        tables["scene"].append({"token": f"scene-{scene}", "log_token": "log-0", "nbr_samples": len(samples),
                                "first_sample_token": samples[0], "last_sample_token": samples[-1],
                                "name": f"scene-{scene:05d}", "description": ""})
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows))
    names = [f"scene-{s:05d}" for s in range(scenes)]
    val = max(1, scenes // 6)
    (root / "splits.json").write_text(json.dumps({"train": names[:-val] or names, "val": names[-val:]}))
    return count + len(tables) + 1


def _environment() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def _project(folder: Path, stages: dict, params: dict, with_code: bool) -> Path:
    folder.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    if with_code:
        for package in ("pipeline", "stages"):
            shutil.copytree(REPO / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=folder, check=True,
                   env=_environment())
    return folder


def make_projects(scratch: Path, dataset_root: Path) -> tuple[Path, Path]:
    """(ours, the old way): scratch DVC projects whose dataset.root is `dataset_root`."""
    from pipeline.config import SHARED_SECTIONS

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {name: value for name, value in params.items() if name in SHARED_SECTIONS}
    params["dataset"] = {"format": "nuscenes", "root": str(dataset_root), "version": VERSION,
                         "distill_split": "train", "eval_split": "val"}
    params["distill_datasets"] = {}
    index_stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["dataset_index"]
    ours = {"dataset_index": index_stage,
            "consumer": {"cmd": "wc -c cache/dataset_index/points.json > consumer.txt",
                         "deps": ["cache/dataset_index/points.json"], "outs": ["consumer.txt"]}}
    old = {"old_way": {"cmd": "echo read > old.txt", "deps": ["${dataset.root}"], "params": ["dataset"],
                       "outs": ["old.txt"]}}
    ours_project = _project(scratch / "ours", ours, params, with_code=True)
    # a real-data workspace has the small demo world too (the demo_world stage runs in every
    # preset), and the index stage depends on it
    write_demo_world(ours_project / "data" / "demo", DemoWorldConfig.preset("small", seed=0))
    return ours_project, _project(scratch / "old", old, {"dataset": params["dataset"]}, with_code=False)


def _repro(folder: Path, logs: list[str]) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=folder, env=_environment(),
                          capture_output=True, text=True)
    logs.append(f"exit {done.returncode}\n{done.stdout}{done.stderr}")


def _noop_check(name: str, logs: list[str]) -> Check:
    bad = [log for log in logs if not log.startswith("exit 0") or "Running stage" in log]
    return Check(name, not bad, f"{len(logs)} runs, none ran a stage" if not bad else bad[0][-800:])


def free_inodes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_favail


def run(scratch: Path, keyframes: int, runs: int, baseline_runs: int, keep: bool = False) -> Section:
    import torch

    cpu = torch.device("cpu")
    section = Section("Dataset index: no-op `dvc repro` beside a nuScenes-size dataset folder")
    needed = keyframes * FILES_PER_KEYFRAME + 10_000
    if free_inodes(scratch) < 2 * needed:
        section.rows.append(Row(case="no-op `dvc repro`", ours_name="dataset_index", ours=None,
                                skipped=f"{scratch}: {free_inodes(scratch):,} free inodes, want {2 * needed:,}"))
        return section
    work = Path(tempfile.mkdtemp(prefix="bench-dataset-index-", dir=scratch))
    try:
        tree = work / "nuscenes"
        began = time.perf_counter()
        files = build_tree(tree, keyframes)
        built = time.perf_counter() - began
        print(f"[bench] dataset_index: {files:,} files written in {built:.0f} s", flush=True)
        ours, old = make_projects(work, tree)

        first_logs: list[str] = []
        (ours_first,) = measure([lambda: _repro(ours, first_logs)], 1, cpu)
        index_ok = first_logs[0].startswith("exit 0")
        points = json.loads((ours / "cache/dataset_index/points.json").read_text()) if index_ok else {}
        scans = sum(len(entry["files"]) for entry in points.values())
        print(f"[bench] dataset_index: first repro (index of {scans:,} scans) {ours_first.median:.1f} s", flush=True)
        ours_logs: list[str] = []
        (ours_noop,) = measure([lambda: _repro(ours, ours_logs)], runs, cpu)
        print(f"[bench] dataset_index: no-op repro {ours_noop.describe()}", flush=True)

        old_checks, old_noop, old_facts = [], None, []
        if baseline_runs:  # the old way: minutes (DVC walks and hashes the whole tree)
            old_first_logs: list[str] = []
            (old_first,) = measure([lambda: _repro(old, old_first_logs)], 1, cpu)
            print(f"[bench] dataset_index: the old way's first repro {old_first.median:.0f} s", flush=True)
            old_logs: list[str] = []
            (old_noop,) = measure([lambda: _repro(old, old_logs)], baseline_runs, cpu)
            print(f"[bench] dataset_index: the old way's no-op repro {old_noop.describe()}", flush=True)
            old_checks = [Check("the old way's first repro ran", old_first_logs[0].startswith("exit 0"),
                                "exit 0" if old_first_logs[0].startswith("exit 0") else old_first_logs[0][-800:]),
                          _noop_check("every no-op `dvc repro` of the old way ran no stage", old_logs)]
            old_facts = [Fact("the old way: first `dvc repro` (DVC hashes every file of the folder)",
                              old_first.median, "s")]

        for channel in ("LIDAR_TOP", "CAM_FRONT", "RADAR_FRONT"):  # files no stage reads
            for i in range(500):
                _touch(tree / "sweeps" / channel / _name(99_999, channel, i, "new"))
        added_logs: list[str] = []
        _repro(ours, added_logs)

        checks = [
            Check("the first repro built the index", index_ok and scans == keyframes,
                  f"{scans:,} scans indexed of {keyframes:,}" if index_ok else first_logs[0][-800:]),
            _noop_check("every no-op `dvc repro` of ours ran no stage", ours_logs),
            _noop_check("after adding 1,500 sweep and radar files, ours ran no stage", added_logs),
            *old_checks,
        ]
        section.rows.append(Row(
            case=f"no-op `dvc repro`, {files:,} files in the dataset folder ({keyframes:,} keyframes)",
            ours_name="dataset_index + 1 stage on its points.json", ours=ours_noop,
            baseline_name="1 stage depending on ${dataset.root}" if old_noop else "", baseline=old_noop,
            target=Target("<= 3 s", max_seconds=3.0), checks=checks,
            facts=[Fact("files in the dataset folder", files, "files"),
                   Fact("files the index lists (lidar, label, 6 images per keyframe)", keyframes * LISTED_PER_KEYFRAME,
                        "files"),
                   Fact("writing the tree", built, "s"),
                   Fact("ours: first `dvc repro` (devkit loads the tables, stats the listed files)", ours_first.median,
                        "s"),
                   *old_facts]))
        section.notes.append(
            "Ours: DVC checks the stage's code, params and the tables folder (v1.0-bench, hashed once, then known by "
            "inode, size and mtime) and the index; the dataset's files are stat-ed only when the index stage runs. "
            "The bench tables list keyframes only (nuScenes' also list the sweeps, so they are larger: DVC hashes "
            "them once); a no-op does not read them either way. The old way walks and checks every file of the "
            "folder at every `dvc repro` and `dvc status`. Files are empty: DVC's per-file cost, not hashing bytes, "
            "is measured.")
    finally:
        if keep:
            print(f"[bench] dataset_index: kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keyframes", type=int, default=DEFAULT_KEYFRAMES,
                        help=f"keyframes in the tree, {FILES_PER_KEYFRAME} files each (default {DEFAULT_KEYFRAMES})")
    parser.add_argument("--runs", type=int, default=5, help="no-op runs of ours (default 5)")
    parser.add_argument("--baseline-runs", type=int, default=3,
                        help="no-op runs of the old way (default 3; 0 skips it: its first run hashes the tree)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp"), help="where the tree is written (default /tmp)")
    parser.add_argument("--out", type=Path, default=REPO / "tmp" / "bench-dataset-index", help="report folder")
    parser.add_argument("--keep", action="store_true", help="keep the tree and the projects")
    args = parser.parse_args(argv)
    from bench.common import environment
    from bench.report import Report

    report = Report(command="python -m bench.dataset_index " + " ".join(argv if argv is not None else sys.argv[1:]),
                    started=datetime.datetime.now().isoformat(timespec="seconds"), environment=environment(),
                    settings={"keyframes": str(args.keyframes), "runs": str(args.runs),
                              "baseline_runs": str(args.baseline_runs)})
    began = time.perf_counter()
    report.sections.append(run(args.scratch, args.keyframes, args.runs, args.baseline_runs, args.keep))
    report.wall_seconds = report.sections[0].seconds = time.perf_counter() - began
    json_path, md_path = report.write(args.out)
    print(f"[bench] wrote {md_path} and {json_path}")
    return 1 if report.failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
