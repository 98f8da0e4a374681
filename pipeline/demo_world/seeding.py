"""Deterministic random streams and tokens derived from the seed and stable names.

Python's `hash()` of a string changes between processes, so names are hashed with sha256.
Every frame draws from its own stream, so generating one part never shifts another.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _digest(parts: tuple) -> bytes:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()


def rng_for(*parts) -> np.random.Generator:
    """A generator seeded by (seed, name, index, ...); same parts, same stream."""
    words = np.frombuffer(_digest(parts), dtype=np.uint32)
    return np.random.default_rng(np.random.SeedSequence(words.tolist()))


def token(*parts) -> str:
    """A 32-hex-digit token (the nuScenes token format) from stable parts."""
    return _digest(parts).hex()[:32]
