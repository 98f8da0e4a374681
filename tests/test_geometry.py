import numpy as np

from pipeline.datasets.base import CameraView
from pipeline.geometry import pixel_to_patch, project_to_cameras


def forward_camera(name="front", yaw_deg=0.0, width=100, height=50):
    """A camera at the lidar origin looking along lidar +x rotated by yaw (x right, y down, z forward)."""
    yaw = np.deg2rad(yaw_deg)
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    transform = np.eye(4)
    transform[:3, :3] = np.stack([right, down, forward])
    intrinsics = np.array([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]])
    return CameraView(name, "unused.png", intrinsics, transform, width, height)


def test_projects_known_points_into_each_camera():
    xyz = np.array([[10.0, 0, 0], [10.0, 2, 1], [0.5, 0, 0], [-10.0, 0, 0], [0, 10.0, 0]])
    cameras = [forward_camera("front", 0), forward_camera("left", 90)]
    pairs = project_to_cameras(xyz, cameras, min_depth=1.0)
    assert pairs.camera_index.tolist() == [0, 0, 1]
    assert pairs.point_index.tolist() == [0, 1, 4]
    np.testing.assert_allclose(pairs.pixel[0], [50, 25])
    # y=+2 is to the left of a forward camera, z=+1 is up: u = 50 - 50*2/10, v = 25 - 50*1/10
    np.testing.assert_allclose(pairs.pixel[1], [40, 20])
    np.testing.assert_allclose(pairs.depth, [10, 10, 10])


def test_image_bounds_are_strict():
    cameras = [forward_camera(width=100, height=50)]
    # u = 50 - 5 * y for x = 10: y = 10 -> u = 0 (dropped), y = -9.8 -> u = 99 (dropped: u < W - 1)
    xyz = np.array([[10.0, 10.0, 0], [10.0, -9.8, 0], [10.0, -9.7, 0]])
    pairs = project_to_cameras(xyz, cameras)
    assert pairs.point_index.tolist() == [2]


def test_pixel_to_patch_rescales_to_the_teacher_input():
    pixel = np.array([[0.5, 0.5], [399.9, 224.9], [200.0, 100.0]])
    patches = pixel_to_patch(pixel, image_size=(225, 400), input_size=(112, 224), patch_size=14)
    assert patches.tolist() == [[0, 0], [7, 15], [3, 8]]
