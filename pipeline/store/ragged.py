"""Ragged stores: many scans' variable-length arrays in one zarr v3 group (zarr has no ragged dtype).

`RaggedWriter` writes a store in one process, atomically (`pipeline.store.atomic`);
`RaggedPartWriter` + `finish_ragged` write one store from several processes
(`pipeline.distributed.ShardedOutput` drives them); `RaggedReader` reads one scan or a run
of scans at a time.

Ragged layout (format "igloss-ragged", version 2)::

    <path>/zarr.json        root group; attributes: format, version, columns (dtype and inner
                            shape of each), scans_per_block (G), num_scans (S), num_blocks
                            (ceil(S / G)), num_rows, attributes (the caller's)
    <path>/<k>/zarr.json    block k: scans k*G .. k*G + G - 1 of the store; attributes: their
                            scan_ids and rows (rows of each scan)
    <path>/<k>/<column>     the block's rows of one column, (rows, *inner_shape), one flat
                            array per column, all sharing the block's row counts (CSR)

A block is written whole by one writer and its bytes depend on its scans alone, so W
processes write disjoint blocks of one store without talking to each other, and the root,
written last by one of them after checking every block, makes the store byte-identical to
the one a single process writes. G is fixed by the number of scans (`scans_per_block`:
at most 64 blocks, so up to 64 processes share the work), never by W. (The alternative,
each rank writing a part store that one rank then merges in scan order, has one process
reread, decode and re-encode everything after the parallel work: about 0.5 TB of ViT-L
teacher features for nuScenes train, 0.4 TB of point features for its val split.)

Each column of a block is chunked along rows (about `chunk_bytes` uncompressed per chunk,
a power of two rows, blosc zstd or lz4 + byte shuffle) and the chunks are packed into zarr v3
shards of `chunks_per_shard` chunks, one file per shard. Reading a scan decodes only the
chunks its rows touch (the shard index says where they lie), straight into the output
(`_ShardedColumn`, which reads the writer's shards without zarr's copies). A store has 1 + B * (1 + C)
metadata files (B blocks, C columns) plus its shard files, at least one per column and
block, more only past 256 MiB (64 chunks of 4 MiB) per column and block: 30k scans in 64
blocks make hundreds of files, not one per scan. The writer buffers rows and writes whole
shards only, so the bytes depend on the data alone, never on how it was appended.
"""

from __future__ import annotations

import json
import math
import queue
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import google_crc32c  # zarr's own checksum library (a dependency of zarr 3)
import numpy as np
import zarr
from numcodecs import blosc
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from pipeline.store.atomic import AtomicPath, disk_full_error, remove_path

RAGGED_FORMAT = "igloss-ragged"
RAGGED_VERSION = 2
DEFAULT_SCANS_PER_BLOCK = 256
MAX_BLOCKS = 64  # blocks of a store whose scans are known up front
Compressor = Literal["zstd", "lz4"]


@dataclass(frozen=True)
class ColumnSpec:
    """dtype and per-row shape of one ragged column, e.g. (float16, (384,)) or (int32, ())."""

    dtype: np.dtype
    inner_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "inner_shape", tuple(int(n) for n in self.inner_shape))

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.inner_shape, dtype=np.int64))

    def to_json(self) -> dict:
        return {"dtype": self.dtype.name, "inner_shape": list(self.inner_shape)}


def _column_spec(value: ColumnSpec | tuple) -> ColumnSpec:
    return value if isinstance(value, ColumnSpec) else ColumnSpec(*value)


