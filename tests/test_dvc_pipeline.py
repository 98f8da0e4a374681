"""The DVC pipeline itself: dvc.yaml is consistent, and reruns touch only what changed."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chain_runner import REPO, run_dvc, scratch_clone, small_params, switch_on_segmenters

from pipeline.config import SHARED_SECTIONS
from stages.common import dvc_stage_sections


PIPELINE_FILES = ("dvc.yaml", "segmenters/dvc.yaml")  # the zero-shot chain; the segmenter stages (#14)


def dvc_stages() -> dict:
    """Every stage of every pipeline file, by its DVC address (`name`, `segmenters/dvc.yaml:name`).
    A stage outside ./dvc.yaml runs in the project folder (wdir: ..), so its paths are the project's."""
    stages = {}
    for file in PIPELINE_FILES:
        for name, stage in yaml.safe_load((REPO / file).read_text())["stages"].items():
            if file != "dvc.yaml":
                assert stage.get("wdir") == "..", f"{file}:{name} must run in the project folder (wdir: ..)"
            stages[name if file == "dvc.yaml" else f"{file}:{name}"] = stage
    return stages


def module(address: str) -> str:
    """The stage module a stage runs: its name (a stage of another pipeline file may run a module
    of ./dvc.yaml's on another split: segmenters/dvc.yaml:label)."""
    return address.split(":")[-1]


def test_every_stage_module_and_code_dependency_exists():
    stages = dvc_stages()
    for address, stage in stages.items():
        body = stage.get("do", stage)
        name = module(address)
        assert body["cmd"].startswith(f"python -m stages.{name}")
        assert (REPO / "stages" / f"{name}.py").is_file()
        assert f"stages/{name}.py" in body["deps"], f"{address} must depend on its own module"
        for dep in body["deps"]:
            if dep.startswith(("pipeline", "stages")):
                assert (REPO / dep).exists(), f"{name}: dependency {dep} does not exist"


def imported_files(path: Path) -> set[Path]:
    """Project files a module imports (also inside functions), as paths relative to the repo."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = list(path.relative_to(REPO).parent.parts)[: len(path.relative_to(REPO).parts) - node.level]
                module = ".".join(package + ([module] if module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith(("pipeline", "stages")):
                continue
            for candidate in (Path(*name.split(".")).with_suffix(".py"), Path(*name.split(".")) / "__init__.py"):
                if (REPO / candidate).is_file():
                    found.add(candidate)
    return found


def code_closure(stage_file: Path) -> set[Path]:
    """The stage module and every project module it reaches. `pipeline/config.py` is followed no
    further: it imports library modules only for their config dataclasses."""
    seen, todo = set(), [stage_file]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path != Path("pipeline/config.py"):
            todo += imported_files(REPO / path)
    return seen - {Path("pipeline/__init__.py"), Path("stages/__init__.py"), Path("pipeline/compat.py")}


def test_every_stage_depends_on_the_code_it_runs():
    for address, stage in dvc_stages().items():
        deps = [Path(d) for d in stage.get("do", stage)["deps"]]
        for path in sorted(code_closure(Path("stages") / f"{module(address)}.py")):
            assert any(path == d or d in path.parents for d in deps), f"stage {address}: {path} is not in its deps"


def test_every_params_section_a_stage_reads_is_declared():
    """A stage's module reads `params.<section>`; dvc.yaml must list that section for it."""
    stages = dvc_stages()
    known = set(SHARED_SECTIONS).union(*(dvc_stage_sections(REPO / file) for file in PIPELINE_FILES))
    for name, stage in stages.items():
        body = stage.get("do", stage)
        declared = {p.split(".")[0].replace("${key}", "") for p in body.get("params", [])}
        source = (REPO / "stages" / f"{module(name)}.py").read_text()
        sections = {s for s in known if f"params.{s}" in source or f'params.section("{s}"' in source}
        missing = sections - declared
        assert not missing, f"stage {name} reads params sections {missing} that dvc.yaml does not declare"


