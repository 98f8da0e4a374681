"""The fault table (README, "When something goes wrong"): one test per row.

Each row is a bad input or a fault a user can cause; the test checks the one-line message that
names the file or the params key, and that nothing was written or lost.
"""

from __future__ import annotations

import pytest
from chain_runner import REPO, inside, small_params, write_params

from pipeline.config import ConfigError
from stages.common import load_project_params


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("key, value", [("min_depth", float("nan")), ("min_depth", float("inf"))])
def test_non_finite_float_param_is_refused(tmp_path, key, value):
    params = small_params()
    params["assignments"][key] = value
    with pytest.raises(ConfigError, match=rf"params.yaml: assignments.{key}: must be a finite number"):
        load_project_params(write_params(tmp_path, params))


def test_key_written_twice_is_refused_with_both_lines(tmp_path):
    path = write_params(tmp_path, small_params())
    lines = path.read_text().splitlines()
    car = next(i for i, line in enumerate(lines) if line.strip().startswith("car:"))
    lines.insert(car + 1, lines[car])  # `car:` twice in the vocabulary
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"params.yaml: key 'car' is written twice in one mapping, on lines "
                                          rf"{car + 1} and {car + 2}"):
        load_project_params(path)


@pytest.mark.parametrize("name", ["traffic cone", "road/left", "", "-car"])
def test_class_name_that_breaks_the_pipeline_is_refused(tmp_path, name):
    vocabulary = small_params()["vocabulary"]
    vocabulary[name] = {"label": "car"}
    with pytest.raises(ConfigError, match=r"params.yaml: vocabulary\..*is not a valid class name: use letters, digits"):
        load_project_params(write_params(tmp_path, small_params(vocabulary=vocabulary)))


def test_one_class_vocabulary_is_refused(tmp_path):
    vocabulary = {"car": small_params()["vocabulary"]["car"]}
    with pytest.raises(ConfigError, match=r"params.yaml: vocabulary: has only one prompt class \(car\); list at least two"):
        load_project_params(write_params(tmp_path, small_params(vocabulary=vocabulary)))


def test_unknown_top_level_section_is_named(tmp_path):
    params = small_params()
    params["distil"] = {"lr": 0.1}
    with pytest.raises(ConfigError, match=r"params.yaml: distil: unknown section; allowed sections: dataset"):
        load_project_params(write_params(tmp_path, params))


def test_preset_switches_never_overwrite_earlier_edits(tmp_path):
    from stages import preset

    import shutil
    shutil.copytree(REPO / "presets", tmp_path / "presets")
    demo = (REPO / "presets/demo.yaml").read_text()
    first, second = (demo.replace("preview_scans: 3", f"preview_scans: {n}") for n in (5, 7))
    with inside(tmp_path):
        (tmp_path / "params.yaml").write_text(first)
        kept_first = preset.switch("nuscenes")
        (tmp_path / "params.yaml").write_text(second)
        kept_second = preset.switch("demo")
        assert kept_first != kept_second
        assert kept_first.read_text() == first and kept_second.read_text() == second
        assert {p.name for p in tmp_path.glob("params.previous*.yaml")} == {"params.previous.yaml",
                                                                          "params.previous.2.yaml"}
    ignored = (REPO / ".gitignore").read_text()
    assert "/params.previous*.yaml" in ignored


@pytest.mark.parametrize("key, value, problem", [
    ("batch_size", 0, "must be > 0, got 0"),
    ("epochs", 0, "must be > 0, got 0"),
    ("lr", -1, "must be > 0, got -1.0"),
    ("max_points", 0, "must be > 0, got 0"),
])
def test_distill_values_are_checked_at_load_naming_the_key(tmp_path, key, value, problem):
    params = small_params()
    params["distill"][key] = value
    with pytest.raises(ConfigError, match=rf"params.yaml: distill.{key}: {problem}"):
        load_project_params(write_params(tmp_path, params))


@pytest.mark.parametrize("section, key", [("template_features", "batch_size"), ("teacher_features", "batch_size"),
                                          ("prototypes", "images_per_class")])
def test_batch_and_count_values_are_checked_at_load_naming_the_key(tmp_path, section, key):
    params = small_params()
    params[section][key] = 0
    with pytest.raises(ConfigError, match=rf"params.yaml: {section}.{key}: must be > 0, got 0"):
        load_project_params(write_params(tmp_path, params))


# ----------------------------------------------------------------------------- outputs the user names


def test_a_folder_is_never_replaced_by_a_file(tmp_path):
    from pipeline.store.atomic import atomic_output

    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / "keep.png").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"plots: is a folder and would be replaced by a file; left as it was"):
        with atomic_output(folder) as tmp:
            tmp.write_bytes(b"picture")
    assert (folder / "keep.png").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]  # no temporary left either


def test_query_threshold_must_be_finite(capsys):
    from stages import query

    with pytest.raises(SystemExit):
        query.arguments().parse_args(["car", "--threshold", "nan"])
    assert "argument --threshold: must be a finite number, got 'nan'" in capsys.readouterr().err
