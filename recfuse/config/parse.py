"""The one loader of every config file: TOML / plain dicts to frozen config dataclasses and back.

The training config (:class:`recfuse.config.RecfuseConfig`), the experiment file
(``recfuse.evaluation.experiment_config``) and the server config (``recfuse_serving.config``) are
all read here, so they fail the same way:

* a missing file or invalid TOML names the file (:func:`read_toml`);
* an unknown key is named with its table and a did-you-mean hint, and the known keys are listed; the
  hint is a close key of the same table, else the table the key belongs to (``learning_rate`` under
  ``[model]``: ``did you mean [train] learning_rate?``);
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
    tables = table_keys(cls) if not section else {}
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:
        raise unknown_keys(unknown, known, where, {t: keys for t, keys in tables.items() if t != _TOP})
    if tables:
        _check_tables(raw, tables)
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


def unknown_keys(unknown: list[str], known: set[str], where: str, elsewhere: Mapping[str, set[str]]) -> ConfigError:
    """The error naming the ``unknown`` keys of the table ``where``, each with a did-you-mean hint.

    A close key of the same table is the hint; failing that, the table of ``elsewhere`` (label ->
    its keys, e.g. ``{"[train]": {...}}``) that holds the key, or a close one (:func:`other_table`).

    Example:
        >>> err = unknown_keys(["learning_rate"], {"dim"}, "`model`", {"[train]": {"learning_rate"}})
        >>> str(err).split("; known")[0]
        "unknown key(s) ['learning_rate'] in `model` ('learning_rate' -> did you mean [train] learning_rate?)"
    """
    guesses = []
    for key in unknown:
        if close := closest(key, known):
            guesses.append(f"{key!r} -> did you mean {close[0]!r}?")
        elif other := other_table(key, elsewhere):
            guesses.append(f"{key!r} -> did you mean {' or '.join(f'{t} {k}' for t, k in other)}?")
    hint = f" ({'; '.join(guesses)})" if guesses else ""
    return ConfigError(f"unknown key(s) {unknown} in {where}{hint}; known keys: {sorted(known)}")


def other_table(key: str, tables: Mapping[str, set[str]]) -> list[tuple[str, str]]:
    """``(table, key)`` pairs where ``key`` most likely belongs among ``tables`` (label -> its keys).

    Every table holding ``key`` itself; else every table holding the closest key; else none.
    """
    exact = [(t, key) for t, keys in tables.items() if key in keys]
    if exact:
        return exact
    close = closest(key, set().union(*tables.values())) if tables else []
    return [(t, close[0]) for t, keys in tables.items() if close and close[0] in keys]


#: the label of a root config's own keys among its tables (``table_keys``)
_TOP = "top-level"


def table_keys(cls: type) -> dict[str, set[str]]:
    """The keys of each table of the root config dataclass ``cls``: ``{"[model]": {...}, "[[modalities]]": ...}``.

    A field typed as a dataclass is a table, one typed as a tuple of dataclasses an array of tables;
    the other fields are ``cls``'s own keys, labelled ``top-level`` (absent when there are none).
    """
    hints = typing.get_type_hints(cls)
    out: dict[str, set[str]] = {}
    top = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        table, array = _table_class(hints[f.name])
        if table is None:
            top.add(f.name)
        else:
            out[f"[[{f.name}]]" if array else f"[{f.name}]"] = {g.name for g in dataclasses.fields(table) if g.init}
    return {**out, _TOP: top} if top else out


def _table_class(hint: Any) -> tuple[type | None, bool]:
    """``(dataclass, is an array of tables)`` of a field's type hint; ``(None, False)`` for a plain key."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint, False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        return args[0], True
    return None, False


def _check_tables(raw: Mapping[str, Any], tables: Mapping[str, set[str]]) -> None:
    """Refuse an unknown key in a table of a root config (``tables``: :func:`table_keys`), hinting at the
    table it belongs to.

    Runs before any table is built, where every table's keys are at hand; each table is named as
    :func:`build_section` names it (```model```, ```modalities[0]```).
    """
    for name, value in raw.items():
        if f"[{name}]" in tables:
            label, entries = f"[{name}]", [(f"`{name}`", value)]
        elif f"[[{name}]]" in tables and isinstance(value, list):
            label, entries = f"[[{name}]]", [(f"`{name}[{i}]`", v) for i, v in enumerate(value)]
        else:
            continue
        known = tables[label]
        others = {t: keys for t, keys in tables.items() if t != label}
        for where, entry in entries:
            unknown = sorted(str(k) for k in set(entry) - known) if isinstance(entry, Mapping) else []
            if unknown:
                raise unknown_keys(unknown, known, where, others)


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
