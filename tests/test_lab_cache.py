"""Working as a lab (README): clones that share a DVC cache, or a remote, restore each
other's stages from the run cache instead of recomputing them.

The first clone runs the small chain once (about a minute of CPU); every other clone must
then restore what it asks for without running a stage command. dvc's report is checked,
and independently a tripwire `python` first on PATH fails any stage command that runs.
"""

from __future__ import annotations

import filecmp
import grp
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from chain_runner import dvc_ok, run_dvc, scratch_clone, small_params, stage_tripwire


@dataclass(frozen=True)
class Lab:
    root: Path
    shared_cache: Path
    first: Path  # the clone that computed everything
    stages: frozenset[str]  # every stage of dvc.yaml, foreach stages expanded


def use_shared_cache(clone: Path, cache: Path) -> None:
    """README, "A shared cache directory": machine-specific settings go to .dvc/config.local."""
    dvc_ok(clone, "cache", "dir", "--local", str(cache))
    dvc_ok(clone, "config", "--local", "cache.shared", "group")
    dvc_ok(clone, "config", "--local", "cache.type", "symlink,hardlink,copy")


def stage_report(output: str) -> dict[str, set[str]]:
    """Stage names by what `dvc repro` says it did with them."""
    report = {"ran": set(), "restored": set(), "unchanged": set()}
    for line in output.splitlines():
        if line.startswith("Running stage '"):
            report["ran"].add(line.split("'")[1])
        elif line.startswith("Stage '") and "is cached - skipping run" in line:
            report["restored"].add(line.split("'")[1])
        elif line.startswith("Stage '") and "didn't change" in line:
            report["unchanged"].add(line.split("'")[1])
    return report


def repro_without_running(clone: Path, tripwire: Path, *args: str) -> dict[str, set[str]]:
    """`dvc repro <args>` with the tripwire first on PATH; fails the test if a stage ran."""
    folder, log = stage_tripwire(tripwire)
    result = run_dvc(clone, "repro", *args, path_first=folder)
    ran = log.read_text() if log.exists() else ""
    assert result.returncode == 0 and not ran, f"a stage ran: {ran}\n{result.stdout}\n{result.stderr}"
    report = stage_report(result.stdout)
    assert not report["ran"], result.stdout
    return report


def stages_with_uncached_outputs(clone: Path) -> set[str]:
    """Stages of dvc.yaml with an output marked `cache: false` (a remote never receives those)."""
    found = set()
    for name, stage in yaml.safe_load((clone / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        for entry in (e for kind in ("outs", "metrics", "plots") for e in body.get(kind, [])):
            if isinstance(entry, dict) and any(isinstance(v, dict) and v.get("cache") is False for v in entry.values()):
                found.add(name)
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    root = tmp_path_factory.mktemp("lab")
    shared_cache = root / "shared-cache"
    shared_cache.mkdir()
    # what an admin does once: the lab's group owns the cache, and new folders inherit it
    subprocess.run(["chgrp", grp.getgrgid(os.getgid()).gr_name, str(shared_cache)], check=True)
    shared_cache.chmod(0o2775)
    first = scratch_clone(root / "first", small_params())
    use_shared_cache(first, shared_cache)
    stages = frozenset(dvc_ok(first, "stage", "list", "--name-only").split())
    report = stage_report(dvc_ok(first, "repro"))
    assert report["ran"] == stages, report
    return Lab(root, shared_cache, first, stages)


def test_second_clone_on_the_shared_cache_restores_every_stage(lab):
    second = scratch_clone(lab.root / "second", small_params())
    use_shared_cache(second, lab.shared_cache)
    report = repro_without_running(second, lab.root / "tripwire-second")
    assert report["restored"] == lab.stages
    assert dvc_ok(second, "status", "dvc.yaml").strip() == "Data and pipelines are up to date."
    # the outputs are links into the one shared copy, not copies
    model = second / "cache/student/model.safetensors"
    assert model.is_symlink() and model.resolve().is_relative_to(lab.shared_cache.resolve())
    assert filecmp.cmp(second / "metrics/metrics.json", lab.first / "metrics/metrics.json", shallow=False)
    # cache.shared group: folders group-writable and setgid, objects read-only for everyone
    folders = [p for p in lab.shared_cache.rglob("*") if p.is_dir()]
    assert folders and all(p.stat().st_mode & (stat.S_ISGID | stat.S_IWGRP) == stat.S_ISGID | stat.S_IWGRP
                           for p in folders)
    assert stat.S_IMODE(model.resolve().stat().st_mode) == 0o444


def test_clones_with_their_own_cache_restore_from_a_remote(lab):
    """`dvc push --run-cache` in the first clone. A clone with its own cache and no dvc.lock
    fetches the run cache, and `dvc repro --pull` downloads the outputs of the stages it
    restores; a clone with the first's dvc.lock (as `git pull` brings it) `dvc pull`s them.

    The first path goes up to point_features. A remote never receives `cache: false`
    outputs, so stages with one would rerun in a clone that only has the remote; dvc.yaml
    has none (README, "A remote"), so the fourth clone's pull leaves nothing to rerun.
    """
    remote = lab.root / "remote"
    dvc_ok(lab.first, "remote", "add", "--local", "--default", "lab", str(remote))
    dvc_ok(lab.first, "push", "--run-cache")

    third = scratch_clone(lab.root / "third", small_params())
    dvc_ok(third, "remote", "add", "--local", "--default", "lab", str(remote))
    dvc_ok(third, "fetch", "--run-cache")
    report = repro_without_running(third, lab.root / "tripwire-third", "--pull", "point_features")
    assert report["restored"] == {"demo_world", "dataset_index", "assignments", "teacher_features",
                                  "extra_teacher_features", "distill", "point_features"}
    model = third / "cache/student/model.safetensors"
    assert not model.resolve().is_relative_to(lab.shared_cache.resolve())
    assert filecmp.cmp(model, lab.first / "cache/student/model.safetensors", shallow=False)

    fourth = scratch_clone(lab.root / "fourth", small_params())
    shutil.copy(lab.first / "dvc.lock", fourth / "dvc.lock")
    dvc_ok(fourth, "remote", "add", "--local", "--default", "lab", str(remote))
    dvc_ok(fourth, "pull", "--run-cache")
    changed = set(json.loads(dvc_ok(fourth, "status", "dvc.yaml", "--json") or "{}"))
    assert changed <= stages_with_uncached_outputs(fourth), changed
    assert filecmp.cmp(fourth / "cache/student/model.safetensors", lab.first / "cache/student/model.safetensors",
                       shallow=False)
