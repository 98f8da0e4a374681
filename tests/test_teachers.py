"""Several teachers: typed teacher kinds, one head per teacher, and the fusion of their labels.

The chain test distils one student from two teachers on the small world (the first teacher and
the `grey` teacher of presets/two-teachers.yaml) and labels with every fusion option; the swap
sabotage gives each teacher the other's capability vector, and the fused mIoU must fall.
"""

from __future__ import annotations

import json
import shutil
import numpy as np
import pytest
import torch
import yaml
from chain_runner import REPO, inside, run_chain, run_stage, small_params

from pipeline.config import SHARED_SECTIONS, parse_params
from pipeline.config_loading import ConfigError
from pipeline.labelling.classifier import LinearClassifier
from pipeline.labelling.fusion import Member, TeacherEnsemble, capability_weights, fuse, probabilities
from pipeline.labelling.point_features import PointFeatureReader
from pipeline.students.io import student_heads
from pipeline.training.objective import multi_head_loss, normalized_l2_loss
from stages.common import load_project_params

TWO_TEACHERS = yaml.safe_load((REPO / "presets/two-teachers.yaml").read_text())


def two_teacher_params(**changes) -> dict:
    return small_params(extra_teachers=TWO_TEACHERS["extra_teachers"], student=TWO_TEACHERS["student"], **changes)


def parse(data: dict):
    """Validate params data; the sections that stages own are accepted as they are."""
    return parse_params(data, "p.yaml:", [name for name in data if name not in SHARED_SECTIONS])


# ------------------------------------------------------------------------------------ params


def test_two_teacher_preset_is_the_demo_but_for_the_second_teacher():
    demo = yaml.safe_load((REPO / "presets/demo.yaml").read_text())
    two = yaml.safe_load((REPO / "presets/two-teachers.yaml").read_text())  # a copy: popped below
    assert two.pop("extra_teachers") and demo.pop("extra_teachers") == {}
    for arch in ("waffleiron", "sparse_unet"):
        assert (two["student"][arch].pop("out_channels"), demo["student"][arch].pop("out_channels")) == (384, 192)
    assert two == demo
    params = load_project_params(REPO / "presets/two-teachers.yaml")
    grey, first = params.extra_teachers["grey"], params.teacher
    assert grey.greyscale and not first.greyscale
    assert grey.shape()[0] != first.shape()[0]  # another patch size


def test_teacher_entries_are_typed_by_kind_and_checked_across_sections():
    base = two_teacher_params()
    params = parse(base)
    assert list(params.all_teachers) == ["teacher", "grey"]
    assert params.extra_teachers["grey"].kind == "timm_vit"

    def error(change) -> str:
        data = yaml.safe_load(yaml.safe_dump(base))
        change(data)
        with pytest.raises(ConfigError) as caught:
            parse(data)
        return str(caught.value)

    assert "p.yaml: extra_teachers.grey.kind: 'clip' is not allowed; choose one of 'timm_vit'" in \
        error(lambda d: d["extra_teachers"]["grey"].update(kind="clip"))
    assert "teacher.kind" in error(lambda d: d["teacher"].update(kind="clip"))
    assert "extra_teachers.grey.input_size" in error(lambda d: d["extra_teachers"]["grey"].update(input_size=[224, 448]))
    assert "extra_teachers.teacher" in error(lambda d: d.update(extra_teachers={"teacher": d["extra_teachers"]["grey"]}))
    assert "distill.teacher_weights.colour: no such teacher" in \
        error(lambda d: d["distill"].update(teacher_weights={"colour": 1.0}))
    assert "distill.teacher_weights.grey: must be > 0" in error(lambda d: d["distill"].update(teacher_weights={"grey": 0.0}))
    assert "label.fusion: 'colour' is not allowed" in error(lambda d: d["label"].update(fusion="colour"))


# ------------------------------------------------------------------------------ the maths


def test_multi_head_loss_is_the_weighted_sum_of_each_heads_loss():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(50, 7, generator=generator), torch.randn(50, 7, generator=generator)
    heads = [(4, 1.0), (3, 0.5)]
    expected = normalized_l2_loss(student[:, :4], teacher[:, :4]) + 0.5 * normalized_l2_loss(student[:, 4:], teacher[:, 4:])
    assert multi_head_loss(student, teacher, heads).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(multi_head_loss(student, teacher, [(7, 1.0)]), normalized_l2_loss(student, teacher))
    with pytest.raises(ValueError, match="do not add up"):
        multi_head_loss(student, teacher, [(4, 1.0)])


