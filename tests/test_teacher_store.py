"""The teacher-feature store at nuScenes size (issue 16, section 5): the int8 encoding, and
distillation with the teacher run online instead of a store.

int8 keeps each patch row as int8 with a float32 scale (max|x| / 127): the decoded error is at
most half a step, and every reader of `patches` decodes it through
`pipeline.teachers.patch_encoding.read_patch_features`. With `distill.teacher_source: online`,
teacher_features keeps only the patch ids of the distillation split, and distill computes the
targets itself: the same targets as the store's (fp16-rounded), so the same student.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from chain_runner import REPO, inside, run_stage

from pipeline.config_loading import ConfigError
from pipeline.datasets import open_reader
from pipeline.segmentation.data import TeacherPointFeatures
from pipeline.store.ragged import RaggedReader, RaggedWriter
from pipeline.teachers import build_teacher
from pipeline.teachers.patch_encoding import (
    dequantize_int8,
    encode_rows,
    patch_columns,
    patch_feature_dim,
    quantize_int8,
    read_patch_features,
)
from pipeline.training.data import OnlinePatches, SourceLoader
from pipeline.training.recipe import teaching_rows
from stages.common import load_project_params


def edit_params(folder, **sections) -> None:
    """Update keys of params sections in folder/params.yaml, e.g. distill={"teacher_source": "online"}."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] = {**(params.get(name) or {}), **values}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def loader(folder, split: str = "train", online: bool = False, extra: int = 0) -> SourceLoader:
    """The distillation loader of a split of the chain in `folder`; extra: read its first
    teacher's store again as that many extra teachers."""
    params = load_project_params(folder / "params.yaml")
    teacher = build_teacher(params.teacher) if online else None
    dataset = dataclasses.replace(params.dataset, root=str(folder / params.dataset.root))  # not the cwd's
    return SourceLoader(split, open_reader(dataset, split), dataset.intensity_stats(),
                        folder / "cache/assignments" / split, folder / "cache/teacher_features" / split,
                        [folder / "cache/teacher_features" / split] * extra, teacher)


def rerun_in_a_copy(chain: Path, folder: Path, stages: tuple[str, ...], **sections) -> Path:
    """A copy of the small chain at `folder`, its params sections updated, `stages` run again."""
    shutil.copytree(chain, folder, symlinks=True)
    edit_params(folder, **sections)
    with inside(folder):
        for stage in stages:
            run_stage(stage)
    return folder


@pytest.fixture(scope="module")
def int8_chain(chain, tmp_path_factory):
    """The small chain with its teacher features re-encoded as int8, labelled and evaluated again."""
    return rerun_in_a_copy(chain, tmp_path_factory.mktemp("int8") / "chain", ("teacher_features", "label", "evaluate"),
                           teacher_features={"encoding": "int8"})


# ------------------------------------------------------------------------------------ int8


def test_int8_round_trip_is_within_half_a_step_per_row():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 64)).astype(np.float32) * rng.uniform(0.01, 50, size=(300, 1)).astype(np.float32)
    features[7] = 0.0  # an all-zero row: scale 0, decoded exactly
    values, scale = quantize_int8(features)
    assert values.dtype == np.int8 and scale.dtype == np.float32 and scale[7] == 0
    error = np.abs(dequantize_int8(values, scale) - features)
    step = np.abs(features).max(axis=1) / 127
    assert (error <= step[:, None] * (0.5 + 1e-5) + 1e-30).all()  # rounded to nearest, never truncated
    assert error.max(axis=1).mean() > 0.3 * step.mean()  # and it is a real quantisation, not a copy
    assert np.abs(values).max() == 127  # each row's largest magnitude takes the whole range
    np.testing.assert_array_equal(dequantize_int8(values, scale)[7], 0.0)


