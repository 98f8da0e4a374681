"""The benchmark suite: a quick smoke run writes the report, and every agreement check can fail.

Nothing here is timed: the smoke run uses tiny sizes and two runs per figure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` lives beside the packages

from bench import projection  # noqa: E402
from bench.__main__ import main  # noqa: E402
from bench.common import cosine_check, linear_fit  # noqa: E402
from bench.vocabulary import compare_labels  # noqa: E402
from pipeline.datasets.nuscenes import NuScenesReader  # noqa: E402
from pipeline.geometry import PointPixels  # noqa: E402

VERSION = "v1.0-demo"


@pytest.fixture(scope="module")
def quick_report(small_world, tmp_path_factory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("bench")
    return main(["--quick", "--out", str(out), "--world", str(small_world)]), out


def test_quick_run_writes_the_report(quick_report):
    status, out = quick_report
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert report["errors"] == []
    assert status == 0
    titles = [section["title"] for section in report["sections"]]
    assert len(titles) == 6
    for title in titles:
        assert f"## {title}" in markdown
    rows = [row for section in report["sections"] for row in section["rows"]]
    measured = [row for row in rows if row["ours"] is not None]
    assert measured and all(len(row["ours"]["wall"]) == 2 for row in measured)
    compared = [row for row in rows if row["baseline"] is not None]
    assert len(compared) >= 5 and all(row["ratio"] > 0 for row in compared)
    assert all(check["passed"] for row in rows for check in row["checks"] if check["kind"] == "agreement")
    assert "## Targets" in markdown and ">= 10x faster per scan" in markdown


def test_a_wrong_projection_fails_the_run(small_world, tmp_path, monkeypatch):
    """A 'faster' projection that moved every pixel by 0.01 px is caught, and the exit status says so."""
    exact = projection.our_pairs

    def shifted(reader, scan_id, min_depth=projection.MIN_DEPTH):
        pairs = exact(reader, scan_id, min_depth)
        return PointPixels(pairs.point_index, pairs.camera_index, pairs.pixel + 0.01, pairs.depth)

    monkeypatch.setattr(projection, "our_pairs", shifted)
    status = main(["--quick", "--out", str(tmp_path), "--world", str(small_world), "--only", "projection"])
    assert status == 1
    report = json.loads((tmp_path / "report.json").read_text())
    (row,) = report["sections"][0]["rows"]
    assert not row["agrees"] and row["target_met"] is False
    assert "FAILED" in (tmp_path / "report.md").read_text()


def test_projection_check_catches_missing_pairs_and_ego_motion(small_world):
    reader = NuScenesReader(small_world / "nuscenes", VERSION, "val")
    scan_id = reader.scan_ids[0]
    sizes = projection.camera_sizes(reader, scan_id)
    reference = projection.reference_pairs(reader, scan_id)
    ours = projection.our_pairs(reader, scan_id)
    assert projection.compare_pairs(ours, reference, sizes).check(1).passed
    central = int(np.argmin(np.abs(ours.pixel[:, 0] - sizes[ours.camera_index, 0] / 2)))  # far from any bound
    dropped = projection.compare_pairs(ours.take(np.arange(len(ours)) != central), reference, sizes)
    assert dropped.missing == 1 and not dropped.check(1).passed
    no_ego_motion = NuScenesReader(small_world / "nuscenes", VERSION, "val", ego_motion_compensation=False)
    assert not projection.check_scans([no_ego_motion], projection.our_pairs).passed


def test_feature_and_label_checks_fail_on_wrong_outputs():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((50, 16))
    assert cosine_check("same", features, features + 1e-9, 0.999).passed
    assert not cosine_check("one row flipped", np.vstack([-features[:1], features[1:]]), features, 0.999).passed
    assert not cosine_check("shape", features[:, :8], features, 0.999).passed
    labels = [rng.integers(0, 5, 100), rng.integers(0, 5, 80)]
    assert compare_labels(labels, [l.copy() for l in labels]).passed
    wrong = [labels[0].copy(), labels[1].copy()]
    wrong[1][3] = (wrong[1][3] + 1) % 5
    assert not compare_labels(labels, wrong).passed
    assert not compare_labels(labels, labels[:1]).passed


def test_linearity_criterion():
    sizes = [5000, 10000, 20000, 35000, 70000]
    assert linear_fit(sizes, [0.01 + 2e-6 * n for n in sizes]).linear
    assert not linear_fit(sizes, [1e-9 * n * n for n in sizes]).linear