def test_capability_weights_follow_sas_equations_7_and_8():
    capability = np.array([[0.9, 0.1, 0.5],    # teacher 0: good at class 0
                           [0.2, 0.8, 0.5]])   # teacher 1: good at class 1
    predicted = np.array([[0, 0, 2],           # teacher 0's predicted class at 3 points
                          [0, 1, 2]])          # teacher 1's
    weights = capability_weights(predicted, capability, temperature=0.1)
    # score_m = mean over the teachers' predicted classes of S_m; softmax over teachers at 0.1
    scores = np.array([[0.9, (0.9 + 0.1) / 2, 0.5], [0.2, (0.2 + 0.8) / 2, 0.5]])
    expected = np.exp(scores / 0.1) / np.exp(scores / 0.1).sum(axis=0)
    np.testing.assert_allclose(weights, expected)
    probs = [probabilities(np.array([[2.0, 0.0, 0.0]] * 3)), probabilities(np.array([[0.0, 2.0, 0.0]] * 3))]
    np.testing.assert_allclose(fuse(probs, "average"), (probs[0] + probs[1]) / 2)
    fused = fuse(probs, "capability", capability, 0.1)
    assert fused[0].argmax() == 0  # teacher 0 predicts class 0 and recognises it far better than teacher 1 does
    np.testing.assert_allclose(fused.sum(axis=1), 1.0)


def test_an_ensemble_of_one_teacher_is_that_teachers_classifier():
    rng = np.random.default_rng(0)
    classifier = LinearClassifier(rng.normal(size=(4, 6)), rng.normal(size=4))
    other = LinearClassifier(rng.normal(size=(4, 5)), rng.normal(size=4))
    features = rng.normal(size=(100, 11)).astype(np.float32)
    members = [Member("teacher", classifier, slice(0, 6)), Member("grey", other, slice(6, 11))]
    alone = TeacherEnsemble(members, "teacher")
    np.testing.assert_array_equal(alone.predict(features), classifier.predict(features[:, :6]))
    np.testing.assert_array_equal(alone.logits(features), classifier.logits(features[:, :6]))
    both = TeacherEnsemble(members, "capability", {"teacher": np.ones(4), "grey": np.zeros(4)}, temperature=0.01)
    # the grey teacher recognises nothing: the fusion follows the first teacher
    np.testing.assert_array_equal(both.predict(features), classifier.predict(features[:, :6]))
    with pytest.raises(ValueError, match="capability of every teacher"):
        TeacherEnsemble(members, "capability", {"teacher": np.ones(4)})


# --------------------------------------------------------------------- the chain, two teachers


@pytest.fixture(scope="module")
def two_teacher_chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_teachers")
    run_chain(folder, two_teacher_params())
    return folder


def label_miou(folder, fusion: str, swap_capability: bool = False) -> dict[str, float]:
    """Label and evaluate the chain in `folder` with `label.fusion: fusion` (and the capability
    vectors swapped, the sabotage); the mIoU of each result."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["label"].update(fusion=fusion, swap_capability=swap_capability)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with inside(folder):
        run_stage("label")
        run_stage("evaluate")
    metrics = json.loads((folder / "metrics/metrics.json").read_text())
    return {name: result["miou"] for name, result in metrics.items() if isinstance(result, dict) and "miou" in result}


def test_two_teachers_distil_into_one_student_with_a_head_each(two_teacher_chain):
    heads = student_heads(two_teacher_chain / "cache/student")
    assert [(h["name"], h["dim"], h["weight"]) for h in heads] == [("teacher", 192, 1.0), ("grey", 192, 1.0)]
    store = PointFeatureReader(two_teacher_chain / "cache/point_features/val")
    assert store.heads == heads
    scan = store.scan_ids[0]
    assert store.read(scan).shape[1] == 384
    np.testing.assert_array_equal(store.read(scan, "grey"), store.read(scan)[:, 192:])
    report = json.loads((two_teacher_chain / "metrics/capability.json").read_text())
    assert [entry.get("name", "teacher") for entry in report["teachers"].values()] == ["teacher", "grey"]
    assert (two_teacher_chain / "cache/extra_template_features/grey/templates.safetensors").is_file()
    assert (two_teacher_chain / "cache/extra_teacher_features/grey/val/patches").is_dir()
    with pytest.raises(ValueError, match="no head 'colour'"):
        store.read(scan, "colour")


def test_fusion_options_and_the_capability_swap_sabotage(two_teacher_chain, tmp_path):
    """On the small world the 3D student has had one step (its labels mean nothing), so the
    fusion is judged on the 2D baseline, which fuses the teachers' own pixel features the same way."""
    folder = tmp_path / "chain"
    shutil.copytree(two_teacher_chain, folder, symlinks=True)
    first, grey = (label_miou(folder, name)["2d_baseline"] for name in ("teacher", "grey"))
    fused = label_miou(folder, "capability")["2d_baseline"]
    average = label_miou(folder, "average")["2d_baseline"]
    sabotaged = label_miou(folder, "capability", swap_capability=True)["2d_baseline"]
    # The colour teacher recognises every held-out prototype here, the grey one a third of them.
    assert first > grey + 0.3
    assert fused > first - 0.05 and fused >= average - 0.01
    assert sabotaged < fused - 0.3, (fused, sabotaged)
