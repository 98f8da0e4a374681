"""The distillation recipe (ScaLR+, DITR or our first one): every (point, camera) pair is kept,
training picks the camera and the points by the rule of `distill.camera` / `distill.points`,
the `max_points` cap is a ball or a uniform subsample, and the schedule and `drop_last` are the
reference's. Each test checks the rule itself, recomputed here, not a stored answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from chain_runner import REPO
from conftest import NUSCENES_INTENSITY, TINY_WAFFLEIRON, street

from pipeline.assignments import assign_points
from stages.common import load_project_params
from pipeline.datasets.nuscenes import NuScenesReader
from pipeline.students.inputs import Augmentation, augment_points, ball_crop
from pipeline.training.config import DistillConfig
from pipeline.training.data import DistillSample, StoredPatches
from pipeline.training.loop import distill_student
from pipeline.training.recipe import training_view
from pipeline.training.sampling import global_batches, steps_per_epoch
from pipeline.training.schedule import build_optimizer, lr_factor

INPUT_SIZE, PATCH, MIN_DEPTH = (448, 784), 14, 1.0


def projected_pairs(record) -> set[tuple[int, int]]:
    """The reference's visibility rule, written out: depth > 1 m, 0 < u < W-1, 0 < v < H-1."""
    xyz1 = np.hstack([record.points[:, :3].astype(np.float64), np.ones((len(record.points), 1))])
    pairs = set()
    for c, camera in enumerate(record.cameras):
        cam = xyz1 @ camera.lidar_to_camera.T
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uvw = cam[:, :3] @ camera.intrinsics.T
            u, v = uvw[:, 0] / depth, uvw[:, 1] / depth
        inside = (depth > MIN_DEPTH) & (u > 0) & (u < camera.width - 1) & (v > 0) & (v < camera.height - 1)
        pairs |= {(int(p), c) for p in np.flatnonzero(inside)}
    return pairs


@pytest.fixture(scope="module")
def scan(small_world):
    reader = NuScenesReader(small_world / "nuscenes", "v1.0-demo", "train")
    record = reader.read(reader.scan_ids[0])
    return record, assign_points(record, INPUT_SIZE, PATCH, MIN_DEPTH)


def sample_of(points: np.ndarray, point_index: np.ndarray, camera: np.ndarray, dim: int = 8) -> DistillSample:
    """A training sample whose row r is taught the one-hot-ish feature r (targets are not checked here)."""
    rows = len(point_index)
    return DistillSample(points=points, intensity_stats=NUSCENES_INTENSITY,
                         point_index=point_index.astype(np.int64), camera=camera.astype(np.int64),
                         patch_features=StoredPatches(torch.randn(max(rows, 1), dim,
                                                                  generator=torch.Generator().manual_seed(0))),
                         tap=torch.from_numpy(np.repeat(np.arange(rows, dtype=np.int32)[:, None], 4, axis=1)),
                         weight=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(rows, 1))


def test_assignments_keep_every_visible_pair_sorted_by_point_then_camera(scan):
    record, assigned = scan
    rows = list(zip(assigned.point_index.tolist(), assigned.camera.tolist()))
    assert set(rows) == projected_pairs(record) and len(rows) == len(set(rows))
    assert rows == sorted(rows)
    counts = np.bincount(assigned.point_index)
    assert (counts > 1).sum() > 0.02 * (counts > 0).sum(), "the demo cameras overlap: some points have 2 rows"


