"""Distillation over several datasets at once (ScaLR+ merged nuScenes, SemanticKITTI and PandaSet):
the demo world's two formats, each with its own intensity standardisation."""

from __future__ import annotations

import shutil

import pytest
import yaml
from chain_runner import inside, run_stage, small_params, write_params

from stages.common import load_project_params
from pipeline.config_loading import ConfigError
from pipeline.store.ragged import RaggedReader
from pipeline.datasets import DATASET_FORMATS
from stages.common import distill_sources, split_sources

KITTI = {"format": "semantic_kitti", "root": "data/demo/semantic_kitti", "distill_split": "train"}


def with_kitti(folder, chain) -> dict:
    shutil.copytree(chain, folder, symlinks=True)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["distill_datasets"] = {"kitti": KITTI}
    write_params(folder, params)
    return params


def test_sources_name_their_folders(chain, tmp_path):
    with_kitti(tmp_path / "chain", chain)
    params = load_project_params(tmp_path / "chain/params.yaml")
    assert [s.key for s in split_sources(params)] == ["train", "val", "train@kitti"]
    assert [s.key for s in distill_sources(params)] == ["train", "train@kitti"]
    kitti = distill_sources(params)[1]
    assert kitti.dataset.intensity_stats() == DATASET_FORMATS["semantic_kitti"].intensity
    assert params.dataset.intensity_stats() == DATASET_FORMATS["nuscenes"].intensity


def test_two_formats_distil_together(chain, tmp_path, capsys):
    folder = tmp_path / "chain"
    with_kitti(folder, chain)
    with inside(folder):
        for stage in ("assignments", "teacher_features"):
            run_stage(stage)
        from stages.distill import distillation_set

        params = load_project_params("params.yaml")
        data = distillation_set(params)
        nuscenes_scans = len(RaggedReader("cache/assignments/train"))
        kitti_scans = len(RaggedReader("cache/assignments/train@kitti"))
        assert kitti_scans > 0 and len(data.scan_ids) == nuscenes_scans + kitti_scans
        kitti_id = next(s for s in data.scan_ids if s.startswith("train@kitti/"))
        sample = data(kitti_id)
        assert sample.intensity_stats == DATASET_FORMATS["semantic_kitti"].intensity
        assert len(sample.point_index) == len(RaggedReader("cache/assignments/train@kitti")
                                              .read(kitti_id.split("/", 1)[1])["point_index"])
        assert data(data.scan_ids[0]).intensity_stats == DATASET_FORMATS["nuscenes"].intensity
        capsys.readouterr()
        run_stage("distill")
    steps = (folder / "plots/distill/train_loss.csv").read_text().splitlines()[1:]
    batch = params.distill.batch_size
    assert len(steps) == params.distill.epochs * -(-(nuscenes_scans + kitti_scans) // batch)
    assert f"read: train {nuscenes_scans} scans, train@kitti {kitti_scans} scans" in capsys.readouterr().err
    # The evaluation side is untouched: the val split's stores are those of the plain chain.
    assert (folder / "cache/assignments/val").is_dir() and not (folder / "cache/assignments/val@kitti").exists()


def test_a_bad_dataset_name_is_refused(tmp_path):
    data = small_params()
    data["distill_datasets"] = {"kitti/odometry": KITTI}
    path = write_params(tmp_path, data)
    with pytest.raises(ConfigError, match=r"distill_datasets.kitti/odometry: a name of letters"):
        load_project_params(path)
