"""Benchmark 5: pipeline overheads: a no-op `dvc repro`, the demo from a fresh clone, the test suite.

No-op `dvc repro` (target <= 3 s): needs a finished workspace. The bench makes one in a scratch
`git clone` of the repository (its committed state): the chain runs in process on the small
demo world (`tests/chain_runner.py`, as the tests run it), `dvc commit --force` records it in
dvc.lock, and `dvc repro` is then timed; every run must report the pipeline up to date and run
no stage, or the figure is refused. A no-op costs DVC's reading of dvc.yaml, params and the
state of every dep and out (hashes are cached by inode, size and mtime), so it depends on the
number of stages and files, not on their sizes.

The demo end to end from a fresh clone (target <= 10 minutes) and the test suite's wall time
take longer than the whole bench may: they run only with `--fresh-clone` / `--test-suite`
(`bash scripts/demo.sh` / `bash scripts/test.sh` in a new clone, which installs its own .venv),
once each. Each measured figure is kept in `<out>/last_overheads.json` with its date and commit;
a later run without the flag reports that record, marked as not re-measured.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import REPO, Check, Fact, Row, Section, Target, Timing, measure

LAST_FIGURES = "last_overheads.json"
SMALL_CHAIN = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
               "from chain_runner import run_chain, small_params; run_chain(Path('.'), small_params())")


def _env(clone: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def fresh_clone(target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    return target


def commit_id() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()


def noop_row(scratch: Path, runs: int) -> Row:
    clone = fresh_clone(scratch / "noop-clone")
    env = _env(clone)
    dvc = str(Path(sys.executable).parent / "dvc")
    cpu = torch.device("cpu")

    def finish() -> None:
        subprocess.run([sys.executable, "-c", SMALL_CHAIN], cwd=clone, env=env, check=True, capture_output=True)
        subprocess.run([dvc, "commit", "--force", "--quiet"], cwd=clone, env=env, check=True, capture_output=True)

    (setup,) = measure([finish], 1, cpu)
    logs: list[str] = []

    def repro() -> None:
        completed = subprocess.run([dvc, "repro"], cwd=clone, env=env, capture_output=True, text=True)
        logs.append(f"exit {completed.returncode}\n{completed.stdout}{completed.stderr}")

    (timing,) = measure([repro], runs, cpu)
    bad = [log for log in logs if not log.startswith("exit 0") or "up to date" not in log or "Running stage" in log]
    check = Check("dvc repro ran no stage", not bad,
                  f"{len(logs)} runs, all up to date" if not bad else f"{len(bad)} runs were not a no-op: {bad[0][-600:]}")
    return Row(case="no-op `dvc repro` in a finished workspace (small demo world, scratch clone of HEAD)",
               ours_name="dvc repro", ours=timing, target=Target("<= 3 s", max_seconds=3.0), checks=[check],
               facts=[Fact("making the workspace: chain in process + dvc commit", setup.median, "s")])


def script_row(name: str, script: str, scratch: Path, out: Path, target: Target | None, timeout: float) -> Row:
    """Run `bash <script>` once in a fresh clone, time it, and record the figure."""
    clone = fresh_clone(scratch / f"{name}-clone")
    logs: list[str] = []

    def run_script() -> None:
        try:
            completed = subprocess.run(["bash", script], cwd=clone, env=_env(clone), capture_output=True,
                                       text=True, timeout=timeout)
            logs.append(f"exit {completed.returncode}\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
        except subprocess.TimeoutExpired:
            logs.append(f"timed out after {timeout:.0f} s")

    (timing,) = measure([run_script], 1, torch.device("cpu"))
    passed = logs[0].startswith("exit 0")
    check = Check(f"`bash {script}` succeeded", passed, "exit 0" if passed else logs[0][-800:])
    if passed:
        record_figure(out, name, timing)
    return Row(case=f"`bash {script}` in a fresh clone of HEAD (one run: it takes minutes)", ours_name=name,
               ours=timing, target=target, checks=[check])


def record_figure(out: Path, name: str, timing: Timing) -> None:
    path = out / LAST_FIGURES
    figures = json.loads(path.read_text()) if path.is_file() else {}
    figures[name] = {"seconds": list(timing.wall), "cpu": list(timing.cpu), "commit": commit_id(),
                     "date": datetime.datetime.now().isoformat(timespec="seconds")}
    path.write_text(json.dumps(figures, indent=2) + "\n")


def last_row(out: Path, name: str, script: str, flag: str, target: Target | None) -> Row:
    """The last recorded figure of an opt-in measurement, or a row saying how to measure it."""
    path = out / LAST_FIGURES
    figures = json.loads(path.read_text()) if path.is_file() else {}
    if name not in figures:
        return Row(case=f"`bash {script}` in a fresh clone", ours_name=name, ours=None, target=target,
                   skipped=f"not measured in this run and never recorded in {path}: run with {flag}")
    record = figures[name]
    timing = Timing(tuple(record["seconds"]), tuple(record["cpu"]))
    return Row(case=f"`bash {script}` in a fresh clone: LAST RECORDED {record['date']} at commit {record['commit']}, "
                    f"not re-measured in this run", ours_name=name, ours=timing, target=target)


def run(scratch: Path, out: Path, runs: int, noop: bool, fresh_clone_demo: bool, test_suite: bool) -> Section:
    section = Section("5. Pipeline overheads")
    if noop:
        section.rows.append(noop_row(scratch, runs))
    else:
        section.rows.append(Row(case="no-op `dvc repro`", ours_name="dvc repro", ours=None,
                                skipped="skipped in --quick runs"))
    demo_target = Target("<= 10 minutes", max_seconds=600.0)
    if fresh_clone_demo:
        section.rows.append(script_row("demo from a fresh clone", "scripts/demo.sh", scratch, out, demo_target, 3600))
    else:
        section.rows.append(last_row(out, "demo from a fresh clone", "scripts/demo.sh", "--fresh-clone", demo_target))
    if test_suite:
        section.rows.append(script_row("test suite", "scripts/test.sh", scratch, out, None, 3600))
    else:
        section.rows.append(last_row(out, "test suite", "scripts/test.sh", "--test-suite", None))
    section.notes.append(
        "The scratch clones hold the committed state (HEAD), not uncommitted edits of the working tree. "
        "A fresh clone's scripts install their own .venv (pip needs its index or a warm cache)."
    )
    return section
