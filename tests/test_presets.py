"""The params presets: each validates against the typed config, and the switch command works."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from chain_runner import REPO, inside

from stages.common import load_project_params
from pipeline.teachers import teacher_shape
from stages import preset

PRESETS = sorted((REPO / "presets").glob("*.yaml"))


def test_the_expected_presets_exist():
    assert {path.stem for path in PRESETS} >= {"demo", "nuscenes", "nuscenes-mini", "semantic_kitti"}


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_validates_and_fits_together(path):
    """Every key is known and well typed, and the values that span sections agree, so no stage
    discovers a bad setting after hours of work."""
    params = load_project_params(path)
    widths = 0
    for teacher in params.all_teachers.values():
        patch_size, embed_dim = teacher_shape(teacher)
        widths += embed_dim
        for name in ("input_size", "template_size"):
            assert all(side % patch_size == 0 for side in getattr(teacher, name)), name
    assert params.student.out_channels == widths, "the student must predict the teachers' feature widths (one head each)"


def test_real_data_presets_follow_the_reference():
    for name in ("nuscenes", "nuscenes-mini", "semantic_kitti"):
        params = load_project_params(REPO / f"presets/{name}.yaml")
        unprompted = set(params.dataset.label_map().classes) - {c.label for c in params.vocabulary.values()}
        assert not unprompted, f"{name}: every evaluation class needs a prompt class"
    nuscenes = load_project_params(REPO / "presets/nuscenes.yaml")
    assert (nuscenes.dataset.version, nuscenes.dataset.eval_split) == ("v1.0-trainval", "val")
    assert len(nuscenes.dataset.label_map().classes) == 16
    assert nuscenes.teacher.model_name == "vit_large_patch14_dinov2.lvd142m"
    assert nuscenes.teacher.input_size == (448, 896)
    assert (nuscenes.student.waffleiron.width, nuscenes.student.waffleiron.depth, nuscenes.student.waffleiron.head_hidden) == (768, 48, 2048)
    kitti = load_project_params(REPO / "presets/semantic_kitti.yaml")
    assert len(kitti.dataset.label_map().classes) == 19


def test_committed_params_are_the_demo_preset():
    """The demo preset is what a fresh clone runs; the two files must not drift apart."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")

    def committed(name: str) -> bytes:
        return subprocess.run(["git", "show", f"HEAD:{name}"], cwd=REPO, capture_output=True, check=True).stdout

    try:
        demo = committed("presets/demo.yaml")
    except subprocess.CalledProcessError:
        demo = (REPO / "presets/demo.yaml").read_bytes()  # not committed yet
    assert committed("params.yaml") == demo


def test_switching_presets_keeps_the_previous_params(tmp_path):
    shutil.copytree(REPO / "presets", tmp_path / "presets")
    edited = (REPO / "presets/demo.yaml").read_text().replace("preview_scans: 3", "preview_scans: 5")
    (tmp_path / "params.yaml").write_text(edited)
    with inside(tmp_path):
        assert preset.current_preset() is None
        kept = preset.switch("nuscenes")
        assert preset.current_preset() == "nuscenes"
        assert kept is not None and kept.read_text() == edited
        assert preset.switch("demo") is None  # a preset's copy is not worth keeping
        assert preset.current_preset() == "demo"
        assert kept.read_text() == edited
        with pytest.raises(SystemExit, match="no such preset; choose one of demo, nuscenes"):
            preset.switch("nuscenes-full")
