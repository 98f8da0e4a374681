"""Point pre-processing: the shared steps (`students.inputs`: voxels, crop, features, augmentations)
and WaffleIron's own (`waffleiron.inputs`: kNN, cells, batches)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NUSCENES_INTENSITY

from pipeline.students.inputs import (
    Augmentation,
    augment_points,
    back_projection,
    crop_to_fov,
    input_features,
    random_transform,
    voxelize,
)
from pipeline.students.waffleiron.inputs import cell_indices, collate, knn_neighbors, prepare_scan
from pipeline.students.waffleiron.model import WaffleIronConfig

CONFIG = WaffleIronConfig()


def street(num_points: int = 3000, seed: int = 0) -> np.ndarray:
    """A flat-ish random scan (x, y, z, intensity), some of it outside the default FOV."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-80, -80, -3], [80, 80, 5], size=(num_points, 3))
    return np.hstack([xyz, rng.uniform(0, 255, size=(num_points, 1))]).astype(np.float32)


def test_voxelize_keeps_the_first_point_of_each_voxel() -> None:
    # Voxels are measured from the minimum corner (0, 0, 0) here.
    xyz = np.array(
        [
            [0.00, 0.00, 0.00],  # voxel (0,0,0) first
            [0.35, 0.00, 0.00],  # voxel (3,0,0) first
            [0.05, 0.05, 0.05],  # voxel (0,0,0) again
            [0.31, 0.02, 0.09],  # voxel (3,0,0) again
            [0.00, 0.15, 0.00],  # voxel (0,1,0)
        ]
    )
    assert voxelize(xyz, 0.1).tolist() == [0, 1, 4]
    # Shifting the whole scan does not change anything: the grid starts at its minimum.
    assert voxelize(xyz + [-37.12, 5.55, 1.01], 0.1).tolist() == [0, 1, 4]


def test_random_voxelize_keeps_one_point_per_voxel() -> None:
    xyz = street(2000)[:, :3]
    xyz = np.concatenate([xyz, xyz + 0.01])  # every voxel holds a pair (or more)
    first = voxelize(xyz, 0.1)
    kept = voxelize(xyz, 0.1, rng=np.random.default_rng(0))
    assert len(kept) == len(first) and np.all(np.diff(kept) > 0)
    voxels = ((xyz - xyz.min(0)) / 0.1).astype(np.int64)
    assert len(np.unique(voxels[kept], axis=0)) == len(kept)
    assert not np.array_equal(kept, first)  # some voxel picked its second point


def test_crop_is_strictly_inside_the_fov() -> None:
    xyz = np.array([[0, 0, 0], [63.9, -63.9, 7.9], [64.0, 0, 0], [0, 0, -8.0], [70, 0, 0]], dtype=np.float32)
    assert crop_to_fov(xyz, CONFIG.fov).tolist() == [True, True, False, False, False]


def test_input_features_are_intensity_xyz_radius() -> None:
    xyz = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0]])
    features = input_features(xyz, np.array([18.742355, 40.78]), NUSCENES_INTENSITY)
    assert features.dtype == np.float32 and features.shape == (2, 5)
    np.testing.assert_allclose(features[:, 0], [0.0, (40.78 - 18.742355) / 22.04632], rtol=1e-6)
    np.testing.assert_allclose(features[:, 1:4], xyz)
    np.testing.assert_allclose(features[:, 4], [5.0, 2.0])


def test_knn_puts_each_point_first() -> None:
    xyz = street(500)[:, :3]
    xyz[10] = xyz[11]  # an exact duplicate must still list itself first
    neighbors = knn_neighbors(xyz, 17)
    assert neighbors.shape == (500, 17) and neighbors.dtype == np.int64
    assert np.array_equal(neighbors[:, 0], np.arange(500))
    assert 11 in neighbors[10, 1:] and 10 in neighbors[11, 1:]
    # Brute-force check of the neighbour sets.
    distances = np.linalg.norm(xyz[:, None] - xyz[None], axis=2)
    expected = np.sort(distances, axis=1)[:, :17]
    np.testing.assert_allclose(np.sort(np.take_along_axis(distances, neighbors, 1), axis=1), expected, rtol=1e-5)


def test_knn_with_fewer_points_than_k_repeats_self() -> None:
    neighbors = knn_neighbors(np.array([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]), 5)
    assert neighbors.tolist() == [[0, 1, 2, 0, 0], [1, 0, 2, 1, 1], [2, 1, 0, 2, 2]]


def test_cell_indices_follow_the_formula() -> None:
    # Cells are 0.5 m on every grid of the default config.
    xyz = np.array([[-63.99, -63.99, -7.99], [0.2, 0.7, 0.3], [63.99, 63.99, 7.99], [80.0, -80.0, 0.0]])
    cells = cell_indices(xyz, CONFIG)
    assert cells.shape == (3, 4) and cells.dtype == np.int64
    # Grid 0 projects along z: (x, y) on 256 x 256.
    assert cells[0, 0] == 0
    assert cells[0, 1] == 128 * 256 + 129
    assert cells[0, 2] == 255 * 256 + 255
    # Grid 1 projects along y: (x, z) on 256 x 32; grid 2 along x: (y, z) on 256 x 32.
    assert cells[1, 1] == 128 * 32 + 16
    assert cells[2, 1] == 129 * 32 + 16
    # Points outside the FOV are clamped onto the border cells.
    assert cells[0, 3] == 255 * 256 + 0


