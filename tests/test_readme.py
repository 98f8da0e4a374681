"""The README cannot drift from the code: every command it shows is run, or says where it is.

Every line of the README's ```bash blocks is a command (comments stripped, `\\` continuations
joined). `README_COMMANDS` below accounts for each one, in README order:

* `Run`: executed here, in that order, in a scratch clone of the project on the small demo
  world (`bash scripts/demo.sh` first: the README's main command, on the small world). It
  must exit 0 and, where given, print what it should.
* `CoveredBy`: run by another test; the test file is named and must contain the given
  fragments of the command (so renaming the command there, or here, fails this test).
* `NotHere`: cannot run on this machine (a CUDA index, a cloud remote, the full benchmark);
  the reason is the documentation.

A README command missing from the table, or a table entry no longer in the README, fails
`test_every_readme_command_is_accounted_for`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain_runner import REPO, scratch_clone, small_params


@dataclass(frozen=True)
class Run:
    expect: tuple[str, ...] = ()  # fragments of its output (stdout and stderr together)


@dataclass(frozen=True)
class CoveredBy:
    test_file: str
    fragments: tuple[str, ...]


@dataclass(frozen=True)
class NotHere:
    reason: str


LAB = "tests/test_lab_cache.py"
EXP = "tests/test_experiments.py"
README_COMMANDS: dict[str, Run | CoveredBy | NotHere] = {
    # The two commands
    "bash scripts/demo.sh": Run(("== metrics (metrics/metrics.json) ==", "3D student, all points")),
    "bash scripts/test.sh": NotHere("it is the command running this test suite (CI runs it)"),
    # The chain: several teachers
    "python -m stages.preset two-teachers && dvc repro": NotHere(
        "the demo with two teachers: about 15 minutes of CPU; tests/test_teachers.py runs the same chain, "
        "two teachers into one student, on the small world"),
    "python scripts/teachers_table.py": NotHere(
        "needs that finished two-teacher run; tests/test_teachers.py labels with every fusion option and the "
        "swapped capability vectors on the small world"),
    # Working with the pipeline
    "source .venv/bin/activate": Run(),
    "dvc repro": Run(("Data and pipelines are up to date.",)),
    "dvc repro label": Run(),
    "python -m stages.distill --verbose": Run(("[distill] done in",)),
    "dvc dag": Run(("demo_world", "point_features", "evaluate")),
    "dvc metrics show": Run(("metrics/metrics.json",)),
    "dvc plots show": Run(("dvc_plots/index.html",)),
    "python -m stages.report": Run(("miou", "3D student, all points")),
    # Change the vocabulary
    "dvc repro capability": Run(("capability",)),
    # Queries
    "python -m stages.query car": Run(("'car'", "plots/query/car.png")),
    "python -m stages.query car bus --top-k 300": Run(("plots/query/car+bus.png", "top 300 per name")),
    "python -m stages.query pedestrian --absolute --threshold 0.8": Run(("absolute score > 0.8",)),
    # Sweeping params: dvc exp
    "dvc exp run --queue -S label.method=nearest_prototype -n nearest": CoveredBy(
        EXP, ('"exp", "run", "--queue", "-S", "label.method=nearest_prototype", "-n", "nearest"',)),
    "dvc exp run --queue -S label.method=logistic -n logistic": CoveredBy(
        EXP, ('"exp", "run", "--queue", "-S", "label.method=logistic", "-n", "logistic"',)),
    "dvc queue start -j 1": CoveredBy(EXP, ('"queue", "start", "-j", "1"',)),
    "dvc queue status": CoveredBy(EXP, ('"queue", "status"',)),
    "dvc exp show --only-changed": CoveredBy(EXP, ('"exp", "show", "--only-changed"',)),
    "dvc exp diff logistic nearest": CoveredBy(EXP, ('"exp", "diff", "logistic", "nearest"',)),
    "dvc exp apply nearest": CoveredBy(EXP, ('"exp", "apply", "nearest"',)),
    "dvc exp branch nearest label-nearest": CoveredBy(EXP, ('"exp", "branch", "nearest", "label-nearest"',)),
    # Segmenters trained on labels
    "dvc repro segmenters/dvc.yaml": CoveredBy("tests/test_dvc_pipeline.py", ('"repro", "segmenters/dvc.yaml"',)),
    # Run on real data
    "python -m stages.preset": Run(("nuscenes-mini", "semantic_kitti")),
    "python -m stages.preset nuscenes": Run(("params.yaml is now presets/nuscenes.yaml",)),
    "python -m stages.preset demo": Run(("params.yaml is now presets/demo.yaml",)),
    "dvc repro -f -s dataset_index && dvc repro": CoveredBy(
        "tests/test_dataset_index.py", ('"repro", "-f", "-s", "dataset_index"',)),
    # Working as a lab
    "torchrun --standalone --nproc_per_node=2 -m stages.point_features": CoveredBy(
        "tests/test_sharding.py", ('"--standalone", "--nproc_per_node=2"', '"point_features"')),
    "mkdir -p /lab/dvc-cache": CoveredBy(LAB, ("shared_cache.mkdir",)),
    "chgrp igloss /lab/dvc-cache": CoveredBy(LAB, ('"chgrp"',)),
    "chmod 2775 /lab/dvc-cache": CoveredBy(LAB, ("chmod(0o2775)",)),
    "dvc cache dir --local /lab/dvc-cache": CoveredBy(LAB, ('"cache", "dir", "--local"',)),
    "dvc config --local cache.shared group": CoveredBy(LAB, ('"config", "--local", "cache.shared", "group"',)),
    "dvc config --local cache.type symlink,hardlink,copy": CoveredBy(
        LAB, ('"config", "--local", "cache.type", "symlink,hardlink,copy"',)),
    "dvc remote add --default lab /lab/dvc-remote": CoveredBy(LAB, ('"remote", "add", "--local", "--default", "lab"',)),
    "dvc remote add --default lab s3://lab-bucket/igloss": NotHere("an S3 bucket: configuration only"),
    "dvc remote add --default lab ssh://storage.example.org/srv/dvc/igloss": NotHere("an SSH host: configuration only"),
    "dvc remote modify --local lab user alice": NotHere("credentials of a real remote"),
    "dvc push --run-cache": CoveredBy(LAB, ('"push", "--run-cache"',)),
    "git pull && dvc pull --run-cache": CoveredBy(LAB, ('"pull", "--run-cache"',)),
    "dvc fetch --run-cache && dvc repro --pull": CoveredBy(LAB, ('"fetch", "--run-cache"', '"--pull"')),
    # Benchmarks
    "python -m bench --quick": CoveredBy("tests/test_bench.py", ('"--quick"',)),
    # Install details
    "python3 -m venv .venv && .venv/bin/pip install torch==<version> --index-url <your CUDA index>":
        NotHere("a placeholder for the user's own CUDA build and index"),
    "IGLOSS_TORCH=keep bash scripts/install.sh": NotHere("keeps a user-installed torch; here it would replace "
                                                         "the pinned CPU torch of the shared test venv"),
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, in order: comments stripped, continuations joined."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        pending = ""
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).rstrip()  # an aligned comment after a command
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            commands.append((pending + line.strip()).strip())
            pending = ""
    return commands


def test_every_readme_command_is_accounted_for():
    shown = readme_commands((REPO / "README.md").read_text())
    assert len(shown) == len(set(shown)), "a README command is shown twice"
    unknown = [c for c in shown if c not in README_COMMANDS]
    stale = [c for c in README_COMMANDS if c not in shown]
    assert not unknown, f"README commands no test runs or accounts for (add them to README_COMMANDS): {unknown}"
    assert not stale, f"README_COMMANDS entries the README no longer shows: {stale}"
    assert list(README_COMMANDS) == shown, "README_COMMANDS must follow the README's order"


@pytest.mark.parametrize("command", [c for c, how in README_COMMANDS.items() if isinstance(how, CoveredBy)])
def test_commands_run_by_other_tests_are_there(command):
    how = README_COMMANDS[command]
    source = (REPO / how.test_file).read_text()
    missing = [fragment for fragment in how.fragments if fragment not in source]
    assert not missing, f"{how.test_file} no longer runs {command!r}: {missing} not found"


def test_readme_commands_run_on_the_small_demo(tmp_path):
    """The README's runnable commands, in its order, in a scratch clone on the small demo world."""
    clone = scratch_clone(tmp_path / "clone", small_params())
    venv = Path(sys.executable).parent.parent
    if not (venv / ".igloss-install-stamp").is_file():
        pytest.skip(f"{venv} is not a venv made by scripts/install.sh; demo.sh would install into it")
    # install.sh finds its stamp and reinstalls nothing, as long as the stamp is of these install
    # inputs: else it would reinstall the project editable from the clone into the shared venv,
    # and every later test run in a subprocess would import the deleted clone.
    inputs = b"".join((REPO / name).read_bytes() for name in ("pyproject.toml", "constraints.txt", "scripts/install.sh"))
    stamp = (venv / ".igloss-install-stamp").read_text().split()
    if not stamp or stamp[0] != hashlib.sha256(inputs).hexdigest():
        pytest.skip(f"{venv} was installed from other install inputs: run `bash scripts/install.sh` first")
    (clone / ".venv").symlink_to(venv)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
               HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    for command, how in README_COMMANDS.items():
        if not isinstance(how, Run):
            continue
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=clone, env=env,
                                capture_output=True, text=True, timeout=900)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"README command {command!r} failed:\n{output[-4000:]}"
        missing = [fragment for fragment in how.expect if fragment not in output]
        assert not missing, f"README command {command!r} did not print {missing}:\n{output[-4000:]}"
    assert (clone / "plots/query/car.png").is_file()
    assert (clone / "dvc_plots/index.html").is_file()
    assert (clone / "params.yaml").read_bytes() == (REPO / "presets/demo.yaml").read_bytes()
