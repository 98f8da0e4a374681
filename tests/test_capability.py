"""The capability stage: the label classifier on held-out prototypes, per class and per teacher."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from chain_runner import inside, run_stage, small_params, write_params

from pipeline.config_loading import ConfigError
from pipeline.labelling.capability import CapabilityConfig, holdout_folds, measure_capability
from pipeline.store.safetensors import load_safetensors, save_safetensors
from stages.common import load_project_params
from stages.report import format_capability

NAMES = ("road", "car", "truck")


def hand_made_templates(per_class: int = 4, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """road and car: well separated clusters; truck: exact copies of car's prototypes."""
    rng = np.random.default_rng(0)
    road = np.eye(dim)[0] + 0.05 * rng.normal(size=(per_class, dim))
    car = np.eye(dim)[1] + 0.05 * rng.normal(size=(per_class, dim))
    features = np.concatenate([road, car, car.copy()]).astype(np.float32)
    return features, np.repeat(np.arange(3), per_class)


@pytest.mark.parametrize("method", ["logistic", "nearest_prototype"])
@pytest.mark.parametrize("folds", [None, 2, 4])
def test_a_class_whose_prototypes_equal_another_s_is_confused_with_it(method, folds):
    features, labels = hand_made_templates()
    result = measure_capability(features, labels, NAMES, method, folds)
    report = result.to_dict()["classes"]
    assert report["road"] == {"accuracy": 1.0, "held_out": 4, "correct": 4, "confused_with": None, "confused_count": 0}
    # car and truck cannot be told apart: between them they are right about half the time at
    # best, and whichever loses is confused with the other, never with road.
    assert report["car"]["accuracy"] + report["truck"]["accuracy"] <= 1.0 + 1e-9
    weak = min(("car", "truck"), key=lambda name: report[name]["accuracy"])
    other = "truck" if weak == "car" else "car"
    assert report[weak]["accuracy"] <= 0.5
    assert report[weak]["confused_with"] == other
    assert report[weak]["confused_count"] == 4 - report[weak]["correct"]
    assert result.confusion[:2, 0].sum() == 4 and result.confusion[2, 0] == 0  # nothing mistaken for road
    assert result.held_out.sum() == len(labels)


def test_identical_prototypes_go_to_the_first_class_with_nearest_prototype():
    """An exact tie goes to the class listed first: truck (a copy of car) is never recognised."""
    features, labels = hand_made_templates()
    report = measure_capability(features, labels, NAMES, "nearest_prototype", 4).to_dict()
    assert report["classes"]["truck"]["accuracy"] == 0.0
    assert report["classes"]["truck"]["confused_with"] == "car"
    assert report["classes"]["car"]["accuracy"] == 1.0
    assert report["accuracy"] == pytest.approx(8 / 12)


def test_warning_lines_name_the_weak_class_and_what_it_is_confused_with():
    features, labels = hand_made_templates()
    result = measure_capability(features, labels, NAMES, "nearest_prototype", 4,
                                eval_labels=["driveable_surface", "car", "truck"])
    assert result.warnings(0.75) == ["`truck` is confused with `car` in 4 of 4 held-out prototypes (recognised in 0): "
                                     "refine its prompts or add images"]
    assert result.warnings(0.0) == []
    same = measure_capability(features, labels, NAMES, "nearest_prototype", 4, eval_labels=["road", "car", "car"])
    assert "both count as `car`" in same.warnings(0.75)[0]


def test_folds_hold_out_every_prototype_once_and_keep_singletons():
    labels = np.array([0, 0, 0, 1, 1, 1, 2])  # class 2 has one prototype: it cannot be held out
    for folds in (None, 2, 3):
        sets = holdout_folds(labels, folds)
        held = np.concatenate(sets)
        assert sorted(held.tolist()) == [0, 1, 2, 3, 4, 5]
    assert [s.tolist() for s in holdout_folds(labels, 2)] == [[0, 2, 3, 5], [1, 4]]
    features = np.eye(7, dtype=np.float32)[[0, 0, 0, 1, 1, 1, 2]] + 0.01 * np.eye(7, dtype=np.float32)
    result = measure_capability(features, labels, ("a", "b", "c"), "logistic", 2)
    assert result.to_dict()["classes"]["c"]["accuracy"] is None and result.warnings(0.75) == []


@pytest.mark.parametrize("bad, match", [({"warn_below": 1.5}, r"capability.warn_below: must be in \[0, 1\]"),
                                        ({"warn_below": -0.1}, r"capability.warn_below: must be in \[0, 1\]"),
                                        ({"folds": 1}, r"capability.folds: must be null"),
                                        ({"fold": 4}, r"capability.fold: unknown key")])
def test_bad_params_are_refused_naming_the_key(tmp_path, bad, match):
    params = small_params()
    params["capability"] = {**params["capability"], **bad}
    path = write_params(tmp_path, params)
    with pytest.raises(ConfigError, match=match):
        load_project_params(path).section("capability", CapabilityConfig)


def test_stage_on_the_small_world_writes_the_report_and_warns(tmp_path, chain, capfd):
    folder = tmp_path / "chain"
    shutil.copytree(chain, folder, symlinks=True)
    with inside(folder):
        run_stage("capability")
        report = json.loads(open("metrics/capability.json").read())
        tensors, metadata = load_safetensors("cache/template_features/templates.safetensors")
    (teacher, scores), = report["teachers"].items()
    assert teacher == metadata["teacher"]
    names = json.loads(metadata["class_names"])
    assert list(scores["classes"]) == names
    assert sum(c["held_out"] for c in scores["classes"].values()) == len(tensors["labels"])
    assert (folder / "plots/capability/confusion.png").stat().st_size > 0

    # Sabotage: one class's templates replaced by another's. It is no longer recognised, the
    # report names the class it is taken for, and a warning line says so.
    labels = tensors["labels"]
    features = tensors["features"].copy()
    weak, strong = names.index("pole"), names.index("trunk")
    features[labels == weak] = features[labels == strong]
    save_safetensors(folder / "cache/template_features/templates.safetensors",
                     {"features": features, "labels": labels}, metadata)
    capfd.readouterr()
    with inside(folder):
        run_stage("capability")
        report = json.loads(open("metrics/capability.json").read())
    pole, trunk = report["teachers"][teacher]["classes"]["pole"], report["teachers"][teacher]["classes"]["trunk"]
    assert pole["accuracy"] + trunk["accuracy"] <= 1.0 + 1e-9
    weak_name = "pole" if pole["accuracy"] <= trunk["accuracy"] else "trunk"
    other = "trunk" if weak_name == "pole" else "pole"
    assert report["teachers"][teacher]["classes"][weak_name]["confused_with"] == other
    lines = report["teachers"][teacher]["warnings"]
    assert any(line.startswith(f"`{weak_name}` is confused with `{other}`") for line in lines)
    assert f"`{weak_name}` is confused with `{other}`" in capfd.readouterr().err  # the stage's log says it too
    assert f"    `{weak_name}` is confused with `{other}`" in format_capability(report)  # and `stages.report`
