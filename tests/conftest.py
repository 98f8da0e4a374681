"""Shared fixtures: the small demo world, generated once per test session (per xdist worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pipeline  # noqa: E402,F401  (applies the torchvision shim before any test imports timm)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """The `small` demo world (both formats); read-only for tests: copy it before changing files."""
    from pipeline.demo_world import DemoWorldConfig, write_demo_world

    root = tmp_path_factory.mktemp("world") / "demo"
    write_demo_world(root, DemoWorldConfig.preset("small", seed=0))
    return root


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Path:
    """The whole chain run once, in process, on the small world (`chain_runner.small_params()`).

    Read-only for tests: copy the folder (`shutil.copytree(chain, ..., symlinks=True)`) before
    running a stage in it.
    """
    from chain_runner import run_chain, small_params

    folder = tmp_path_factory.mktemp("chain")
    run_chain(folder, small_params())
    return folder