def test_int8_store_round_trips_through_the_one_reader(tmp_path):
    rng = np.random.default_rng(1)
    scans = {f"scan{i}": rng.normal(size=(2000 + i, 64)).astype(np.float32) for i in range(3)}
    for encoding in ("fp16", "int8"):
        with RaggedWriter(tmp_path / encoding, patch_columns(encoding, 64),
                          attributes={"encoding": encoding, "dim": 64}) as writer:
            for scan_id, features in scans.items():
                writer.append(scan_id, patch_id=np.arange(len(features)), **encode_rows(features, encoding))
        store = RaggedReader(tmp_path / encoding)
        assert patch_feature_dim(store) == 64
        for scan_id, features in scans.items():
            decoded = read_patch_features(store, scan_id)
            if encoding == "fp16":
                np.testing.assert_array_equal(decoded, features.astype(np.float16))
            else:
                assert decoded.dtype == np.float32
                np.testing.assert_array_equal(decoded, dequantize_int8(*quantize_int8(features)))
                assert (np.abs(decoded - features) <= np.abs(features).max(axis=1, keepdims=True) / 254 * 1.0001).all()
    fp16, int8 = (sum(f.stat().st_size for f in (tmp_path / e).rglob("*") if f.is_file()) for e in ("fp16", "int8"))
    assert int8 < 0.7 * fp16, (int8, fp16)


def test_every_reader_decodes_the_int8_store(chain, int8_chain):
    """The distillation loader (first and extra teachers), the segmenters' teacher features and
    the label stage's 2D baseline, each on the int8 store against the fp16 one."""
    params = load_project_params(int8_chain / "params.yaml")
    assert params.teacher_features.encoding == "int8"
    for split in ("train", "val"):
        store = RaggedReader(int8_chain / "cache/teacher_features" / split / "patches")
        assert store.attributes["encoding"] == "int8" and store.columns["feature"].dtype == np.int8
        assert set(store.columns) == {"feature", "scale", "patch_id"}
    # distill: the first teacher's targets and an extra teacher's (the same store read as one)
    fp16, int8 = loader(chain), loader(int8_chain, extra=1)
    assert int8.dims == (192, 192)
    for scan_id in fp16.assignments.scan_ids[:3]:
        rows = np.arange(len(fp16(scan_id).point_index))
        exact, coded = fp16(scan_id).targets(rows), int8(scan_id).targets(rows)
        bound = exact.abs().max() / 254 * 4  # four taps, each at most half a step off (and fp16's rounding)
        assert (coded[:, :192] - exact).abs().max() <= bound
        torch.testing.assert_close(coded[:, 192:], coded[:, :192], rtol=0, atol=0)
        assert not torch.equal(coded[:, :192], exact)  # decoded from int8, not read from the fp16 store
    # the segmenters' teacher point features
    exact = TeacherPointFeatures(chain / "cache/assignments/val", chain / "cache/teacher_features/val")
    coded = TeacherPointFeatures(int8_chain / "cache/assignments/val", int8_chain / "cache/teacher_features/val")
    scan_id = exact.assignments.scan_ids[0]
    (a, seen_a), (b, seen_b) = exact(scan_id, 100_000), coded(scan_id, 100_000)
    np.testing.assert_array_equal(seen_a, seen_b)
    assert np.abs(a - b).max() <= np.abs(a).max() / 254 * 4
    # label's 2D baseline: the same labels on nearly every point
    exact, coded = (RaggedReader(f / "cache/predictions/val") for f in (chain, int8_chain))
    same = total = 0
    for scan_id in exact.scan_ids:
        x, y = exact.read(scan_id)["baseline"], coded.read(scan_id)["baseline"]
        same, total = same + int((x == y).sum()), total + len(x)
    assert same / total > 0.99, same / total


