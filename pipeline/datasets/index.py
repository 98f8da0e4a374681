"""The dataset index: the files each split's scans are read from, with their size and mtime.

The stages that read scans depend (in dvc.yaml) on this small index instead of the dataset
folder, so DVC never hashes the dataset (a nuScenes dataroot holds about 3 M files, most of them
sweeps and radar no stage reads). The index comes from the dataset's own tables through the
readers (`ScanReader.files`, `ScanReader.table_files`), and holds one JSON document per kind of
file, so that a stage depends only on the kinds it reads:

    points.json   each scan's point file
    labels.json   each labelled scan's label file
    cameras.json  each scan's camera images, and the tables its camera calibration comes from

Each maps a split key (`stages.common.SplitSource.key`) to
`{"dataset": {format, root, version, split}, "files": [[scan_id, path, size, mtime_ns], ...]}`
(cameras.json also has `"tables": [[path, size, mtime_ns], ...]`). Paths are relative to the
dataset root. The same dataset with the same files gives the same bytes, so an index rebuilt
over unchanged files changes nothing downstream; a file rewritten in place changes its size or
modification time, and with it the index.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from pipeline.datasets import DatasetConfig
from pipeline.datasets.base import DatasetError, ScanReader

KINDS = ("points", "labels", "cameras")


def file_entry(root: Path, path: Path) -> list:
    """[path relative to root, size in bytes, mtime in ns] of a file the tables name."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"{path}: the dataset's tables list this file, but it is missing") from None
    return [path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns]


def index_split(reader: ScanReader, dataset: DatasetConfig, split: str, label: str | None = None,
                progress: bool = True) -> dict[str, dict]:
    """The index entries of one split, by kind (`KINDS`); stats every file the split's scans read
    (`label` names the split in the progress bar)."""
    root = Path(dataset.root)
    head = {"format": dataset.format, "root": dataset.root, "version": dataset.version, "split": split}
    entries: dict[str, dict] = {kind: {"dataset": head, "files": []} for kind in KINDS}
    entries["cameras"]["tables"] = [file_entry(root, path) for path in reader.table_files()]
    for scan_id in tqdm(reader.scan_ids, desc=f"index {label or split}", unit="scan", disable=not progress):
        files = reader.files(scan_id)
        entries["points"]["files"].append([scan_id, *file_entry(root, files.points)])
        if files.labels is not None:
            entries["labels"]["files"].append([scan_id, *file_entry(root, files.labels)])
        entries["cameras"]["files"] += [[scan_id, *file_entry(root, image)] for image in files.images]
    return entries


def write_index(folder: Path, index: dict[str, dict[str, dict]]) -> None:
    """Write `index` (kind -> split key -> entry) as `<folder>/<kind>.json`, compact and in
    the given order: the same index always gives the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        text = json.dumps(index[kind], separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        (folder / f"{kind}.json").write_text(text + "\n", encoding="utf-8")