def test_per_scan_epoch_sees_exactly_the_points_of_one_camera_drawn_again_every_epoch(scan):
    record, assigned = scan
    sample = sample_of(record.points, assigned.point_index, assigned.camera)
    config = DistillConfig(camera="per_scan_epoch", points="taught", seed=3)
    pairs = projected_pairs(record)
    chosen = []
    for epoch in range(8):
        view = training_view(sample, config, epoch, scan_index=5)
        (camera,) = np.unique(sample.camera[view.target_row])  # one camera teaches every point
        in_camera = sorted(p for p, c in pairs if c == camera)
        # The network sees exactly the points that project into that camera, each taught by it.
        np.testing.assert_array_equal(view.points, record.points[in_camera])
        np.testing.assert_array_equal(sample.point_index[view.target_row], in_camera)
        again = training_view(sample, config, epoch, scan_index=5)  # a pure function of (seed, epoch, scan)
        np.testing.assert_array_equal(again.target_row, view.target_row)
        chosen.append(int(camera))
    assert len(set(chosen)) > 1, f"8 epochs drew one camera: {chosen}"


@pytest.mark.parametrize("rule", ["per_point_fixed", "per_point_epoch"])
def test_per_point_rules_teach_every_seen_point_once_by_one_of_its_cameras(scan, rule):
    record, assigned = scan
    sample = sample_of(record.points, assigned.point_index, assigned.camera)
    config = DistillConfig(camera=rule, points="scan")
    pairs = projected_pairs(record)
    seen = sorted({p for p, _ in pairs})
    views = [training_view(sample, config, epoch, scan_index=2) for epoch in range(3)]
    for view in views:
        np.testing.assert_array_equal(view.points, record.points)  # the whole scan
        taught = np.flatnonzero(view.target_row >= 0)
        np.testing.assert_array_equal(taught, seen)
        rows = view.target_row[taught]
        np.testing.assert_array_equal(sample.point_index[rows], taught)  # each point's own row
        assert {(int(p), int(c)) for p, c in zip(taught, sample.camera[rows])} <= pairs
    multi = np.flatnonzero(np.bincount(sample.point_index, minlength=len(record.points)) > 1)
    cameras = [sample.camera[view.target_row[multi]] for view in views]
    assert len(np.unique(cameras[0])) > 1, "a random camera per point, not one for all"
    if rule == "per_point_fixed":
        assert all(np.array_equal(cameras[0], other) for other in cameras[1:])
    else:
        assert not np.array_equal(cameras[0], cameras[1])


def test_a_scan_no_camera_sees_is_seen_whole_and_teaches_nothing():
    points = street(500)
    empty = np.zeros(0, dtype=np.int64)
    view = training_view(sample_of(points, empty, empty), DistillConfig(), epoch=0, scan_index=0)
    assert len(view.points) == 500 and (view.target_row == -1).all()


def test_ball_crop_keeps_exactly_the_nearest_points_to_a_drawn_centre():
    xyz = street(3000)[:, :3]
    centres = set()
    for seed in range(4):
        keep = ball_crop(xyz, 700, np.random.default_rng(seed))
        centre = xyz[np.random.default_rng(seed).integers(len(xyz))]  # the draw ball_crop makes
        distance = np.linalg.norm(xyz - centre, axis=1)
        dropped = np.setdiff1d(np.arange(len(xyz)), keep)
        assert len(keep) == 700 and np.all(np.diff(keep) > 0)
        assert distance[keep].max() <= distance[dropped].min()
        centres.add(tuple(centre))
    assert len(centres) == 4
    assert len(ball_crop(xyz, 5000, np.random.default_rng(0))) == 3000  # fewer points: all kept


def test_the_training_augmentation_cuts_by_the_chosen_cap():
    xyz = street(3000)[:, :3]
    _, ball = augment_points(xyz, np.random.default_rng(1), Augmentation(max_points=700, cap="ball"))
    np.testing.assert_array_equal(ball, ball_crop(xyz, 700, np.random.default_rng(1)))
    _, uniform = augment_points(xyz, np.random.default_rng(1), Augmentation(max_points=700, cap="uniform"))
    assert len(uniform) == 700
    spread = lambda keep: np.ptp(xyz[keep, :2], axis=0).min()  # noqa: E731
    assert spread(uniform) > 2 * spread(ball), "a uniform subsample spans the scan, a ball does not"