def test_a_bad_encoding_or_teacher_source_names_its_key(tmp_path):
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, key, value in (("teacher_features", "encoding", "int4"), ("distill", "teacher_source", "disk")):
        params = {**base, section: {**base[section], key: value}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with pytest.raises(ConfigError, match=rf"{section}\.{key}: '{value}' is not allowed"):
            load_project_params(tmp_path / "params.yaml")


# ------------------------------------------------------------------------------------ online


@pytest.fixture(scope="module")
def online_chain(chain, tmp_path_factory):
    """The small chain's teacher_features and distill rerun with `distill.teacher_source: online`."""
    return rerun_in_a_copy(chain, tmp_path_factory.mktemp("online") / "chain", ("teacher_features", "distill"),
                           distill={"teacher_source": "online"})


def test_online_targets_are_the_stores(chain, online_chain):
    """The rows a ScaLR+ step teaches (one camera per scan): the online teacher encodes that one
    camera, and its targets equal the cached path's bit for bit (the store is fp16, and so is the
    online feature; the demo teacher's forward does not depend on the batch it is in)."""
    cached, online = loader(chain), loader(online_chain, online=True)
    rng = np.random.default_rng(0)
    for scan_id in cached.assignments.scan_ids:
        stored, computed = cached(scan_id), online(scan_id)
        rows = teaching_rows(stored.point_index, stored.camera, "per_scan_epoch", rng)
        if not len(rows):
            continue
        assert torch.equal(computed.targets(rows), stored.targets(rows)), scan_id
        assert isinstance(computed.patch_features, OnlinePatches) and computed.patch_features.images == 1
        everything = np.arange(len(stored.point_index))  # then the other cameras, once each
        assert torch.equal(computed.targets(everything), stored.targets(everything))
        assert computed.patch_features.images == len(np.unique(stored.camera))


def test_online_distill_keeps_no_distillation_features_and_trains_the_same_student(chain, online_chain):
    train = RaggedReader(online_chain / "cache/teacher_features/train/patches")
    assert train.attributes["encoding"] == "none" and set(train.columns) == {"patch_id"}
    original = RaggedReader(chain / "cache/teacher_features/train/patches")
    for scan_id in original.scan_ids:  # the taps still point into the same patch ids
        np.testing.assert_array_equal(train.read(scan_id)["patch_id"], original.read(scan_id)["patch_id"])
    size = {f: sum(p.stat().st_size for p in (f / "cache/teacher_features/train").rglob("*") if p.is_file())
            for f in (chain, online_chain)}
    assert size[online_chain] < 0.2 * size[chain], size
    val = RaggedReader(online_chain / "cache/teacher_features/val/patches")  # the 2D baseline's split: in full
    assert val.attributes["encoding"] == "fp16"
    scan_id = val.scan_ids[0]
    np.testing.assert_array_equal(read_patch_features(val, scan_id),
                                  read_patch_features(RaggedReader(chain / "cache/teacher_features/val/patches"),
                                                      scan_id))
    # the same targets, so the same training: every step's loss as the store's run
    assert ((online_chain / "plots/distill/train_loss.csv").read_text()
            == (chain / "plots/distill/train_loss.csv").read_text())


def test_distill_from_a_store_without_features_names_the_param(online_chain, tmp_path):
    folder = tmp_path / "chain"
    shutil.copytree(online_chain, folder, symlinks=True)
    edit_params(folder, distill={"teacher_source": "store"})
    with inside(folder), pytest.raises(ValueError, match=r"holds no teacher features.*distill\.teacher_source"):
        run_stage("distill")
    with pytest.raises(ValueError, match=r"patches: holds no teacher features.*distill\.teacher_source: store"):
        TeacherPointFeatures(folder / "cache/assignments/train", folder / "cache/teacher_features/train")(
            RaggedReader(folder / "cache/assignments/train").scan_ids[0], 100_000)


def test_online_distill_with_extra_teachers_is_refused(chain, tmp_path):
    folder = tmp_path / "chain"
    shutil.copytree(chain, folder, symlinks=True)
    two = yaml.safe_load((REPO / "presets/two-teachers.yaml").read_text())
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params.update(extra_teachers=two["extra_teachers"], student=two["student"])
    params["distill"]["teacher_source"] = "online"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with inside(folder), pytest.raises(ConfigError, match=r"distill\.teacher_source: online runs the first teacher"):
        run_stage("distill")
