"""Atomic outputs: an artifact appears whole or not at all.

`atomic_output(path)` writes an artifact to a temporary path and renames it into place only
on success, so an interrupted stage never leaves a half artifact that DVC could cache.
`AtomicPath` is the same as an object, for writers that commit later (`RaggedWriter`) or
share one temporary between processes (`pipeline.distributed.ShardedOutput`); `save_json`
writes a JSON file through it.

Where the temporary lives: in `scratch` when the caller gives a folder (the stages give one
outside every DVC output, and clear it when they start, so a killed stage leaves nothing inside
an output), else beside the target. It must be on the target's filesystem (a rename).

A commit never replaces a folder by a file or a file by a folder: such a target is left as it
was and the commit fails, so a path a user mistypes cannot wipe a folder.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def remove_path(path: Path) -> None:
    """Delete a file, link or folder; nothing happens when there is none."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


# A write that failed for want of space: the error is raised again naming the artifact.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(error: BaseException, target: str | Path) -> OSError | None:
    """For an OSError of a full disk (or quota) while `target` was written: the same error
    naming `target` (the artifact a user knows, not a temporary inside it); else None."""
    if not isinstance(error, OSError) or error.errno not in DISK_FULL:
        return None
    named = OSError(f"{target}: {os.strerror(error.errno).lower()} while writing it; "
                    "nothing of it was kept (free some space and rerun)")
    named.errno = error.errno
    return named


def _temporary(target: Path, folder: Path, kind: str, token: str | None = None) -> Path:
    return folder / f".{target.name}.{kind}-{token or f'{os.getpid()}-{secrets.token_hex(4)}'}"


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


class AtomicPath:
    """A temporary path `tmp` that becomes `target` on `commit()`.

    The caller creates `tmp` (a file or a directory). `commit()` moves it into place,
    replacing an existing target of the same kind; `abort()` deletes it. A directory target
    is replaced by two renames (old aside, new in), so it is briefly absent but never
    half-written. A process killed with SIGKILL leaves its `.<name>.tmp-<pid>-<hex>` behind
    in `scratch` (or beside the target): it is never mistaken for the artifact, and the
    stages clear their scratch folder when they start.

    `token` replaces `<pid>-<hex>` in the temporary's name: processes that share a token
    (drawn once, by one of them) share the temporary, which one of them commits.
    """

    def __init__(self, target: str | Path, token: str | None = None, scratch: str | Path | None = None) -> None:
        self.target = Path(target)
        self.folder = self.target.parent if scratch is None else Path(scratch)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tmp = _temporary(self.target, self.folder, "tmp", token)

    def commit(self) -> Path:
        if not (self.tmp.exists() or self.tmp.is_symlink()):
            raise FileNotFoundError(f"nothing was written to {self.tmp}; {self.target} left as it was")
        self.target.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed write leaves no folder
        if self.target.exists() and _is_folder(self.target) != _is_folder(self.tmp):
            kinds = ("folder", "file") if _is_folder(self.target) else ("file", "folder")
            raise FileExistsError(f"{self.target}: is a {kinds[0]} and would be replaced by a {kinds[1]}; "
                                  "left as it was (move it away or choose another path)")
        if _is_folder(self.target):
            old = _temporary(self.target, self.folder, "old")
            os.rename(self.target, old)
            os.rename(self.tmp, self.target)
            shutil.rmtree(old)
        else:
            if self.tmp.is_dir() and self.target.is_symlink():
                self.target.unlink()  # a link cannot be replaced by a directory
            os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        remove_path(self.tmp)


@contextmanager
def atomic_output(path: str | Path, scratch: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path (in `scratch`, or beside `path`) to write `path` through; rename
    into place on success.

    >>> with atomic_output("cache/x.safetensors") as tmp:    # doctest: +SKIP
    ...     write_something(tmp)                              # file or directory

    On an exception the temporary is removed and `path` is left untouched; a full disk is
    raised again as an OSError naming `path` (`disk_full_error`).
    """
    atomic = AtomicPath(path, scratch=scratch)
    try:
        yield atomic.tmp
        atomic.commit()
    except BaseException as error:
        atomic.abort()
        named = disk_full_error(error, atomic.target)
        if named is not None:
            raise named from error
        raise


def save_json(path: str | Path, data: Any, scratch: str | Path | None = None) -> None:
    """Write JSON atomically: indented, keys in the given order, no NaN (use None)."""
    text = json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    with atomic_output(path, scratch) as tmp:
        tmp.write_text(text, encoding="utf-8")
