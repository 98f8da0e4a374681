"""The dataset contract, for every entry of `DATASET_FORMATS`, on the small demo world.

Whatever the format, a split opens through `open_reader`, a scan is float32 (N, 4) points,
labels in its label map's space (or 255), and calibrated cameras; the label map has its
classes and the intensity statistics standardise. The demo world writes each format under
`<world>/<format>` (`small_world` in conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config_loading import ConfigError, build
from pipeline.datasets import DATASET_FORMATS, DatasetConfig, open_reader
from pipeline.datasets.base import IGNORE_LABEL, ScanReader
from pipeline.datasets.base import IntensityStats

FORMATS = sorted(DATASET_FORMATS)


def demo_dataset(small_world, name: str) -> DatasetConfig:
    return DatasetConfig(format=name, root=str(small_world / name), version="v1.0-demo")


@pytest.mark.parametrize("name", FORMATS)
def test_a_scan_keeps_the_record_contract(small_world, name):
    dataset = demo_dataset(small_world, name)
    reader = open_reader(dataset, "val")
    assert isinstance(reader, ScanReader) and len(reader) > 0
    record = reader.read(reader.scan_ids[0])
    assert record.scan_id == reader.scan_ids[0]
    assert record.points.dtype == np.float32 and record.points.ndim == 2 and record.points.shape[1] == 4
    assert len(record.points) > 0 and np.isfinite(record.points).all()
    classes = dataset.label_map().classes
    assert record.labels is not None and record.labels.shape == (len(record.points),)
    known = (record.labels < len(classes)) | (record.labels == IGNORE_LABEL)
    assert known.all() and (record.labels >= 0).all()
    assert record.cameras
    for camera in record.cameras:
        assert camera.intrinsics.shape == (3, 3) and camera.lidar_to_camera.shape == (4, 4)
        assert camera.width > 0 and camera.height > 0 and camera.image_path.is_file()


@pytest.mark.parametrize("name", FORMATS)
def test_label_map_and_intensity_stats(name):
    entry = DATASET_FORMATS[name]
    label_map = entry.label_map()
    assert len(label_map.classes) >= 2 and len(set(label_map.classes)) == len(label_map.classes)
    assert ((label_map.lookup < len(label_map.classes)) | (label_map.lookup == IGNORE_LABEL)).all()
    assert np.isfinite(entry.intensity.mean) and entry.intensity.std > 0
    dataset = DatasetConfig(format=name)
    assert dataset.label_map().classes == label_map.classes
    assert dataset.intensity_stats() == entry.intensity


def test_an_unknown_format_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError) as info:
        build(DatasetConfig, {"format": "waymo"}, "params.yaml: dataset")
    message = str(info.value)
    assert "params.yaml: dataset" in message and "'waymo'" in message
    assert all(name in message for name in DATASET_FORMATS)


def test_reference_intensity_stats():
    assert DATASET_FORMATS["nuscenes"].intensity == IntensityStats(18.742355, 22.04632)
    assert DATASET_FORMATS["semantic_kitti"].intensity == IntensityStats(0.28613698, 0.14090556)
