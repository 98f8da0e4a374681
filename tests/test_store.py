"""Artifact I/O: atomic outputs, deterministic safetensors, the ragged zarr store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.store.atomic import atomic_output, save_json
from pipeline.store.ragged import (
    Chunking,
    ColumnSpec,
    RaggedPartWriter,
    RaggedReader,
    RaggedWriter,
    finish_ragged,
)
from pipeline.store.safetensors import load_safetensors, read_safetensors_metadata, save_safetensors

COLUMNS = {
    "point_index": ("int32", ()),
    "camera": ("uint8", ()),
    "feature": ColumnSpec(np.float16, (8,)),
}
# Tiny chunks (64 rows of int32, 16 rows of features) so scans span several shards.
SMALL = dict(chunk_bytes=256, chunks_per_shard=2)


def _scans(seed: int = 0, count: int = 7) -> list[tuple[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    scans = []
    for i in range(count):
        n = [0, 1, 50, 300, 33, 129, 7][i % 7]
        scans.append((f"scene-{i}/frame", {
            "point_index": rng.integers(0, 10**6, n).astype(np.int64),  # cast to int32 on write
            "camera": rng.integers(0, 6, n).astype(np.uint8),
            "feature": rng.standard_normal((n, 8)).astype(np.float32),  # cast to fp16
        }))
    return scans


def _write(path: Path, scans, **kwargs) -> Path:
    with RaggedWriter(path, COLUMNS, attributes={"teacher": "tiny", "dim": 8}, **kwargs) as writer:
        for scan_id, arrays in scans:
            writer.append(scan_id, **arrays)
    return path


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- atomic


def test_atomic_output_file_and_directory(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_text("one")
    assert target.read_text() == "one"
    with atomic_output(target) as tmp:  # replaces an existing file
        tmp.write_text("two")
    assert target.read_text() == "two"

    folder = tmp_path / "dir"
    for content in ("first", "second"):  # replaces an existing directory
        with atomic_output(folder) as tmp:
            tmp.mkdir()
            (tmp / "x").write_text(content)
    assert (folder / "x").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "sub"]


def test_atomic_output_error_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_output(target):
            pass


def test_save_json(tmp_path):
    save_json(tmp_path / "m.json", {"b": 1, "a": None})
    assert json.loads((tmp_path / "m.json").read_text()) == {"b": 1, "a": None}
    with pytest.raises(ValueError):
        save_json(tmp_path / "bad.json", {"x": float("nan")})
    assert not (tmp_path / "bad.json").exists()


# --------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_and_deterministic_bytes(tmp_path):
    tensors = {"features": np.arange(12, dtype=np.float32).reshape(3, 4),
               "labels": np.array([0, 2, 1], dtype=np.int64)}
    metadata = {f"key{i}": f"value{i}" for i in range(30)}
    metadata["class_names"] = ["car", "road"]
    save_safetensors(tmp_path / "a.safetensors", tensors, metadata)
    save_safetensors(tmp_path / "b.safetensors", dict(reversed(tensors.items())),
                     dict(reversed(metadata.items())))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()

    loaded, meta = load_safetensors(tmp_path / "a.safetensors")
    for key, value in tensors.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert json.loads(meta["class_names"]) == ["car", "road"] and meta["key7"] == "value7"
    assert read_safetensors_metadata(tmp_path / "a.safetensors") == meta

    state = {"w": torch.randn(2, 3, dtype=torch.bfloat16), "b": np.zeros(2, np.float32)}
    save_safetensors(tmp_path / "t.safetensors", state, {"epoch": 3})
    loaded, meta = load_safetensors(tmp_path / "t.safetensors", framework="torch")
    assert torch.equal(loaded["w"], state["w"]) and meta == {"epoch": "3"}


# --------------------------------------------------------------------------- ragged


def test_ragged_round_trip(tmp_path):
    scans = _scans()
    reader = RaggedReader(_write(tmp_path / "store", scans, **SMALL))
    assert len(reader) == len(scans) and reader.scan_ids == tuple(s for s, _ in scans)
    assert reader.attributes == {"dim": 8, "teacher": "tiny"}
    assert reader.num_rows == sum(len(a["camera"]) for _, a in scans)
    assert reader.columns["feature"] == ColumnSpec(np.float16, (8,))
    for scan_id, arrays in scans:
        got = reader.read(scan_id)
        assert got["point_index"].dtype == np.int32 and got["feature"].dtype == np.float16
        np.testing.assert_array_equal(got["point_index"], arrays["point_index"])
        np.testing.assert_array_equal(got["camera"], arrays["camera"])
        np.testing.assert_array_equal(got["feature"], arrays["feature"].astype(np.float16))
    assert reader.read(scans[3][0], columns=["camera"]).keys() == {"camera"}
    for (scan_id, arrays), (read_id, got) in zip(scans, reader.iter_scans(block_bytes=200)):
        assert read_id == scan_id
        np.testing.assert_array_equal(got["point_index"], arrays["point_index"])
    with pytest.raises(KeyError, match="not in"):
        reader.read("missing")


def test_ragged_unsharded_and_empty(tmp_path):
    scans = _scans(count=4)
    reader = RaggedReader(_write(tmp_path / "plain", scans, chunk_bytes=256, chunks_per_shard=None))
    np.testing.assert_array_equal(reader.read(scans[3][0])["camera"], scans[3][1]["camera"])
    empty = RaggedReader(_write(tmp_path / "empty", []))
    assert len(empty) == 0 and empty.num_rows == 0 and list(empty.iter_scans()) == []


def test_partial_read_touches_only_its_chunks(tmp_path):
    scans = _scans()
    path = _write(tmp_path / "store", scans, **SMALL)
    reader = RaggedReader(path)
    # Shards of point_index hold 128 rows; corrupt every shard the 4th scan (rows 51..350)
    # does not touch. Reading it must still work; reading a scan in a corrupt shard fails.
    start, stop = reader.offsets[3], reader.offsets[4]
    touched = set(range(start // 128, (stop - 1) // 128 + 1))
    shards = sorted((path / "0" / "point_index" / "c").iterdir(), key=lambda p: int(p.name))
    assert len(shards) > len(touched)
    for shard in shards:
        if int(shard.name) not in touched:
            shard.write_bytes(b"corrupt")
    fresh = RaggedReader(path)
    np.testing.assert_array_equal(fresh.read(scans[3][0])["point_index"], scans[3][1]["point_index"])
    with pytest.raises(Exception):
        fresh.read(scans[5][0])


def test_ragged_error_leaves_no_store(tmp_path):
    path = tmp_path / "store"
    with pytest.raises(RuntimeError, match="interrupted"):
        with RaggedWriter(path, COLUMNS, **SMALL) as writer:
            for scan_id, arrays in _scans():
                writer.append(scan_id, **arrays)
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_ragged_identical_bytes_for_identical_input(tmp_path):
    first = _tree_bytes(_write(tmp_path / "a", _scans(), **SMALL))
    second = _tree_bytes(_write(tmp_path / "b", _scans(), **SMALL))
    assert first.keys() == second.keys() and len(first) > 5
    assert first == second


def test_ragged_rejects_bad_input(tmp_path):
    with RaggedWriter(tmp_path / "s", COLUMNS) as writer:
        good = _scans()[2][1]
        writer.append("a", **good)
        with pytest.raises(ValueError, match="twice"):
            writer.append("a", **good)
        with pytest.raises(ValueError, match="expected"):
            writer.append("b", camera=good["camera"])
        with pytest.raises(ValueError, match="differ in length"):
            writer.append("c", **{**good, "camera": good["camera"][:3]})
        with pytest.raises(ValueError, match="do not fit uint8"):
            writer.append("d", **{**good, "camera": good["camera"].astype(np.int64) + 300})
        with pytest.raises(ValueError, match="shape"):
            writer.append("e", **{**good, "feature": good["feature"][:, :4]})
    assert RaggedReader(tmp_path / "s").scan_ids == ("a",)
    with pytest.raises(ValueError, match="bad column name"):
        RaggedWriter(tmp_path / "t", {"0": ("int64", ())})  # digits name blocks


# --------------------------------------------------------------------------- blocks


def test_blocks_round_trip(tmp_path):
    scans = _scans(count=11)
    reader = RaggedReader(_write(tmp_path / "store", scans, scans_per_block=3, **SMALL))
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["0", "1", "2", "3", "zarr.json"]
    assert reader.scan_ids == tuple(s for s, _ in scans)
    assert list(np.diff(reader.offsets)) == [len(a["camera"]) for _, a in scans]
    for scan_id, arrays in scans:
        np.testing.assert_array_equal(reader.read(scan_id)["feature"], arrays["feature"].astype(np.float16))
    for block_bytes in (1, 200, 1 << 20):  # runs stop at block ends, whatever their budget
        got = list(reader.iter_scans(["point_index"], block_bytes=block_bytes))
        assert [s for s, _ in got] == list(reader.scan_ids)
        for (_, arrays), (_, read) in zip(scans, got):
            np.testing.assert_array_equal(read["point_index"], arrays["point_index"])


def test_part_writers_make_the_single_writer_bytes(tmp_path):
    scans = _scans(count=11)
    ids = [s for s, _ in scans]
    single = _write(tmp_path / "single", scans, scans_per_block=3, **SMALL)
    parts = tmp_path / "parts"
    for blocks in ([1, 3], [0, 2]):  # two writers, any order, disjoint whole blocks
        with RaggedPartWriter(parts, COLUMNS, ids, 3, Chunking(chunk_bytes=256, chunks_per_shard=2)) as part:
            for block in blocks:
                for scan_id, arrays in scans[3 * block:3 * block + 3]:
                    part.append(scan_id, **arrays)
    assert finish_ragged(parts, COLUMNS, ids, 3, {"teacher": "tiny", "dim": 8}) == RaggedReader(single).num_rows
    assert _tree_bytes(parts) == _tree_bytes(single)


def test_finish_rejects_missing_or_short_blocks(tmp_path):
    scans = _scans(count=8)  # blocks of 3: scans 0-2, 3-5, 6-7
    ids = [s for s, _ in scans]
    with RaggedPartWriter(tmp_path / "short", COLUMNS, ids, 3) as part:
        for scan_id, arrays in scans[:5]:  # block 1 stops short
            part.append(scan_id, **arrays)
        with pytest.raises(ValueError, match="not the first of block 2"):
            part.append(ids[7], **scans[7][1])
        with pytest.raises(ValueError, match="not one of the store's scans"):
            part.append("stranger", **scans[7][1])
    with pytest.raises(ValueError, match=r"block 1 \(scans 3..5\) holds 2 scans, not its 3"):
        finish_ragged(tmp_path / "short", COLUMNS, ids, 3)
    with RaggedPartWriter(tmp_path / "gap", COLUMNS, ids, 3) as part:
        for scan_id, arrays in scans[:3] + scans[6:]:  # block 1 skipped
            part.append(scan_id, **arrays)
    with pytest.raises(ValueError, match=r"block 1 \(scans 3..5\) was never written"):
        finish_ragged(tmp_path / "gap", COLUMNS, ids, 3)
    assert not (tmp_path / "short" / "zarr.json").exists() and not (tmp_path / "gap" / "zarr.json").exists()


def test_reader_names_old_and_foreign_stores(tmp_path):
    path = _write(tmp_path / "store", _scans(count=2))
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["version"] = 1
    (path / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(ValueError, match="version 1; this code reads version 2 only: rerun the stage"):
        RaggedReader(path)
    root["attributes"]["format"] = "something-else"
    (path / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(ValueError, match="is not an igloss-ragged store"):
        RaggedReader(path)


@pytest.mark.parametrize("decode_threads", [1, 3])
def test_direct_read_decodes_what_zarr_decodes(tmp_path, decode_threads):
    """RaggedReader decodes the writer's shards itself: zarr must read the same arrays, also where
    scans straddle chunks and shards and where chunks were left unwritten (only the fill value),
    with chunks decoded one after another or side by side (`decode_threads`)."""
    scans = _scans()
    scans[3][1]["feature"][:] = 0  # 300 rows: whole chunks (16 rows) and shards (32) of zeros
    path = _write(tmp_path / "store", scans, **SMALL)
    shards = list((path / "0" / "feature" / "c").iterdir())
    assert len(shards) < -(-sum(len(a["camera"]) for _, a in scans) // 32)  # some were never written
    direct, through_zarr = RaggedReader(path, decode_threads=decode_threads), RaggedReader(path, direct=False)
    for scan_id, arrays in scans:
        got, expected = direct.read(scan_id), through_zarr.read(scan_id)
        for name in COLUMNS:
            assert got[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(got[name], expected[name])
        np.testing.assert_array_equal(got["feature"], arrays["feature"].astype(np.float16))
    assert [type(a).__name__ for a in direct._arrays.values()] == ["_ShardedColumn"] * len(COLUMNS)
    # A damaged shard index is caught by its checksum, naming the file.
    shard = path / "0" / "camera" / "c" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"camera/c/0: the shard index fails its checksum"):
        RaggedReader(path).read(scans[1][0])


def test_reused_buffers_read_the_same_arrays_and_the_next_read_overwrites_them(tmp_path):
    """`reuse_buffers` (the label stage's reads, chunks decoded on two threads): every scan reads
    back as without it, in any order, the buffer growing for a larger scan; what a read returned
    is the next read's."""
    scans = _scans()
    path = _write(tmp_path / "store", scans, **SMALL)
    reused, plain = RaggedReader(path, reuse_buffers=True, decode_threads=2), RaggedReader(path)
    for scan_id, _ in [*scans, *reversed(scans)]:
        got, expected = reused.read(scan_id), plain.read(scan_id)
        for name in COLUMNS:
            assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape
            np.testing.assert_array_equal(got[name], expected[name])
    first = reused.read(scans[2][0])["feature"]
    second = reused.read(scans[4][0])["feature"]
    assert np.shares_memory(first, second)  # the caller must be done with a scan before the next read


@pytest.mark.parametrize("compressor", ["zstd", "lz4"])
def test_either_codec_reads_back_the_same_arrays(tmp_path, compressor):
    """The writer's codec is its own choice (point_features writes lz4, the rest zstd): both
    readers decode either, and the codec is what the shards' metadata names."""
    scans = _scans()
    path = _write(tmp_path / "store", scans, compressor=compressor, **SMALL)
    meta = json.loads((path / "0" / "feature" / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["codecs"][1]["configuration"]["cname"] == compressor
    for reader in (RaggedReader(path), RaggedReader(path, direct=False)):
        for scan_id, arrays in scans:
            np.testing.assert_array_equal(reader.read(scan_id)["feature"], arrays["feature"].astype(np.float16))


def test_decode_threads_below_one_is_refused(tmp_path):
    path = _write(tmp_path / "store", _scans(), **SMALL)
    with pytest.raises(ValueError, match="decode_threads must be at least 1, got 0"):
        RaggedReader(path, decode_threads=0)


def test_unknown_codec_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"compressor 'gzip': one of zstd, lz4"):
        _write(tmp_path / "store", _scans(), compressor="gzip")
