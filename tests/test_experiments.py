"""`dvc exp` (README, "Sweeping params: dvc exp"): a queued two-point sweep on the small world.

Queued experiments run in temporary git workspaces under .dvc/tmp/exps, each checked out from
the committed project and the DVC cache. Each must find everything it needs there, write
nothing the next one sees beyond the DVC cache, and record its metrics so that
`dvc exp show --json` reads them back. The sweep is `label.method`: only `label` and
`evaluate` rerun, so it costs seconds after the one `dvc repro` (about a minute of CPU).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from chain_runner import dvc_ok, run_dvc, scratch_clone, small_params

GIT_USER = ["-c", "user.name=igloss-test", "-c", "user.email=igloss-test@example.org"]


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_USER, *args], cwd=folder, check=True, capture_output=True,
                          text=True).stdout


def git_changes(folder: Path) -> list[str]:
    return git(folder, "status", "--porcelain").splitlines()


def wait_for_queue(folder: Path, timeout_s: float = 900) -> str:
    """`dvc queue status` until no experiment is queued or running; returns the last report."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = dvc_ok(folder, "queue", "status")
        tasks = [line for line in report.splitlines() if line.split()[-1:] in (["Queued"], ["Running"])]
        if not tasks:
            return report
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout_s} s:\n{report}"
        time.sleep(2)


def without_nulls(metrics: dict) -> dict:
    """metrics.json as `dvc exp show --json` gives it back: DVC drops the null values (the IoU
    of a class absent from the split)."""
    return {key: without_nulls(value) if isinstance(value, dict) else value
            for key, value in metrics.items() if value is not None}


def experiments(show: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> {"params": params.yaml, "metrics": metrics.json}."""
    found = {}
    for row in show:
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": data["metrics"]["metrics/metrics.json"]["data"],
                }
    return found


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    """A scratch clone, committed, after `dvc repro` and a queued sweep of `label.method`."""
    clone = scratch_clone(tmp_path_factory.mktemp("exp") / "project", small_params())
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["label"]["method"] == "logistic"
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "the project on the small world")
    start = time.monotonic()
    dvc_ok(clone, "repro")
    repro_s = time.monotonic() - start
    # a run leaves nothing for git but its dvc.lock (autostaged): every output is git-ignored
    after_repro = git_changes(clone)
    baseline = json.loads((clone / "metrics/metrics.json").read_text())
    git(clone, "commit", "-q", "-m", "dvc.lock of the small world")

    start = time.monotonic()
    dvc_ok(clone, "exp", "run", "--queue", "-S", "label.method=nearest_prototype", "-n", "nearest")
    dvc_ok(clone, "exp", "run", "--queue", "-S", "label.method=logistic", "-n", "logistic")
    dvc_ok(clone, "queue", "start", "-j", "1")
    queue = wait_for_queue(clone)
    sweep_s = time.monotonic() - start
    print(f"dvc repro {repro_s:.0f} s, two queued experiments {sweep_s:.0f} s")
    return {"clone": clone, "after_repro": after_repro, "baseline": baseline, "queue": queue,
            "show": json.loads(dvc_ok(clone, "exp", "show", "--json"))}


def test_a_run_leaves_git_clean_but_for_dvc_lock(swept):
    assert swept["after_repro"] == ["A  dvc.lock"], swept["after_repro"]


def test_queued_sweep_runs_both_points_and_records_their_metrics(swept):
    clone = swept["clone"]
    lines = {line.split()[1]: line.split()[-1] for line in swept["queue"].splitlines()[1:] if len(line.split()) >= 4}
    assert lines.get("nearest") == "Success" and lines.get("logistic") == "Success", swept["queue"]
    found = experiments(swept["show"])
    assert found["nearest"]["params"]["label"]["method"] == "nearest_prototype"
    assert found["logistic"]["params"]["label"]["method"] == "logistic"
    # the committed params, run again as an experiment, give what `dvc repro` gave by hand
    assert found["logistic"]["metrics"] == without_nulls(swept["baseline"])
    # the other classifier labels differently: the 2D baseline's labels on the same features change
    nearest, logistic = found["nearest"]["metrics"], found["logistic"]["metrics"]
    assert nearest["2d_baseline"]["num_points"] == logistic["2d_baseline"]["num_points"]
    assert nearest != logistic
    # label, evaluate (and any stage reading label.method) ran in the experiment's workspace;
    # the prototypes and the 3D side came from the cache
    log = dvc_ok(clone, "queue", "logs", "nearest")
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}
    assert {"label", "evaluate"} <= ran, log
    assert not ran & {"demo_world", "dataset_index", "template_features", "assignments", "teacher_features",
                      "distill", "point_features"}, log
    assert not [name for name in ran if name.startswith("prototypes")], log
    # the experiments' temporary workspaces are gone, and the clone's git state is untouched
    assert git_changes(clone) == []
    assert not [p for p in (clone / ".dvc/tmp/exps").glob("tmp*") if p.is_dir()]


def test_diff_apply_and_branch(swept):
    clone = swept["clone"]
    found = experiments(swept["show"])
    diff = json.loads(dvc_ok(clone, "exp", "diff", "logistic", "nearest", "--json"))
    method = diff["params"]["params.yaml"]["label.method"]
    assert (method["old"], method["new"]) == ("logistic", "nearest_prototype")
    assert "metrics/metrics.json" in diff["metrics"]
    dvc_ok(clone, "exp", "show", "--only-changed", "--no-pager")
    dvc_ok(clone, "exp", "apply", "nearest")
    assert yaml.safe_load((clone / "params.yaml").read_text())["label"]["method"] == "nearest_prototype"
    assert without_nulls(json.loads((clone / "metrics/metrics.json").read_text())) == found["nearest"]["metrics"]
    dvc_ok(clone, "exp", "branch", "nearest", "label-nearest")
    assert "label-nearest" in git(clone, "branch", "--list", "label-nearest")
    # the applied experiment is up to date: nothing to rerun
    assert json.loads(run_dvc(clone, "status", "dvc.yaml", "--json").stdout or "{}") == {}
