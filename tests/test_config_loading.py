from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.config_loading import ConfigError, build


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = (2, 3)
    name: str | None = None


@dataclass(frozen=True)
class Outer:
    lr: float
    mode: Literal["pixel", "patch"] = "pixel"
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, int] = field(default_factory=dict)


def test_builds_nested_and_converts_lists_to_tuples():
    config = build(Outer, {"lr": 1, "inner": {"size": [4, 5]}, "extra": {"a": 1}}, "params.yaml: s")
    assert config == Outer(lr=1.0, inner=Inner(size=(4, 5)), extra={"a": 1})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lr": 1, "typo": 2}, "params.yaml: s.typo: unknown key"),
        ({}, "params.yaml: s.lr: required key is missing"),
        ({"lr": "fast"}, "params.yaml: s.lr: expected a number"),
        ({"lr": 1, "mode": "voxel"}, "params.yaml: s.mode: 'voxel' is not allowed; choose one of 'pixel', 'patch'"),
        ({"lr": 1, "inner": {"size": [1]}}, "params.yaml: s.inner.size: expected 2 values"),
        ({"lr": 1, "inner": {"name": 3}}, "params.yaml: s.inner.name: expected str"),
        ({"lr": 1, "inner": []}, "params.yaml: s.inner: expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as error:
        build(Outer, data, "params.yaml: s")
    assert message in str(error.value)
