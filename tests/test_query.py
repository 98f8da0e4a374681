"""The query command (stages/query.py) end to end on the small demo world.

The `chain` fixture distils its student for a single step (3D mIoU ~0.01), so its point
features cannot pick out anything yet. The tests therefore replace the cached point features
with what a perfectly distilled student outputs: the teacher's feature at each point's pixel
(the distillation target, as the 2D baseline reads it), and zero for the points no camera sees.
Everything the query does with the features is unchanged; precision and recall are measured
on the points the cameras see.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from chain_runner import inside
from PIL import Image

from pipeline.assignments import combine_taps
from stages.common import load_project_params
from pipeline.datasets import open_reader
from pipeline.labelling.query import UNMATCHED, QueryError
from pipeline.store.ragged import RaggedReader, RaggedWriter
from pipeline.viz import QUERY_DPI, QUERY_FIGURE_INCHES
from stages import query

# Measured with 2 prototypes per class (small_params): car P 0.90, R 0.90 (see pipeline/labelling/query.py).
MIN_PRECISION = 0.8
MIN_RECALL = 0.8


def write_teacher_point_features(folder: Path, split: str = "val") -> dict[str, np.ndarray]:
    """Overwrite cache/point_features/<split> with the teacher's pixel features (the distillation
    target); return each scan's mask of the points some camera sees (the others get zeros)."""
    features = RaggedReader(folder / "cache/point_features" / split)
    assignments = RaggedReader(folder / "cache/assignments" / split)
    patches = RaggedReader(folder / "cache/teacher_features" / split / "patches")
    taps = RaggedReader(folder / "cache/teacher_features" / split / "taps")
    seen = {}
    columns = {"feature": features.columns["feature"]}
    with RaggedWriter(folder / "cache/point_features" / split, columns, attributes=features.attributes) as writer:
        for scan_id in features.scan_ids:
            tap = taps.read(scan_id)
            pixel = combine_taps(torch.from_numpy(patches.read(scan_id, ["feature"])["feature"]),
                                 torch.from_numpy(tap["tap"]), torch.from_numpy(tap["weight"])).numpy()
            point_index = assignments.read(scan_id, ["point_index"])["point_index"]
            feature = np.zeros((features.scan_rows(scan_id), pixel.shape[1]), dtype=np.float16)
            feature[point_index] = pixel
            writer.append(scan_id, feature=feature)
            seen[scan_id] = np.zeros(len(feature), dtype=bool)
            seen[scan_id][point_index] = True
    return seen


@pytest.fixture(scope="module")
def world(chain, tmp_path_factory):
    """A copy of the chain with teacher features as point features: (folder, seen masks)."""
    folder = tmp_path_factory.mktemp("query") / "chain"
    shutil.copytree(chain, folder, symlinks=True)
    return folder, write_teacher_point_features(folder)


def truth_of(folder: Path, label: str) -> dict[str, np.ndarray]:
    """Per scan of the eval split, the mask of the points whose true evaluation label is `label`."""
    params = load_project_params(folder / "params.yaml")
    reader = open_reader(params.dataset, params.dataset.eval_split)
    index = reader.label_map.classes.index(label)
    return {scan_id: reader.read(scan_id).labels == index for scan_id in reader.scan_ids}


def test_query_finds_cars_and_reuses_its_cache(world):
    folder, seen = world
    with inside(folder):
        first = query.main(["car"])
        cache_files = {p: p.stat().st_mtime_ns for p in first.cache_folders[0].rglob("*")}
        second = query.main(["car"])
        truth = truth_of(Path.cwd(), "car")
        matches = {scan_id: query.main(["car", "--scan", scan_id]).match for scan_id in truth}

    assert first.cached == (False,) and second.cached == (True,)
    assert first.cache_folders == second.cache_folders
    with inside(folder):  # the outcome's paths are relative to the project folder
        assert {p: p.stat().st_mtime_ns for p in first.cache_folders[0].rglob("*")} == cache_files
    assert np.array_equal(first.match, second.match) and first.scan_id == second.scan_id
    with Image.open(folder / first.picture) as picture:
        assert picture.size == (QUERY_FIGURE_INCHES[0] * QUERY_DPI, QUERY_FIGURE_INCHES[1] * QUERY_DPI)
    assert first.picture == Path("plots/query/car.png")

    hit = np.concatenate([(matches[s] == 0)[seen[s]] for s in truth])
    car = np.concatenate([truth[s][seen[s]] for s in truth])
    precision, recall = (hit & car).sum() / hit.sum(), (hit & car).sum() / car.sum()
    assert precision >= MIN_PRECISION and recall >= MIN_RECALL, (precision, recall)
    # The picture shows the scan with the most cars matched.
    assert first.scan_id == max(matches, key=lambda s: (matches[s] == 0).sum())


def test_several_names_and_top_k(world):
    folder, seen = world
    with inside(folder):
        both = query.main(["car", "bus", "--out", "both.png"])
        top = query.main(["bus", "--top-k", "50", "--out", "top.png"])
        truth = truth_of(Path.cwd(), "bus")
    assert not both.cached[1] and top.cached == (True,)  # bus made by the first call, reused by the second
    assert set(np.unique(both.match)) <= {UNMATCHED, 0, 1} and (both.match == 1).sum() > 100
    bus = truth[both.scan_id] & seen[both.scan_id]
    assert (bus[both.match == 1]).mean() > 0.9  # precision of "bus" on the pictured scan
    assert (top.match == 0).sum() == 50 and truth[top.scan_id][top.match == 0].all()
    assert (folder / "both.png").is_file() and (folder / "top.png").is_file()


def test_unknown_name_with_the_procedural_source_names_the_diffusers_backend(world):
    folder, _ = world
    with inside(folder), pytest.raises(QueryError, match="prototypes.source: diffusers"):
        query.main(["fire hydrant"])
    assert not (folder / "plots/query/fire_hydrant.png").exists()


def test_missing_point_features_say_which_stage_to_run(world, tmp_path):
    folder, _ = world
    copy = tmp_path / "chain"
    shutil.copytree(folder, copy, symlinks=True, ignore=shutil.ignore_patterns("point_features"))
    with inside(copy), pytest.raises(QueryError, match=r"dvc repro point_features"):
        query.main(["car"])


def test_out_naming_a_folder_writes_inside_it_and_keeps_its_files(world):
    """`python -m stages.query car --out plots` once replaced the folder plots/ with one PNG."""
    folder, _ = world
    with inside(folder):
        Path("pictures").mkdir()
        Path("pictures/keep.png").write_bytes(b"precious")
        outcome = query.main(["car", "--out", "pictures"])
        assert outcome.picture == Path("pictures/car.png") and outcome.picture.is_file()
        assert Path("pictures/keep.png").read_bytes() == b"precious"
