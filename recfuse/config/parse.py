"""The one loader of every config file: TOML / plain dicts to frozen config dataclasses and back.

The training config (:class:`recfuse.config.RecfuseConfig`), the experiment file
(``recfuse.evaluation.experiment_config``) and the server config (``recfuse_serving.config``) are
all read here, so they fail the same way:

* a missing file or invalid TOML names the file (:func:`read_toml`);
* an unknown key is named with its table and a did-you-mean hint, and the known keys are listed;
* a missing required key is named;
* a value of the wrong type names ``section.key``, the value, its type and the expected type
  (``bool``, ``int``, ``float`` (finite), ``str``, ``X | None``, tuples, string-keyed tables and nested
  dataclasses are checked; anything else is left to the dataclass);
* the dataclass's own validation (``__post_init__``, raising :class:`ConfigError` or
  ``ValueError``) runs on construction;
* every error raised while a file is loaded starts with the file's path (:func:`load_toml`).

Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class Limits:
    ...     max_k: int = 10
    >>> build_section(Limits, {"max_k": 5}, "limits")
    Limits(max_k=5)
    >>> build_section(Limits, {"mak_k": 5}, "limits")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ConfigError: unknown key(s) ['mak_k'] in `limits` ('mak_k' -> did you mean 'max_k'?); known keys: ['max_k']
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from recfuse.errors import ConfigError

T = TypeVar("T")

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def to_plain(value: Any) -> Any:
    """``value`` with tuples turned into lists, recursively (what JSON and TOML writers take)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def read_toml(path: str | Path, what: str, fix: str) -> dict[str, Any]:
    """The parsed TOML file at ``path``.

    Args:
        path: the file.
        what: how messages name the file (``"config file"``, ``"server config"`` …).
        fix: what to do when the file does not exist (``"pass --config PATH to a server.toml"``).

    Raises:
        ConfigError: the file does not exist, cannot be read or is not valid TOML.
    """
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {err}") from None


def load_toml(path: str | Path, build: Callable[[dict[str, Any]], T], what: str, fix: str) -> T:
    """``build(parsed TOML of path)``, with every :class:`ConfigError` it raises prefixed by the file.

    Example:
        >>> load_toml("server.toml", ServerConfig.from_dict, "server config", "pass --config")  # doctest: +SKIP
    """
    raw = read_toml(path, what, fix)
    try:
        return build(raw)
    except ConfigError as err:
        raise ConfigError(f"{what} {str(path)!r}: {err}") from None


def build_section(cls: type[T], raw: Any, section: str) -> T:
    """A ``cls`` config dataclass from the table ``raw`` found at ``section`` ('' for the top level).

    Raises:
        ConfigError: ``raw`` is not a table, has unknown keys, lacks a required key, holds a value of
            the wrong type, or the dataclass rejects a value (its ``ValueError`` becomes a
            :class:`ConfigError` prefixed by the section).
    """
    where = f"`{section}`" if section else "the top level"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table, got {raw!r} ({type(raw).__name__})")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"`cls` must be a dataclass, got {cls!r}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = {f.name for f in fields}
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:
        guesses = [f"{k!r} -> did you mean {close[0]!r}?" for k in unknown if (close := closest(k, known))]
        hint = f" ({'; '.join(guesses)})" if guesses else ""
        raise ConfigError(f"unknown key(s) {unknown} in {where}{hint}; known keys: {sorted(known)}")
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in raw
    ]
    if required:
        raise ConfigError(f"{where} is missing the required key(s) {required}")
    kwargs = {name: coerce(hints[name], value, f"{section}.{name}" if section else name) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names its key
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def closest(key: str, known: set[str]) -> list[str]:
    """The known key a misspelled ``key`` most likely meant (empty when none is close)."""
    return difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)


def _wrong(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"`{where}` must be {expected}, got {value!r} ({type(value).__name__})")


def coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` of the key at ``where`` (nested tables are built)."""
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build_section(hint, value, where)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            word = _TYPE_WORDS.get(inner)
            expected = f"a list of {word.split(' ', 1)[1]}s" if word and inner is not bool else "a list"
            raise _wrong(where, expected, value)
        return tuple(coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict):
        key_hint, value_hint = typing.get_args(hint) or (str, Any)
        if not isinstance(value, Mapping):
            raise _wrong(where, "a table", value)
        return {coerce(key_hint, k, where): coerce(value_hint, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or len(args) != 1:
            return value  # ``bool | str`` and the like: the dataclass checks which it takes
        return coerce(args[0], value, where)  # ``X | None``: a given value must be an X
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(where, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, "an integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(where, "a number", value)
        if not math.isfinite(value):  # TOML has nan and inf; no key means them, and nan passes range checks
            raise _wrong(where, "a finite number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(where, "a string", value)
        return value
    return value
