"""The house rules of the code layout (issue #17, change 1): stages are thin and independent.

* A stage module imports, among the project's modules, only `stages.common` and `pipeline.*`:
  library code lives in `pipeline/`, path policy in `stages/common.py`, and no stage reaches
  into another.
* `bench/` imports no stage module: it measures the library, or runs a stage as dvc does (it may
  use `stages.common`, the project's path and params policy).

Imports are read from the source (every `import` and `from ... import`, those inside
functions included), so nothing is imported to check them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("stages", "pipeline", "bench")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of a file; `from a import b` gives both a and a.b,
    since b may be a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno}: relative import; import absolutely")
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def project_imports(path: Path) -> list[tuple[int, str]]:
    return [(line, module) for line, module in imported_modules(path) if module.split(".")[0] in PROJECT_PACKAGES]


def modules_of(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def allowed_in_a_stage(module: str) -> bool:
    """A bare package name comes with `from stages import common` (its `stages.<name>` is checked too)."""
    return module in ("stages", "stages.common", "pipeline") or module.startswith(("stages.common.", "pipeline."))


@pytest.mark.parametrize("path", modules_of("stages"), ids=lambda path: path.name)
def test_stages_import_only_stages_common_and_pipeline(path):
    wrong = [f"line {line}: {module}" for line, module in project_imports(path) if not allowed_in_a_stage(module)]
    assert not wrong, f"{path.relative_to(REPO)} imports {wrong}: move shared code into pipeline/"


@pytest.mark.parametrize("path", modules_of("bench"), ids=lambda path: path.name)
def test_bench_imports_no_stage(path):
    wrong = [f"line {line}: {module}" for line, module in project_imports(path)
             if module.split(".")[0] == "stages" and not allowed_in_a_stage(module)]
    assert not wrong, f"{path.relative_to(REPO)} imports {wrong}: import the library from pipeline/ instead"


def test_the_rules_see_imports_inside_functions(tmp_path):
    module = tmp_path / "stage.py"
    module.write_text("def main():\n    from stages.label import read\n    import stages.query\n")
    assert project_imports(module) == [(2, "stages.label"), (2, "stages.label.read"), (3, "stages.query")]


def test_a_stage_owned_section_needs_no_change_to_the_library(tmp_path):
    """A new stage's own params section is accepted once dvc.yaml declares it, and typed by the
    stage with `Params.section`; an undeclared section stays an error naming it."""
    from dataclasses import dataclass

    import yaml
    from chain_runner import small_params, write_params

    from pipeline.config import ConfigError
    from stages.common import load_project_params

    @dataclass(frozen=True)
    class ProbeConfig:
        epochs: int = 3
        lr: float = 0.1

    params = small_params()
    params["toy_probe"] = {"epochs": 5}
    write_params(tmp_path, params)
    with pytest.raises(ConfigError, match=r"params.yaml: toy_probe: unknown section"):
        load_project_params(tmp_path / "params.yaml")
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc["stages"]["toy_probe"] = {"cmd": "python -m stages.toy_probe", "params": ["toy_probe", "dataset"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    for other in REPO.glob("*/dvc.yaml"):  # the project's other pipeline files declare sections too
        (tmp_path / other.parent.name).mkdir()
        (tmp_path / other.parent.name / "dvc.yaml").write_text(other.read_text())
    loaded = load_project_params(tmp_path / "params.yaml")
    assert loaded.section("toy_probe", ProbeConfig) == ProbeConfig(epochs=5, lr=0.1)
    params["toy_probe"] = {"epochs": 5, "momentum": 0.9}
    write_params(tmp_path, params)
    with pytest.raises(ConfigError, match=r"params.yaml: toy_probe.momentum: unknown key"):
        load_project_params(tmp_path / "params.yaml").section("toy_probe", ProbeConfig)
