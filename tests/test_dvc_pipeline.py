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
from chain_runner import REPO, scratch_clone, small_params

from pipeline.config import SHARED_SECTIONS
from stages.common import dvc_stage_sections


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_module_and_code_dependency_exists():
    stages = dvc_stages()
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert body["cmd"].startswith(f"python -m stages.{name}")
        assert (REPO / "stages" / f"{name}.py").is_file()
        assert f"stages/{name}.py" in body["deps"], f"{name} must depend on its own module"
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
    for name, stage in dvc_stages().items():
        deps = [Path(d) for d in stage.get("do", stage)["deps"]]
        for path in sorted(code_closure(Path("stages") / f"{name}.py")):
            assert any(path == d or d in path.parents for d in deps), f"stage {name}: {path} is not in its deps"


def test_every_params_section_a_stage_reads_is_declared():
    """A stage's module reads `params.<section>`; dvc.yaml must list that section for it."""
    stages = dvc_stages()
    for name, stage in stages.items():
        body = stage.get("do", stage)
        declared = {p.split(".")[0].replace("${key}", "") for p in body.get("params", [])}
        source = (REPO / "stages" / f"{name}.py").read_text()
        known = set(SHARED_SECTIONS) | set(dvc_stage_sections(REPO / "dvc.yaml"))
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
    return set(json.loads(dvc(folder, "status", "--json") or "{}"))


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


def test_prompt_change_reruns_only_that_class_and_what_follows(reproduced):
    original = (reproduced / "params.yaml").read_text()
    edit_params(reproduced, lambda p: p["vocabulary"]["car"].update(prompts=["a photo of a parked {}"]))
    try:
        assert changed_stages(reproduced) == {"prototypes@car", "template_features", "capability", "label"}
        # evaluate reruns too once label's output changes; DVC reports it only then
        ran = ran_stages(dvc(reproduced, "repro"))
        assert ran <= {"prototypes@car", "template_features", "capability", "label", "evaluate"}
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
