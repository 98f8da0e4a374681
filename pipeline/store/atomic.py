"""Atomic outputs: an artifact appears whole or not at all.

`atomic_output(path)` writes an artifact to a temporary sibling and renames it into place
only on success, so an interrupted stage never leaves a half artifact that DVC could cache.
`AtomicPath` is the same as an object, for writers that commit later (`RaggedWriter`) or
share one temporary between processes (`pipeline.distributed.ShardedOutput`); `save_json`
writes a JSON file through it.
"""

from __future__ import annotations

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


def _sibling(target: Path, kind: str, token: str | None = None) -> Path:
    return target.with_name(f".{target.name}.{kind}-{token or f'{os.getpid()}-{secrets.token_hex(4)}'}")


class AtomicPath:
    """A temporary sibling of `target` that becomes `target` on `commit()`.

    The caller creates `tmp` (a file or a directory). `commit()` moves it into place,
    replacing an existing target; `abort()` deletes it. A directory target is replaced
    by two renames (old aside, new in), so it is briefly absent but never half-written.
    A process killed with SIGKILL leaves its `.<name>.tmp-<pid>-<hex>` sibling behind;
    it is never mistaken for the artifact and can be deleted.

    `token` replaces `<pid>-<hex>` in the temporary's name: processes that share a token
    (drawn once, by one of them) share the temporary, which one of them commits.
    """

    def __init__(self, target: str | Path, token: str | None = None) -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _sibling(self.target, "tmp", token)

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
        remove_path(self.tmp)


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
