"""Plain dicts (parsed TOML / JSON) to config dataclasses and back, with typed, named errors.

Unknown keys are errors with a did-you-mean hint (a typo never silently becomes a default); values
are checked against the field's type hint (``bool``, ``int``, ``float``, ``str``, ``X | None``,
tuples and nested dataclasses).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from recfuse.errors import ConfigError


def to_plain(value: Any) -> Any:
    """``value`` with tuples turned into lists, recursively (what JSON and TOML writers take)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def build_section(cls: type[Any], raw: Mapping[str, Any], section: str) -> Any:
    """A ``cls`` config dataclass from the table ``raw`` found at ``section`` ('' for the top level).

    Raises:
        ConfigError: ``raw`` is not a table, has unknown keys or values of the wrong type.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"`{section or 'config'}` must be a table, got {type(raw).__name__}: {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        guesses = [f"{k!r} -> did you mean {close[0]!r}?" for k in unknown if (close := closest(k, known))]
        hint = f" ({'; '.join(guesses)})" if guesses else ""
        raise ConfigError(f"unknown key(s) {unknown} in `{section or 'config'}`{hint}; known keys: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{section}.{name}" if section else name
        kwargs[name] = coerce(hints[name], value, where)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"`{section or 'config'}`: {err}") from None


def closest(key: str, known: set[str]) -> list[str]:
    """The known key a misspelled ``key`` most likely meant (empty when none is close)."""
    return difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)


def coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` of the key at ``where`` (nested tables are built)."""
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build_section(hint, value, where)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{where}` must be a list, got {value!r}")
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            return tuple(build_section(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(coerce(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or len(args) != 1:
            return value
        return coerce(args[0], value, where)  # ``X | None``: a given value must be an X
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{where}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{where}` must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{where}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{where}` must be a string, got {value!r}")
        return value
    return value