def dvc(folder: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["dvc", *args], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def changed_stages(folder: Path) -> set[str]:
    return set(json.loads(dvc(folder, "status", "dvc.yaml", "--json") or "{}"))


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """A scratch copy of the project with the small world, after one full `dvc repro`."""
    folder = scratch_clone(tmp_path_factory.mktemp("dvc") / "project", small_params())
    dvc(folder, "repro")
    return folder


def edit_params(folder: Path, edit) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    edit(params)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_noop_repro_reruns_nothing(reproduced):
    assert changed_stages(reproduced) == set()
    output = dvc(reproduced, "repro")
    assert "Running stage" not in output


def test_bytecode_python_writes_beside_the_code_reruns_nothing(reproduced):
    """Python writes `__pycache__/*.pyc` into the code folders the stages depend on (wherever
    PYTHONDONTWRITEBYTECODE is not set, i.e. for most users); .dvcignore keeps them out of the
    dependency hashes, or every `dvc repro` after the first would rerun the chain."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import stages.distill, stages.label, stages.evaluate"],
                   cwd=reproduced, env=env, check=True)
    assert list((reproduced / "pipeline" / "store").glob("__pycache__/*.pyc"))
    assert changed_stages(reproduced) == set()


def test_prompt_change_reruns_only_that_class_and_what_follows(reproduced):
    original = (reproduced / "params.yaml").read_text()
    edit_params(reproduced, lambda p: p["vocabulary"]["car"].update(prompts=["a photo of a parked {}"]))
    try:
        assert changed_stages(reproduced) == {"prototypes@car", "template_features", "extra_template_features",
                                              "capability", "label"}
        # evaluate reruns too once label's output changes; DVC reports it only then
        ran = ran_stages(dvc(reproduced, "repro"))
        assert ran <= {"prototypes@car", "template_features", "extra_template_features", "capability", "label",
                       "evaluate"}
        assert {"prototypes@car", "template_features", "capability", "label"} <= ran
    finally:
        (reproduced / "params.yaml").write_text(original)
        dvc(reproduced, "repro")


def test_capability_change_reruns_only_capability(reproduced):
    original = (reproduced / "params.yaml").read_text()
    edit_params(reproduced, lambda p: p["capability"].update(warn_below=0.5))
    try:
        assert changed_stages(reproduced) == {"capability"}
        assert ran_stages(dvc(reproduced, "repro")) == {"capability"}
    finally:
        (reproduced / "params.yaml").write_text(original)
        dvc(reproduced, "repro")


def test_distill_change_never_reruns_the_2d_side(reproduced):
    original = (reproduced / "params.yaml").read_text()
    edit_params(reproduced, lambda p: p["distill"].update(lr=0.001))
    try:
        assert changed_stages(reproduced) == {"distill"}
        ran = ran_stages(dvc(reproduced, "repro"))
        # label and evaluate rerun whenever their inputs' bytes change (DVC skips them otherwise)
        assert {"distill", "point_features"} <= ran <= {"distill", "point_features", "label", "evaluate"}
    finally:
        (reproduced / "params.yaml").write_text(original)
        dvc(reproduced, "repro")  # restored from DVC's run cache


SEGMENTER_STAGES = {f"segmenters/dvc.yaml:{name}" for name in
                    ("point_features", "label", "linear_probe", "finetune", "inject", "self_train")}


def segmenter_status(folder: Path) -> set[str]:
    return set(json.loads(dvc(folder, "status", "segmenters/dvc.yaml", "--json") or "{}"))


def test_segmenter_stages_run_apart_from_the_zero_shot_chain(reproduced):
    """segmenters/dvc.yaml (issue #14): off by default (.dvcignore), so the zero-shot project
    never sees it; switched on, `dvc repro` still never runs its stages, `dvc repro
    segmenters/dvc.yaml` runs them without rerunning the zero-shot chain, and changing one of
    their params sections reruns only that stage."""
    off = run_dvc(reproduced, "repro", "segmenters/dvc.yaml")
    assert off.returncode != 0 and "dvc-ignored" in off.stderr
    dvc(reproduced, "checkout")  # succeeds: DVC sees no never-run stage to fail on
    switch_on_segmenters(reproduced)
    assert segmenter_status(reproduced) == SEGMENTER_STAGES  # the zero-shot repro ran none of them
    assert ran_stages(dvc(reproduced, "repro", "segmenters/dvc.yaml")) == SEGMENTER_STAGES
    assert segmenter_status(reproduced) == set() and changed_stages(reproduced) == set()
    assert "Running stage" not in dvc(reproduced, "repro")
    for name in ("linear_probe", "finetune", "inject", "self_train"):
        assert (reproduced / "metrics" / f"{name}.json").is_file()
    original = (reproduced / "params.yaml").read_text()
    edit_params(reproduced, lambda p: p["linear_probe"].update(lr=0.02))
    try:
        assert segmenter_status(reproduced) == {"segmenters/dvc.yaml:linear_probe"}
        assert changed_stages(reproduced) == set()
        assert ran_stages(dvc(reproduced, "repro", "segmenters/dvc.yaml")) == {"segmenters/dvc.yaml:linear_probe"}
    finally:
        (reproduced / "params.yaml").write_text(original)
        dvc(reproduced, "repro", "segmenters/dvc.yaml")  # restored from DVC's run cache


def test_the_distillation_split_stages_mirror_the_zero_shot_ones():
    """segmenters/dvc.yaml runs point_features and label on the distillation split: the same
    command with `--split distill`, the same deps and params but cache/distill_split/ for the
    split's own folders, so neither drifts from ./dvc.yaml's stage."""
    stages = dvc_stages()
    moved = {"cache/point_features": "cache/distill_split/point_features",
             "cache/predictions": "cache/distill_split/predictions"}
    for name in ("point_features", "label"):
        zero_shot, distill = stages[name], stages[f"segmenters/dvc.yaml:{name}"]
        assert distill["cmd"] == f"{zero_shot['cmd']} --split distill"
        assert distill["deps"] == [moved.get(d, d) for d in zero_shot["deps"]], name
        assert distill["params"] == zero_shot["params"], name
        assert distill["outs"] == [moved[o] for o in zero_shot["outs"]], name
