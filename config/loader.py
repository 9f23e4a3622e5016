"""The one loader: a TOML file or a mapping -> a dataclass, refusing unknown keys, wrong types
and bad values with the file, the key and the reason (ConfigError). Field checks are attached
to dataclass fields with `field(default, check)`."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from inferd.common.errors import ConfigError

Check = Callable[[Any], "str | None"]


def field(default, check: Check | None = None):
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


def at_least(low):
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def between(low, high):
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v}"


def one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"


def type_name(t) -> str:
    return getattr(t, "__name__", str(t))


def items_of(want) -> type | None:
    """The item type of a `tuple[X, ...]` field (a TOML array), else None."""
    if typing.get_origin(want) is tuple:
        args = typing.get_args(want)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _coerce(value, want, file: str, key: str):
    item = items_of(want)
    if item is not None:  # an array: a tuple (the dataclasses are frozen), each item checked
        if not isinstance(value, list | tuple):
            raise ConfigError(file, key, f"expected an array of {type_name(item)}, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, item, file, f"{key}[{i}]") for i, v in enumerate(value))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, bool) or not isinstance(value, want):
        raise ConfigError(file, key, f"expected {type_name(want)}, got {type(value).__name__} {value!r}")
    return value


def build(cls, data: Mapping[str, Any], file: str, prefix: str = ""):
    """Build dataclass `cls` from `data`, checking every key."""
    if not isinstance(data, Mapping):
        raise ConfigError(file, prefix or "(top level)", f"expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        f = known.get(key)
        if f is None:
            raise ConfigError(file, where, f"unknown key; known keys: {', '.join(known)}")
        want = hints[key]
        if dataclasses.is_dataclass(want):
            values[key] = build(want, value, file, where)
            continue
        values[key] = _coerce(value, want, file, where)
        check = f.metadata.get("check")
        reason = check(values[key]) if check else None
        if reason:
            raise ConfigError(file, where, reason)
    obj = cls(**values)
    cross = getattr(obj, "cross_check", None)
    problem = cross() if cross else None
    if problem:
        key, reason = problem
        raise ConfigError(file, f"{prefix}.{key}" if prefix else key, reason)
    return obj


def read_toml(path: Path) -> dict:
    """A TOML file's content; anything that keeps it from being read is a ConfigError naming
    the file (missing, unreadable, a directory, not UTF-8, not TOML)."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", "no such file") from None
    except OSError as e:
        raise ConfigError(str(path), "(file)", f"cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), "(file)", f"not UTF-8 text: {e.reason} at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), "(syntax)", str(e)) from None
