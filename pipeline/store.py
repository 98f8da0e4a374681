"""Artifact I/O in safe formats only (no pickle): atomic outputs, safetensors, ragged zarr.

Three tools, used by every stage:

* `atomic_output(path)`: write an artifact to a temporary sibling and rename it into
  place only on success, so an interrupted stage never leaves a half artifact that DVC
  could cache.
* `save_safetensors` / `load_safetensors`: tensors plus a str -> str metadata dict, with
  byte-identical files for identical inputs (the safetensors library writes metadata
  in random order; we rewrite the header in sorted order).
* `RaggedWriter` / `RaggedReader`: many scans' variable-length arrays in one zarr v3
  group (zarr has no ragged dtype).

Ragged layout (format "igloss-ragged", version 1)::

    <path>/zarr.json        group; attributes: format, version, columns (dtype and inner
                            shape of each), num_scans, num_rows, attributes (caller's)
    <path>/offsets          int64 (S + 1,): scan i owns rows offsets[i]:offsets[i+1]
    <path>/scan_ids         string (S,), in write order
    <path>/<column>         (num_rows, *inner_shape) one flat array per column, all
                            sharing the offsets (CSR)

Each column is chunked along rows (about `chunk_bytes` uncompressed per chunk, a power
of two rows, blosc zstd + byte shuffle) and the chunks are packed into zarr v3 shards of
`chunks_per_shard` chunks, one file per shard. Reading a scan decodes only the chunks its
rows touch (the shard index says where they lie); the file count stays small: the
~1e9-row int32 assignments of nuScenes make 16 shard files per column with the defaults,
not one file per scan. The writer buffers rows and writes whole shards only, so the
bytes depend on the data alone, never on how it was appended.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from safetensors import safe_open
from safetensors.numpy import save as _save_numpy
from safetensors.torch import save as _save_torch
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

RAGGED_FORMAT = "igloss-ragged"
RAGGED_VERSION = 1
_RESERVED = {"offsets", "scan_ids"}


# --------------------------------------------------------------------------- atomic


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


class AtomicPath:
    """A temporary sibling of `target` that becomes `target` on `commit()`.

    The caller creates `tmp` (a file or a directory). `commit()` moves it into place,
    replacing an existing target; `abort()` deletes it. A directory target is replaced
    by two renames (old aside, new in), so it is briefly absent but never half-written.
    A process killed with SIGKILL leaves its `.<name>.tmp-<pid>-<hex>` sibling behind;
    it is never mistaken for the artifact and can be deleted.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _sibling(self.target, "tmp")

    def commit(self) -> Path:
        if not (self.tmp.exists() or self.tmp.is_symlink()):
            raise FileNotFoundError(f"nothing was written to {self.tmp}; {self.target} left as it was")
        if self.target.is_dir() and not self.target.is_symlink():
            old = _sibling(self.target, "old")
            os.rename(self.target, old)
            os.rename(self.tmp, self.target)
            shutil.rmtree(old)
        else:
            if self.tmp.is_dir() and (self.target.exists() or self.target.is_symlink()):
                self.target.unlink()  # a file or link cannot be replaced by a directory
            os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        _remove(self.tmp)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; rename into place on success.

    >>> with atomic_output("cache/x.safetensors") as tmp:    # doctest: +SKIP
    ...     write_something(tmp)                              # file or directory

    On an exception the temporary is removed and `path` is left untouched.
    """
    atomic = AtomicPath(path)
    try:
        yield atomic.tmp
    except BaseException:
        atomic.abort()
        raise
    atomic.commit()


def save_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically: indented, keys in the given order, no NaN (use None)."""
    text = json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- safetensors


def _metadata_strings(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """str values as they are; anything else JSON-encoded (sorted keys, compact)."""
    out = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"safetensors metadata keys must be str, got {key!r}")
        out[key] = value if isinstance(value, str) else json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return out


def safetensors_bytes(
    tensors: Mapping[str, np.ndarray | torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> bytes:
    """Serialise to safetensors with a deterministic header.

    The library lays out the tensors deterministically but stores metadata in a hash map
    (random order per call), so the metadata is added here, sorted, by rewriting the
    header: 8-byte little-endian header length, JSON header padded with spaces to a
    multiple of 8, then the tensor bytes unchanged (their offsets are relative to the
    end of the header).
    """
    if any(isinstance(v, torch.Tensor) for v in tensors.values()):
        as_torch = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)))
                    for k, v in tensors.items()}
        raw = _save_torch({k: v.detach().cpu().contiguous() for k, v in as_torch.items()})
    else:
        raw = _save_numpy({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda item: (item[1]["data_offsets"], item[0]))
    ordered = {"__metadata__": dict(sorted(_metadata_strings(metadata).items()))}
    ordered.update(entries)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + length:]