def _rows_per_chunk(row_bytes: int, chunk_bytes: int) -> int:
    """The largest power of two of rows within chunk_bytes, in [1, 2**20]."""
    rows = max(1, chunk_bytes // max(row_bytes, 1))
    return min(1 << (rows.bit_length() - 1), 1 << 20)


def _coerce(name: str, values: Any, spec: ColumnSpec, scan_id: str) -> np.ndarray:
    """Check shape and cast to the column dtype, refusing casts that would lose values."""
    array = np.asarray(values)
    where = f"column {name!r} of scan {scan_id!r}"
    if array.shape[1:] != spec.inner_shape or array.ndim != 1 + len(spec.inner_shape):
        raise ValueError(f"{where}: shape {array.shape}, expected (n, {spec.inner_shape})")
    if array.dtype == spec.dtype:
        return array
    kind, target = array.dtype.kind, spec.dtype.kind
    if target in "iu" and kind in "iub":
        info = np.iinfo(spec.dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"{where}: values {array.min()}..{array.max()} do not fit {spec.dtype}")
        return array.astype(spec.dtype)
    if target == "f" and kind in "fiu":
        return array.astype(spec.dtype)
    raise TypeError(f"{where}: cannot store {array.dtype} as {spec.dtype}")


def _coerce_scan(columns: Mapping[str, ColumnSpec], scan_id: Any, arrays: Mapping[str, Any]
                 ) -> tuple[dict[str, np.ndarray], int]:
    """One scan's arrays checked against the columns and cast; returns (arrays, rows)."""
    if not isinstance(scan_id, str):
        raise TypeError(f"scan ids must be str, got {type(scan_id).__name__}")
    if set(arrays) != set(columns):
        raise ValueError(f"scan {scan_id!r}: got columns {sorted(arrays)}, expected {sorted(columns)}")
    coerced = {name: _coerce(name, arrays[name], spec, scan_id) for name, spec in columns.items()}
    lengths = {name: len(array) for name, array in coerced.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"scan {scan_id!r}: columns differ in length {lengths}")
    return coerced, next(iter(lengths.values()))


def _column_specs(columns: Mapping[str, ColumnSpec | tuple]) -> dict[str, ColumnSpec]:
    if not columns:
        raise ValueError("a ragged store needs at least one column")
    specs = {name: _column_spec(spec) for name, spec in columns.items()}
    for name in specs:
        if not name.isidentifier():  # also keeps column names apart from block names (digits)
            raise ValueError(f"bad column name {name!r}")
    return specs


def scans_per_block(num_scans: int, max_blocks: int = MAX_BLOCKS) -> int:
    """The block size that cuts `num_scans` into at most `max_blocks` blocks.

    It depends on the number of scans only, never on how many processes write, which is
    what makes a store written by W processes byte-identical to one written by one.
    """
    return max(1, -(-int(num_scans) // int(max_blocks)))


@dataclass(frozen=True)
class Chunking:
    """How each column of a block is cut into files.

    chunk_bytes: uncompressed bytes per chunk (rows rounded down to a power of two); the unit
        a read decodes. chunks_per_shard: chunks packed into one shard file (None: one file
        per chunk); the writer buffers up to one shard per column. compression_level: the
        blosc level (byte shuffle). compressor: blosc's zstd (smaller) or lz4 (decodes about
        10x faster, for a store read again and again, like the point features a vocabulary
        change relabels; bench `vocabulary` measures both). Readers need not know which.
    """

    chunk_bytes: int = 4 << 20
    chunks_per_shard: int | None = 64
    compression_level: int = 3
    compressor: Compressor = "zstd"

    def __post_init__(self) -> None:
        if self.compressor not in get_args(Compressor):
            raise ValueError(f"compressor {self.compressor!r}: one of {', '.join(get_args(Compressor))}")


class _BlockWriter:
    """Writes blocks of one store: scans come with their index in the store, each block whole.

    The block of scan i is i // scans_per_block. Scans of a block must come in order and
    consecutively; whether every block got all of its scans is checked by `finish_ragged`.
    """

    def __init__(self, root: Path, columns: dict[str, ColumnSpec], scans_per_block: int,
                 chunking: Chunking) -> None:
        if scans_per_block < 1:
            raise ValueError(f"scans_per_block must be >= 1, got {scans_per_block}")
        self.root = root
        self.columns = columns
        self.scans_per_block = scans_per_block
        self.chunking = chunking
        self.blocks: list[int] = []  # blocks started, in order
        self._group: zarr.Group | None = None
        self._next_index = 0

    def append(self, index: int, scan_id: str, arrays: dict[str, np.ndarray], rows: int) -> None:
        block = index // self.scans_per_block
        if not self.blocks or block != self.blocks[-1]:
            if index % self.scans_per_block:
                raise ValueError(f"scan {scan_id!r} (index {index}) is not the first of block {block}: "
                                 "a block is written whole, by one writer")
            if self.blocks and block <= self.blocks[-1]:
                raise ValueError(f"block {block} after block {self.blocks[-1]}: blocks go in order")
            self._end_block()
            self._start_block(block)
        elif index != self._next_index:
            raise ValueError(f"scan {scan_id!r} (index {index}) after index {self._next_index - 1}: "
                             "the scans of a block are appended consecutively")
        self._next_index = index + 1
        for name, array in arrays.items():
            # Copy: the caller may reuse its buffer before we flush.
            self._buffers[name].append(np.array(array, copy=True))
            self._buffered[name] += rows
            if self._buffered[name] >= self._flush_rows[name]:
                self._flush(name, final=False)
        self._scan_ids.append(scan_id)
        self._rows.append(rows)

    def _start_block(self, block: int) -> None:
        self.blocks.append(block)
        self._group = zarr.create_group(store=LocalStore(self.root / str(block)), zarr_format=3)
        chunking = self.chunking
        self._arrays, self._flush_rows = {}, {}
        for name, spec in self.columns.items():
            rows = _rows_per_chunk(spec.row_bytes, chunking.chunk_bytes)
            shard = rows * chunking.chunks_per_shard if chunking.chunks_per_shard else None
            self._arrays[name] = self._group.create_array(
                name,
                shape=(0, *spec.inner_shape),
                dtype=spec.dtype,
                chunks=(rows, *spec.inner_shape),
                shards=(shard, *spec.inner_shape) if shard else None,
                compressors=BloscCodec(cname=chunking.compressor, clevel=chunking.compression_level, shuffle="shuffle"),
                fill_value=0,
            )
            self._flush_rows[name] = shard or rows
        self._buffers: dict[str, list[np.ndarray]] = {name: [] for name in self.columns}
        self._buffered = {name: 0 for name in self.columns}
        self._written = {name: 0 for name in self.columns}
        self._scan_ids: list[str] = []
        self._rows: list[int] = []

    def _flush(self, name: str, final: bool) -> None:
        """Write the buffered rows of a column in whole shards (everything if final), so the
        bytes depend on the data alone, never on how it was appended."""
        unit = self._flush_rows[name]
        count = self._buffered[name] if final else self._buffered[name] // unit * unit
        if count == 0:
            return
        pieces = self._buffers[name]
        block = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        array, start = self._arrays[name], self._written[name]
        array.resize((start + count, *self.columns[name].inner_shape))
        array[start:start + count] = block[:count]
        rest = block[count:]
        self._buffers[name] = [rest.copy()] if len(rest) else []
        self._buffered[name] = len(rest)
        self._written[name] = start + count

    def _end_block(self) -> None:
        if self._group is None:
            return
        for name in self.columns:
            self._flush(name, final=True)
        self._group.attrs.update({"scan_ids": self._scan_ids, "rows": self._rows})
        self._group = None

    def close(self) -> None:
        self._end_block()

    def remove(self) -> None:
        """Delete the blocks this writer started (on abort)."""
        self._group = None
        for block in self.blocks:
            remove_path(self.root / str(block))


class _ShardedColumn:
    """One column of one block, read straight from its shard files, as `_BlockWriter` writes it.

    zarr's own read of a 1024-d fp16 scan decodes each chunk into a buffer of its own and copies
    it out, about 1.5x the time of decoding the blosc frames themselves (bench/vocabulary.py);
    this reader decodes each whole chunk straight into the output array. It follows the zarr v3
    sharding spec for exactly the layout the writer makes: a regular grid of shards of whole
    rows, each shard one file `c/<shard>/0...` of blosc frames ending with its index (offset and
    size per chunk; 2**64 - 1 for a chunk left unwritten because it held only the fill value)
    and the index's crc32c; a missing shard file is all fill value. `open` returns None for any
    other layout, which is then read through zarr.
    """

    def __init__(self, folder: Path, dtype: np.dtype, inner_shape: tuple[int, ...], chunk_rows: int,
                 chunks_per_shard: int, fill_value: Any) -> None:
        self.folder = folder
        self.dtype = dtype
        self.inner_shape = inner_shape
        self.chunk_rows = chunk_rows
        self.chunks_per_shard = chunks_per_shard
        self.fill_value = fill_value
        self._indexes: dict[int, np.ndarray | None] = {}  # shard -> (chunks, 2) offsets and sizes
        self._frames: queue.SimpleQueue[bytearray] = queue.SimpleQueue()  # frame buffers, one per decoding thread

    @classmethod
    def open(cls, folder: Path) -> _ShardedColumn | None:
        meta = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
        codecs = meta.get("codecs", [])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed" or not np.little_endian:
            return None
        shard = codecs[0]["configuration"]
        inner = shard.get("codecs", [])
        little = {"name": "bytes", "configuration": {"endian": "little"}}
        if (shard.get("index_location") != "end" or shard.get("index_codecs") != [little, {"name": "crc32c"}]
                or len(inner) != 2 or inner[0] not in (little, {"name": "bytes"}) or inner[1].get("name") != "blosc"
                or meta.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "/"}}
                or meta.get("chunk_grid", {}).get("name") != "regular"):
            return None
        shape = meta["shape"]
        shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
        chunk_shape = shard["chunk_shape"]
        if shard_shape[1:] != shape[1:] or chunk_shape[1:] != shape[1:] or shard_shape[0] % chunk_shape[0]:
            return None  # chunks not of whole rows
        return cls(folder, np.dtype(meta["data_type"]), tuple(shape[1:]), chunk_shape[0],
                   shard_shape[0] // chunk_shape[0], meta["fill_value"])

    def _shard_file(self, shard: int) -> Path:
        return self.folder.joinpath("c", str(shard), *["0"] * len(self.inner_shape))

    def _index(self, shard: int) -> np.ndarray | None:
        """The shard's (chunks, 2) uint64 offsets and sizes; None when it has no file."""
        if shard not in self._indexes:
            path = self._shard_file(shard)
            index = None
            if path.is_file():
                size = 16 * self.chunks_per_shard + 4
                with open(path, "rb") as file:
                    file.seek(-size, 2)
                    tail = file.read(size)
                if google_crc32c.value(tail[:-4]) != int.from_bytes(tail[-4:], "little"):
                    raise ValueError(f"{path}: the shard index fails its checksum (a damaged file?)")
                index = np.frombuffer(tail[:-4], dtype="<u8").reshape(-1, 2)
            self._indexes[shard] = index
        return self._indexes[shard]

    def _decode(self, chunk: int, out: np.ndarray) -> None:
        """Chunk `chunk` (chunk_rows rows) into `out`, a C-contiguous array of that size."""
        shard, slot = divmod(chunk, self.chunks_per_shard)
        index = self._index(shard)
        if index is None or int(index[slot, 0]) == 2 ** 64 - 1:
            out[...] = self.fill_value
            return
        offset, size = int(index[slot, 0]), int(index[slot, 1])
        # The frame is read into a buffer kept for the next chunk: a new bytes object per chunk
        # (MBs at 1024-d) costs fresh pages, about as long as the read itself.
        frame = bytearray() if self._frames.empty() else self._frames.get()
        if len(frame) < size:
            frame = bytearray(size)
        try:
            view = memoryview(frame)[:size]
            with open(self._shard_file(shard), "rb") as file:
                file.seek(offset)
                got = file.readinto(view)
            # blosc's frame header: uncompressed size at bytes 4..8, frame size at 12..16.
            if (got != size or int.from_bytes(view[12:16], "little") != size
                    or int.from_bytes(view[4:8], "little") != out.nbytes):
                raise ValueError(f"{self._shard_file(shard)}: chunk {slot} is damaged (its blosc header)")
            blosc.decompress(view, out)
        finally:
            self._frames.put(frame)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.read(rows.start, rows.stop)

    def read(self, start: int, stop: int, buffer: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
        """Rows start .. stop - 1; decoded into the front of `buffer` (a flat array of this
        column's dtype, large enough) when given, else into a new array. `threads` decode
        chunks side by side (file reads and blosc release the GIL)."""
        shape = (stop - start, *self.inner_shape)
        out = np.empty(shape, dtype=self.dtype) if buffer is None else buffer[:math.prod(shape)].reshape(shape)

        def decode(chunk: int) -> None:
            first = chunk * self.chunk_rows
            lo, hi = max(start, first), min(stop, first + self.chunk_rows)
            if hi - lo == self.chunk_rows:  # a whole chunk: decoded in place
                self._decode(chunk, out[lo - start:hi - start])
            else:  # at most the first and the last chunk
                spare = np.empty((self.chunk_rows, *self.inner_shape), dtype=self.dtype)
                self._decode(chunk, spare)
                out[lo - start:hi - start] = spare[lo - first:hi - first]

        chunks = range(start // self.chunk_rows, -(-stop // self.chunk_rows))
        if threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(min(threads, len(chunks))) as pool:
                list(pool.map(decode, chunks))
        else:
            for chunk in chunks:
                decode(chunk)
        return out


def _read_attributes(path: Path) -> dict:
    """A node's attributes, read straight from its zarr.json (zarr v3 spec; a reader opens
    every block's, and this is ~100x faster than opening the group through zarr)."""
    return json.loads((path / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})


def finish_ragged(
    path: str | Path,
    columns: Mapping[str, ColumnSpec | tuple],
    scan_ids: Sequence[str],
    scans_per_block: int,
    attributes: Mapping[str, Any] | None = None,
) -> int:
    """The last step of writing a store: check its blocks, then write the root metadata.

    Every block 0 .. ceil(S / scans_per_block) - 1 must hold exactly its slice of
    `scan_ids` and nothing else may lie in `path`; a missing or short block (a writer that
    skipped scans) is an error naming it. Returns the store's number of rows.
    """
    path = Path(path)
    scan_ids = list(scan_ids)
    num_blocks = -(-len(scan_ids) // scans_per_block)
    num_rows = 0
    for block in range(num_blocks):
        expected = scan_ids[block * scans_per_block:(block + 1) * scans_per_block]
        where = f"{path}: block {block} (scans {block * scans_per_block}..{block * scans_per_block + len(expected) - 1})"
        if not (path / str(block) / "zarr.json").is_file():
            raise ValueError(f"{where} was never written")
        meta = _read_attributes(path / str(block))
        if meta.get("scan_ids") != expected:
            got = meta.get("scan_ids") or []
            raise ValueError(f"{where} holds {len(got)} scans, not its {len(expected)} "
                             f"(first {got[:1]}, expected {expected[:1]})")
        num_rows += sum(meta["rows"])
    known = {"zarr.json", *(str(block) for block in range(num_blocks))}
    stray = sorted(p.name for p in path.iterdir() if p.name not in known) if path.is_dir() else []
    if stray:
        raise ValueError(f"{path}: unexpected entries {stray[:5]} (blocks of another layout?)")
    specs = _column_specs(columns)
    zarr.create_group(store=LocalStore(path), zarr_format=3, attributes={
        "format": RAGGED_FORMAT,
        "version": RAGGED_VERSION,
        "columns": {name: spec.to_json() for name, spec in specs.items()},
        "scans_per_block": scans_per_block,
        "num_scans": len(scan_ids),
        "num_blocks": num_blocks,
        "num_rows": num_rows,
        "attributes": json.loads(json.dumps(dict(attributes or {}), sort_keys=True)),
    })
    return num_rows


class RaggedWriter:
    """Write per-scan variable-length arrays into one ragged store, atomically, in one process.

    Args:
        path: the final directory; written through a temporary (in `scratch`, else beside
            it) and renamed into place by `close()` (or removed on error when used as a
            context manager).
        columns: name -> `ColumnSpec` or (dtype, inner_shape). Names are identifiers.
        attributes: JSON-able metadata for readers (e.g. teacher id); no timestamps, so
            identical inputs give identical bytes.
        scans_per_block: scans per block (see the module docstring). A writer that knows its
            scans up front should pass `scans_per_block(len(scans))`, as
            `pipeline.distributed.ShardedOutput` does.
        chunk_bytes, chunks_per_shard, compression_level, compressor: see `Chunking`.

    >>> columns = {"point_index": ("int32", ()), "camera": ("uint8", ())}
    >>> with RaggedWriter(out, columns) as writer:                      # doctest: +SKIP
    ...     writer.append("scan-0", point_index=idx, camera=cam)
    """

    def __init__(
        self,
        path: str | Path,
        columns: Mapping[str, ColumnSpec | tuple],
        *,
        attributes: Mapping[str, Any] | None = None,
        scans_per_block: int = DEFAULT_SCANS_PER_BLOCK,
        chunk_bytes: int = Chunking.chunk_bytes,
        chunks_per_shard: int | None = Chunking.chunks_per_shard,
        compression_level: int = Chunking.compression_level,
        compressor: Compressor = Chunking.compressor,
        scratch: str | Path | None = None,
    ) -> None:
        self.columns = _column_specs(columns)
        self.attributes = dict(attributes or {})
        self._atomic = AtomicPath(path, scratch=scratch)
        self._atomic.tmp.mkdir()
        self._blocks = _BlockWriter(self._atomic.tmp, self.columns, scans_per_block,
                                    Chunking(chunk_bytes, chunks_per_shard, compression_level, compressor))
        self._scan_ids: list[str] = []
        self._seen: set[str] = set()
        self._open = True

    def append(self, scan_id: str, **arrays: Any) -> None:
        """Add one scan: every column, each with the same number of rows."""
        if not self._open:
            raise RuntimeError("append() on a closed RaggedWriter")
        if scan_id in self._seen:
            raise ValueError(f"scan {scan_id!r} appended twice")
        coerced, rows = _coerce_scan(self.columns, scan_id, arrays)
        self._blocks.append(len(self._scan_ids), scan_id, coerced, rows)
        self._scan_ids.append(scan_id)
        self._seen.add(scan_id)

    def close(self) -> Path:
        """Finish the last block, write the root metadata and move the store into place."""
        if not self._open:
            raise RuntimeError("close() on a closed RaggedWriter")
        self._open = False
        try:
            self._blocks.close()
            finish_ragged(self._atomic.tmp, self.columns, self._scan_ids, self._blocks.scans_per_block,
                          self.attributes)
        except BaseException as error:
            self._atomic.abort()
            named = disk_full_error(error, self._atomic.target)
            if named is not None:
                raise named from error
            raise
        return self._atomic.commit()

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        self._open = False
        self._atomic.abort()

    def __enter__(self) -> RaggedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            named = disk_full_error(exc, self._atomic.target)  # a full disk names the store
            if named is not None:
                raise named from exc
        elif self._open:
            self.close()


class RaggedPartWriter:
    """Some blocks of a store that several processes write together, into a shared directory.

    Every writer knows all `scan_ids` of the store (in store order) and appends the scans
    of its own blocks, each block whole and in order; nothing is shared between writers
    but the directory. When all are closed, one process calls `finish_ragged` with the same
    columns, scan ids and block size, which checks that every block is there. Atomicity is
    the caller's (the directory is a temporary one; see `pipeline.distributed.ShardedOutput`).
    """

    def __init__(
        self,
        path: str | Path,
        columns: Mapping[str, ColumnSpec | tuple],
        scan_ids: Sequence[str],
        scans_per_block: int,
        chunking: Chunking = Chunking(),
    ) -> None:
        self.columns = _column_specs(columns)
        self._index = {scan_id: i for i, scan_id in enumerate(scan_ids)}
        if len(self._index) != len(scan_ids):
            raise ValueError("scan ids must be unique")
        self._blocks = _BlockWriter(Path(path), self.columns, scans_per_block, chunking)
        self._open = True

    def append(self, scan_id: str, **arrays: Any) -> None:
        """Add one scan of this writer's blocks: every column, each with the same rows."""
        if not self._open:
            raise RuntimeError("append() on a closed RaggedPartWriter")
        if scan_id not in self._index:
            raise ValueError(f"scan {scan_id!r} is not one of the store's scans")
        coerced, rows = _coerce_scan(self.columns, scan_id, arrays)
        self._blocks.append(self._index[scan_id], scan_id, coerced, rows)

    def close(self) -> None:
        """Finish the last block (the root is `finish_ragged`'s)."""
        if self._open:
            self._open = False
            self._blocks.close()

    def abort(self) -> None:
        """Delete this writer's blocks."""
        self._open = False
        self._blocks.remove()

    def __enter__(self) -> RaggedPartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class RaggedReader:
    """Read a ragged store, one scan or a run of scans at a time.

    Attributes:
        scan_ids: tuple of scan ids in store order.
        offsets: (S + 1,) int64 row offsets: scan i owns rows offsets[i]:offsets[i + 1] of
            the store (as if its blocks were one array).
        columns: name -> ColumnSpec.
        attributes: the writer's JSON metadata.
    """

    def __init__(self, path: str | Path, direct: bool = True, reuse_buffers: bool = False,
                 decode_threads: int = 1) -> None:
        """direct: read the writer's shards straight from their files (`_ShardedColumn`); False
        reads every column through zarr (the reference the tests and the bench compare with).
        reuse_buffers: `read` decodes each column into one buffer this reader keeps (grown as
        needed), so the arrays it returns are overwritten by the next read: for a caller done
        with a scan before it reads the next (labelling a split), it spares the fresh pages a
        new array of every scan costs (~30% of decoding 1024-d features, bench/vocabulary.py).
        decode_threads: threads decoding the chunks of one read side by side (direct reads)."""
        if decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1, got {decode_threads}")
        self.path = Path(path)
        self.decode_threads = decode_threads
        self.direct = direct
        self.reuse_buffers = reuse_buffers
        self._buffers: dict[str, np.ndarray] = {}  # column -> flat buffer, with reuse_buffers
        if not self.path.is_dir():
            raise FileNotFoundError(f"no ragged store at {self.path}")
        self._store = LocalStore(self.path, read_only=True)
        attrs = zarr.open_group(store=self._store, mode="r").attrs.asdict()
        if attrs.get("format") != RAGGED_FORMAT:
            raise ValueError(f"{self.path} is not an {RAGGED_FORMAT} store (format {attrs.get('format')!r})")
        if attrs.get("version") != RAGGED_VERSION:
            raise ValueError(f"{self.path} is an {RAGGED_FORMAT} store of version {attrs.get('version')!r}; "
                             f"this code reads version {RAGGED_VERSION} only: rerun the stage that wrote it "
                             "(dvc repro) with this code")
        self.columns = {name: ColumnSpec(np.dtype(spec["dtype"]), tuple(spec["inner_shape"]))
                        for name, spec in attrs["columns"].items()}
        self.attributes: dict = attrs.get("attributes", {})
        self.scans_per_block: int = attrs["scans_per_block"]
        scan_ids: list[str] = []
        rows: list[int] = []
        for block in range(attrs["num_blocks"]):
            meta = _read_attributes(self.path / str(block))
            scan_ids += meta["scan_ids"]
            rows += meta["rows"]
        if len(scan_ids) != attrs["num_scans"] or sum(rows) != attrs["num_rows"]:
            raise ValueError(f"{self.path}: blocks hold {len(scan_ids)} scans and {sum(rows)} rows, "
                             f"the root says {attrs['num_scans']} and {attrs['num_rows']}")
        self.scan_ids: tuple[str, ...] = tuple(scan_ids)
        self.offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)
        self._index = {scan_id: i for i, scan_id in enumerate(self.scan_ids)}
        self._arrays: dict[tuple[int, str], _ShardedColumn | zarr.Array] = {}  # opened on first use

    def __len__(self) -> int:
        return len(self.scan_ids)

    def __contains__(self, scan_id: object) -> bool:
        return scan_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.scan_ids)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    def _position(self, scan_id: str) -> int:
        try:
            return self._index[scan_id]
        except KeyError:
            raise KeyError(f"scan {scan_id!r} is not in {self.path}") from None

    def scan_rows(self, scan_id: str) -> int:
        """Number of rows of one scan."""
        i = self._position(scan_id)
        return int(self.offsets[i + 1] - self.offsets[i])

    def _selected(self, columns: Sequence[str] | None) -> list[str]:
        names = list(self.columns) if columns is None else list(columns)
        unknown = [n for n in names if n not in self.columns]
        if unknown:
            raise KeyError(f"{self.path} has no columns {unknown}; it has {list(self.columns)}")
        return names

    def _read_rows(self, first: int, last: int, names: list[str]) -> dict[str, np.ndarray]:
        """Rows of scans first .. last - 1, which lie in one block."""
        block = first // self.scans_per_block
        base = int(self.offsets[block * self.scans_per_block])
        start, stop = int(self.offsets[first]) - base, int(self.offsets[last]) - base
        out = {}
        for name in names:
            key = (block, name)
            if key not in self._arrays:
                self._arrays[key] = ((self.direct and _ShardedColumn.open(self.path / str(block) / name))
                                     or zarr.open_array(store=self._store, path=f"{block}/{name}", mode="r"))
            array = self._arrays[key]
            if isinstance(array, _ShardedColumn):
                buffer = self._buffer(name, stop - start) if self.reuse_buffers else None
                out[name] = array.read(start, stop, buffer, threads=self.decode_threads)
            else:
                out[name] = array[start:stop]
        return out

    def _buffer(self, name: str, rows: int) -> np.ndarray:
        """The flat buffer of column `name`, grown to hold at least `rows` rows."""
        spec = self.columns[name]
        size = rows * math.prod(spec.inner_shape)
        if name not in self._buffers or self._buffers[name].size < size:
            self._buffers[name] = np.empty(size, dtype=spec.dtype)
        return self._buffers[name]

    def read(self, scan_id: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of one scan (only the chunks its rows touch are read)."""
        i = self._position(scan_id)
        return self._read_rows(i, i + 1, self._selected(columns))

    def iter_scans(
        self, columns: Sequence[str] | None = None, block_bytes: int = 64 << 20
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Every scan in order, reading runs of consecutive scans of one block (about
        `block_bytes`) at once, so chunks shared by small scans are decoded once."""
        names = self._selected(columns)
        row_bytes = max(self.columns[n].row_bytes for n in names) if names else 1
        block_rows = max(1, block_bytes // max(row_bytes, 1))
        first = 0
        while first < len(self.scan_ids):
            block_end = min((first // self.scans_per_block + 1) * self.scans_per_block, len(self.scan_ids))
            last = first + 1  # at least one scan per run, however large
            while last < block_end and self.offsets[last + 1] - self.offsets[first] <= block_rows:
                last += 1
            run = self._read_rows(first, last, names)
            base = int(self.offsets[first])
            for i in range(first, last):
                lo, hi = int(self.offsets[i]) - base, int(self.offsets[i + 1]) - base
                yield self.scan_ids[i], {n: run[n][lo:hi] for n in names}
            first = last
