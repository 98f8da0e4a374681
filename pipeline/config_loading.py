"""Typed, validated loading of plain YAML/JSON data into frozen dataclasses.

Every params section is a frozen dataclass. `build(cls, data, where)` checks each key
against the dataclass fields and each value against the field's type annotation (ints,
floats, bools, strings, Literal choices, Optional, tuples, dicts and nested dataclasses),
and stops with a `ConfigError` naming the full key (e.g. `params.yaml: distill.lr`) and
what was expected. Nothing is coerced silently, except ints where floats are expected and
lists where tuples are expected (YAML has no tuples). NaN and infinity are refused for every
float. A union of dataclasses that each have a one-value Literal field `kind` is a table of
kinds: the mapping's `kind` picks the class (none given: the first), so an error names that
class's keys, not every option's. `load_yaml` reads a file and refuses a key written twice in
one mapping.
"""

from __future__ import annotations

import dataclasses
import math
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A params value is unknown, missing or of the wrong type; the message names the key."""


class FieldError(ValueError):
    """A config's own check (`__post_init__`) found one field bad; `build` names its full key."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def require(config: Any, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """The common field checks of a config's `__post_init__`: these fields must be > 0 / >= 0."""
    for name in positive:
        if not getattr(config, name) > 0:
            raise FieldError(name, f"must be > 0, got {getattr(config, name)!r}")
    for name in non_negative:
        if not getattr(config, name) >= 0:
            raise FieldError(name, f"must be >= 0, got {getattr(config, name)!r}")


def key_path(where: str, name: str) -> str:
    """`params.yaml:` + `distill` -> `params.yaml: distill`; `params.yaml: distill` + `lr` -> `... distill.lr`."""
    return f"{where} {name}" if where.endswith(":") else f"{where}.{name}"


def build(cls: type[T], data: Any, where: str) -> T:
    """Create dataclass `cls` from a mapping, validating every key; `where` prefixes errors
    (end it with ":" for a file name, e.g. "params.yaml:")."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{key_path(where, unknown[0])}: unknown key; allowed keys: {', '.join(fields)}")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], key_path(where, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path(where, name)}: required key is missing")
    try:
        return cls(**values)
    except FieldError as error:  # __post_init__ found one field bad: name its key
        raise ConfigError(f"{key_path(where, error.field)}: {error.problem}") from None
    except (ValueError, TypeError) as error:  # __post_init__ checks across fields
        raise ConfigError(f"{where}: {error}") from None


def _convert(annotation: Any, value: Any, where: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, where)
    if origin is Literal:
        allowed = get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: must not be null")
        kinds = _kinds(options)
        if kinds and isinstance(value, dict):  # a table of kinds: the `kind` key chooses the class
            kind = value.get("kind", next(iter(kinds)))
            if kind not in kinds:
                raise ConfigError(f"{key_path(where, 'kind')}: {kind!r} is not allowed; choose one of "
                                  f"{', '.join(map(repr, kinds))}")
            return build(kinds[kind], value, where)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {annotation}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = get_args(annotation)
        return {_convert(key_type, k, where): _convert(value_type, v, key_path(where, str(k))) for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf: no setting of ours means anything with them
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if annotation in (int, str, bool):
        if type(value) is not annotation:
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")  # a bug in a config class


def _kinds(options: tuple) -> dict[str, type]:
    """The classes of a union told apart by their `kind` field (a one-value Literal, also its
    default), keyed by kind, first option first; {} when the union is not such a table. A mapping
    without `kind` takes the first."""
    kinds = {}
    for option in options:
        if option is type(None):
            continue
        if not dataclasses.is_dataclass(option):
            return {}
        hint = get_type_hints(option).get("kind")
        if get_origin(hint) is not Literal or len(get_args(hint)) != 1:
            return {}
        kinds[get_args(hint)[0]] = option
    return kinds


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (PyYAML
    keeps the last one silently; DVC refuses such a file, so a stage run by hand must too)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{key_node.start_mark.name}: key {key!r} is written twice in one mapping, "
                                  f"on lines {first_line[key]} and {line}; keep one")
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    """The data of a YAML file; errors name the file (not found, not YAML, a key written twice)."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    loader = _UniqueKeyLoader(path.read_text())
    loader.name = str(path)  # marks, and so errors, name the file
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()