def test_back_projection_maps_kept_points_to_themselves() -> None:
    xyz = street(1500)[:, :3].astype(np.float64)
    kept = voxelize(xyz, 5.0)
    mapping = back_projection(xyz, xyz[kept])
    assert np.array_equal(mapping[kept], np.arange(len(kept)))
    brute = np.argmin(np.linalg.norm(xyz[:, None] - xyz[kept][None], axis=2), axis=1)
    assert np.array_equal(mapping, brute)


def test_prepare_scan_chains_the_steps() -> None:
    points = street(4000)
    scan = prepare_scan(points, CONFIG, NUSCENES_INTENSITY)
    n = scan.num_points
    inside = crop_to_fov(points[:, :3], CONFIG.fov)
    assert 0 < n == inside.sum()  # sparse random points: every voxel holds one point
    assert np.all(inside[scan.point_index])
    assert scan.features.shape == (n, 5) and scan.neighbors.shape == (n, 17) and scan.cell_indices.shape == (3, n)
    np.testing.assert_allclose(scan.features[:, 1:4], points[scan.point_index, :3])
    assert scan.back_projection.shape == (len(points),)
    assert np.array_equal(scan.back_projection[scan.point_index], np.arange(n))


def test_prepare_scan_rejects_an_empty_fov() -> None:
    with pytest.raises(ValueError, match="field of view"):
        prepare_scan(np.array([[100.0, 0, 0, 1]] * 20), CONFIG, NUSCENES_INTENSITY)
    with pytest.raises(ValueError, match="non-finite"):
        prepare_scan(np.array([[np.nan, 0, 0, 1]] * 20), CONFIG, NUSCENES_INTENSITY)


def test_collate_pads_as_the_reference() -> None:
    scans = [prepare_scan(street(n, seed=n), CONFIG, NUSCENES_INTENSITY) for n in (800, 500)]
    batch = collate(scans, num_points=700)
    sizes = batch.num_points
    assert batch.features.shape == (2, 5, 700)
    assert batch.neighbors.shape == (2, 700, 17)
    assert batch.cell_indices.shape == (2, 3, 700)
    for b, (scan, n) in enumerate(zip(scans, sizes)):
        assert np.array_equal(batch.features[b, :, :n].numpy(), scan.features.T)
        assert np.array_equal(batch.neighbors[b, :n].numpy(), scan.neighbors)
        assert batch.occupancy[b, :n].eq(1).all() and batch.occupancy[b, n:].eq(0).all()
        assert batch.features[b, :, n:].eq(0).all()
        assert batch.cell_indices[b, :, n:].eq(0).all()
        assert batch.neighbors[b, n:].eq(699).all()
    with pytest.raises(ValueError, match="num_points"):
        collate(scans, num_points=10)


def test_augmentations_are_deterministic_for_a_seeded_generator() -> None:
    xyz = street(3000)[:, :3]
    augmentation = Augmentation(max_points=1000)
    first = augment_points(xyz, np.random.default_rng(42), augmentation)
    again = augment_points(xyz, np.random.default_rng(42), augmentation)
    other = augment_points(xyz, np.random.default_rng(43), augmentation)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])

    moved, keep = first
    assert len(keep) == 1000 and np.all(np.diff(keep) > 0)
    # Rotation about z and flips keep the horizontal range and the height up to one scale.
    ratio_xy = np.linalg.norm(moved[:, :2], axis=1) / np.linalg.norm(xyz[keep, :2], axis=1)
    ratio_z = moved[:, 2] / xyz[keep, 2]
    np.testing.assert_allclose(ratio_xy, ratio_xy[0], rtol=1e-4)
    np.testing.assert_allclose(ratio_z, ratio_xy[0], rtol=1e-3)
    assert 0.9 <= ratio_xy[0] <= 1.1


def test_flips_happen_two_thirds_of_the_time() -> None:
    xyz = np.array([[1.0, 2.0, 0.0]])
    augmentation = Augmentation(rotate_z=False, scale_range=0.0)
    rng = np.random.default_rng(0)
    outcomes = [tuple(random_transform(xyz, rng, augmentation)[0, :2]) for _ in range(3000)]
    share = {o: outcomes.count(o) / len(outcomes) for o in set(outcomes)}
    assert set(share) == {(1.0, 2.0), (-1.0, 2.0), (1.0, -2.0)}
    assert all(abs(s - 1 / 3) < 0.04 for s in share.values())


def test_training_preparation_is_random_but_reproducible() -> None:
    points = street(6000, seed=3)
    augmentation = Augmentation(max_points=2000)
    a = prepare_scan(points, CONFIG, NUSCENES_INTENSITY, augmentation=augmentation, rng=np.random.default_rng(7))
    b = prepare_scan(points, CONFIG, NUSCENES_INTENSITY, augmentation=augmentation, rng=np.random.default_rng(7))
    assert np.array_equal(a.features, b.features) and np.array_equal(a.point_index, b.point_index)
    assert a.num_points <= 2000
    # The features describe the augmented cloud, not the raw one.
    assert not np.allclose(a.features[:, 1:4], points[a.point_index, :3])
    with pytest.raises(ValueError, match="rng"):
        prepare_scan(points, CONFIG, NUSCENES_INTENSITY, augmentation=augmentation)