def save_safetensors(
    path: str | Path,
    tensors: Mapping[str, np.ndarray | torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write tensors (numpy arrays or torch tensors) and metadata atomically.

    Metadata values that are not str are JSON-encoded; decode them with json.loads.
    """
    data = safetensors_bytes(tensors, metadata)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def load_safetensors(
    path: str | Path, framework: str = "numpy"
) -> tuple[dict[str, np.ndarray | torch.Tensor], dict[str, str]]:
    """Read (tensors, metadata). framework: "numpy" or "torch" (CPU tensors)."""
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework must be 'numpy' or 'torch', got {framework!r}")
    with safe_open(str(path), framework="np" if framework == "numpy" else "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = dict(handle.metadata() or {})
    return tensors, metadata


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """Only the metadata dict of a safetensors file (reads the header, not the tensors)."""
    with safe_open(str(path), framework="np") as handle:
        return dict(handle.metadata() or {})


# --------------------------------------------------------------------------- ragged zarr


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


class RaggedWriter:
    """Write per-scan variable-length arrays into one zarr group, atomically.

    Args:
        path: the final directory; written through a temporary sibling and renamed into
            place by `close()` (or removed on error when used as a context manager).
        columns: name -> `ColumnSpec` or (dtype, inner_shape). Names are keyword
            identifiers other than "offsets" and "scan_ids".
        attributes: JSON-able metadata for readers (e.g. teacher id); no timestamps, so
            identical inputs give identical bytes.
        chunk_bytes: uncompressed bytes per chunk (rows rounded down to a power of two).
        chunks_per_shard: chunks per shard file; None disables sharding (one file per
            chunk). The writer buffers up to one shard per column in memory.
        compression_level: zstd level for blosc.

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
        chunk_bytes: int = 4 << 20,
        chunks_per_shard: int | None = 64,
        compression_level: int = 3,
    ) -> None:
        if not columns:
            raise ValueError("a ragged store needs at least one column")
        self.columns = {name: _column_spec(spec) for name, spec in columns.items()}
        for name in self.columns:
            if not name.isidentifier() or name in _RESERVED:
                raise ValueError(f"bad column name {name!r}")
        self.attributes = json.loads(json.dumps(dict(attributes or {}), sort_keys=True))
        self._atomic = AtomicPath(path)
        self._group = zarr.open_group(store=LocalStore(self._atomic.tmp), mode="w-", zarr_format=3)
        self._arrays = {}
        self._flush_rows = {}
        for name, spec in self.columns.items():
            rows = _rows_per_chunk(spec.row_bytes, chunk_bytes)
            shard = rows * chunks_per_shard if chunks_per_shard else None
            self._arrays[name] = self._group.create_array(
                name,
                shape=(0, *spec.inner_shape),
                dtype=spec.dtype,
                chunks=(rows, *spec.inner_shape),
                shards=(shard, *spec.inner_shape) if shard else None,
                compressors=BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle"),
                fill_value=0,
            )
            self._flush_rows[name] = shard or rows
        self._buffers: dict[str, list[np.ndarray]] = {name: [] for name in self.columns}
        self._buffered = {name: 0 for name in self.columns}
        self._written = {name: 0 for name in self.columns}
        self._scan_ids: list[str] = []
        self._seen: set[str] = set()
        self._offsets = [0]
        self._open = True

    def append(self, scan_id: str, **arrays: Any) -> None:
        """Add one scan: every column, each with the same number of rows."""
        if not self._open:
            raise RuntimeError("append() on a closed RaggedWriter")
        if not isinstance(scan_id, str):
            raise TypeError(f"scan ids must be str, got {type(scan_id).__name__}")
        if scan_id in self._seen:
            raise ValueError(f"scan {scan_id!r} appended twice")
        if set(arrays) != set(self.columns):
            raise ValueError(f"scan {scan_id!r}: got columns {sorted(arrays)}, "
                             f"expected {sorted(self.columns)}")
        coerced = {name: _coerce(name, arrays[name], spec, scan_id)
                   for name, spec in self.columns.items()}
        lengths = {name: len(array) for name, array in coerced.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"scan {scan_id!r}: columns differ in length {lengths}")
        rows = next(iter(lengths.values()))
        for name, array in coerced.items():
            # Copy: the caller may reuse its buffer before we flush.
            self._buffers[name].append(np.array(array, copy=True))
            self._buffered[name] += rows
            if self._buffered[name] >= self._flush_rows[name]:
                self._flush(name, final=False)
        self._scan_ids.append(scan_id)
        self._seen.add(scan_id)
        self._offsets.append(self._offsets[-1] + rows)

    def _flush(self, name: str, final: bool) -> None:
        """Write the buffered rows of a column in whole shards (everything if final)."""
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

    def close(self) -> Path:
        """Flush, write offsets, scan ids and attributes, and move the store into place."""
        if not self._open:
            raise RuntimeError("close() on a closed RaggedWriter")
        for name in self.columns:
            self._flush(name, final=True)
        num_scans = len(self._scan_ids)
        index_chunk = (max(1, min(num_scans + 1, 1 << 20)),)
        offsets = self._group.create_array("offsets", shape=(num_scans + 1,), dtype="int64",
                                           chunks=index_chunk, fill_value=0)
        offsets[:] = np.asarray(self._offsets, dtype=np.int64)
        ids = self._group.create_array("scan_ids", shape=(num_scans,), dtype=str, chunks=index_chunk)
        if num_scans:
            ids[:] = np.asarray(self._scan_ids, dtype=np.dtypes.StringDType())
        self._group.attrs.update({
            "format": RAGGED_FORMAT,
            "version": RAGGED_VERSION,
            "columns": {name: spec.to_json() for name, spec in self.columns.items()},
            "num_scans": num_scans,
            "num_rows": int(self._offsets[-1]),
            "attributes": self.attributes,
        })
        self._open = False
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
        elif self._open:
            self.close()


class RaggedReader:
    """Read a store written by `RaggedWriter`, one scan or a run of scans at a time.

    Attributes:
        scan_ids: tuple of scan ids in write order.
        offsets: (S + 1,) int64 row offsets.
        columns: name -> ColumnSpec.
        attributes: the writer's JSON metadata.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no ragged store at {self.path}")
        group = zarr.open_group(store=LocalStore(self.path, read_only=True), mode="r")
        attrs = group.attrs.asdict()
        if attrs.get("format") != RAGGED_FORMAT or attrs.get("version") != RAGGED_VERSION:
            raise ValueError(f"{self.path} is not an {RAGGED_FORMAT} v{RAGGED_VERSION} store "
                             f"(format {attrs.get('format')!r}, version {attrs.get('version')!r})")
        self.columns = {name: ColumnSpec(np.dtype(spec["dtype"]), tuple(spec["inner_shape"]))
                        for name, spec in attrs["columns"].items()}
        self.attributes: dict = attrs.get("attributes", {})
        self.offsets = np.asarray(group["offsets"][:], dtype=np.int64)
        self.scan_ids: tuple[str, ...] = tuple(str(s) for s in group["scan_ids"][:].tolist())
        self._index = {scan_id: i for i, scan_id in enumerate(self.scan_ids)}
        self._arrays = {name: group[name] for name in self.columns}

    def __len__(self) -> int:
        return len(self.scan_ids)

    def __contains__(self, scan_id: object) -> bool:
        return scan_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.scan_ids)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    def _rows(self, scan_id: str) -> tuple[int, int]:
        try:
            i = self._index[scan_id]
        except KeyError:
            raise KeyError(f"scan {scan_id!r} is not in {self.path}") from None
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def scan_rows(self, scan_id: str) -> int:
        """Number of rows of one scan."""
        start, stop = self._rows(scan_id)
        return stop - start

    def _selected(self, columns: Sequence[str] | None) -> list[str]:
        names = list(self.columns) if columns is None else list(columns)
        unknown = [n for n in names if n not in self.columns]
        if unknown:
            raise KeyError(f"{self.path} has no columns {unknown}; it has {list(self.columns)}")
        return names

    def read(self, scan_id: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of one scan (only the chunks its rows touch are read)."""
        start, stop = self._rows(scan_id)
        return {name: self._arrays[name][start:stop] for name in self._selected(columns)}

    def iter_scans(
        self, columns: Sequence[str] | None = None, block_bytes: int = 64 << 20
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Every scan in order, reading runs of consecutive scans (about `block_bytes`)
        at once, so chunks shared by small scans are decoded once."""
        names = self._selected(columns)
        row_bytes = max(self.columns[n].row_bytes for n in names) if names else 1
        block_rows = max(1, block_bytes // max(row_bytes, 1))
        first = 0
        while first < len(self.scan_ids):
            last = first + 1  # at least one scan per block, however large
            while last < len(self.scan_ids) and self.offsets[last + 1] - self.offsets[first] <= block_rows:
                last += 1
            base = int(self.offsets[first])
            block = {n: self._arrays[n][base:int(self.offsets[last])] for n in names}
            for i in range(first, last):
                lo, hi = int(self.offsets[i]) - base, int(self.offsets[i + 1]) - base
                yield self.scan_ids[i], {n: block[n][lo:hi] for n in names}
            first = last