def test_reference_schedule_equals_the_closed_form():
    """ScaLR+: warm-up k / W, rsqrt with timescale T, and from C the lr at C falls linearly to 0."""
    config = DistillConfig(schedule="reference")  # 65 epochs, W = 1 epoch, T = 0.45 epoch, C = epoch 63
    spe = 100
    W, T, C, E = 100, 45, 6300, 6500

    def rsqrt(k):
        return 1 / math.sqrt(1 + (k - W) / T)

    assert lr_factor(0, spe, config) == 0.0
    assert lr_factor(W - 1, spe, config) == pytest.approx((W - 1) / W)
    assert lr_factor(W, spe, config) == 1.0
    assert lr_factor(W + T, spe, config) == pytest.approx(1 / math.sqrt(2))
    assert lr_factor(C, spe, config) == pytest.approx(rsqrt(C))
    assert lr_factor((C + E) // 2, spe, config) == pytest.approx(rsqrt(C) / 2)  # linear in the step
    assert lr_factor(E - 1, spe, config) == pytest.approx(rsqrt(C) / (E - C))
    assert lr_factor(E, spe, config) == 0.0
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = build_optimizer(model, config, spe)
    seen = []
    for _ in range(W + 1):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == 0.0 and seen[W - 1] == pytest.approx(0.002 * (W - 1) / W) and seen[W] == pytest.approx(0.002)


def test_drop_last_drops_the_last_partial_batch():
    order = np.random.default_rng(0).permutation(10)
    kept = global_batches(order, 4, drop_last=True)
    assert [len(b) for b in kept] == [4, 4] and np.array_equal(np.concatenate(kept), order[:8])
    assert [len(b) for b in global_batches(order, 4, drop_last=False)] == [4, 4, 2]
    assert (steps_per_epoch(10, 4, True), steps_per_epoch(10, 4, False), steps_per_epoch(8, 4, True)) == (2, 3, 2)


@pytest.mark.parametrize("drop_last, steps", [(True, 1), (False, 2)])
def test_the_loop_drops_the_last_partial_batch(drop_last, steps):
    """3 scans, batch 2: one step an epoch with drop_last, two without (the ScaLR+ recipe otherwise)."""
    scans = []
    for seed in range(3):
        points = street(1500, seed)
        left, right = np.flatnonzero(points[:, 0] < 2), np.flatnonzero(points[:, 0] > -2)  # two overlapping cameras
        pairs = sorted([(int(p), 0) for p in left] + [(int(p), 1) for p in right])
        point_index, camera = (np.array(column) for column in zip(*pairs))
        scans.append(sample_of(points, point_index, camera, dim=TINY_WAFFLEIRON.out_channels))
    torch.manual_seed(0)
    config = DistillConfig(epochs=2, batch_size=2, warmup_epochs=0, cooldown_epochs=0, max_points=400,
                           drop_last=drop_last)
    history = distill_student(TINY_WAFFLEIRON.build(), ["a", "b", "c"], lambda s: scans["abc".index(s)], config,
                              torch.device("cpu"))
    assert [r.epoch for r in history] == [0] * steps + [1] * steps
    assert all(r.pairs > 0 for r in history)


@pytest.mark.parametrize("name", ["nuscenes", "nuscenes-mini", "semantic_kitti"])
def test_real_presets_use_the_scalr_recipe(name):
    params = load_project_params(REPO / "presets" / f"{name}.yaml")
    d = params.distill
    assert (d.camera, d.points, d.cap, d.schedule, d.drop_last) == ("per_scan_epoch", "taught", "ball", "reference", True)
    assert (d.epochs, d.batch_size, d.max_points, d.cooldown_start_epoch) == (65, 8, 20000, 63)
    assert params.teacher.input_size == (448, 896)
    assert params.assignments.occlusion_cell == 0
