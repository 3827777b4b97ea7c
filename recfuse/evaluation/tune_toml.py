"""A small TOML writer for config dicts (``RecfuseConfig.to_written_dict()``): ``recfuse tune``'s best.toml.

It covers what a config holds: strings, booleans, integers, floats (``inf`` / ``nan`` included), lists of
those, tables, and lists of tables (``[[modalities]]``). ``None`` has no TOML spelling, so a ``None`` value is
left out: every config field that can be ``None`` defaults to ``None``, so reading the file back gives an
equal config (:func:`config_toml` checks that).

Example:
    >>> print(dumps({"variant": "gated", "model": {"dim": 8, "query_hidden": [16]}}).strip())
    variant = "gated"
    <BLANKLINE>
    [model]
    dim = 8
    query_hidden = [16]
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from recfuse.config import RecfuseConfig
from recfuse.errors import ConfigError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(value: str) -> str:
    # JSON's escapes (\" \\ \n \t \uXXXX) are TOML basic-string escapes too; DEL is the one control
    # character JSON leaves raw and TOML refuses.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v, where)}" for k, v in value.items() if v is not None) + "}"
    raise ConfigError(f"`{where}`: cannot write {type(value).__name__} {value!r} as TOML")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _emit(table: Mapping[str, Any], path: list[str], header: str | None, lines: list[str]) -> None:
    if header is not None:
        lines += ["", header]
    nested = []
    for k, v in table.items():
        where = ".".join([*path, k])
        if v is None:
            continue
        if isinstance(v, Mapping) or _is_table_list(v):
            nested.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v, where)}")
    for k, v in nested:
        sub = [*path, k]
        dotted = ".".join(_key(p) for p in sub)
        if isinstance(v, Mapping):
            _emit(v, sub, f"[{dotted}]", lines)
        else:
            for entry in v:
                _emit(entry, sub, f"[[{dotted}]]", lines)


def dumps(data: Mapping[str, Any]) -> str:
    """TOML text of a plain dict (plain values first, then tables, then arrays of tables)."""
    lines: list[str] = []
    _emit(data, [], None, lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def config_toml(cfg: RecfuseConfig) -> str:
    """The full config as TOML text that ``RecfuseConfig.from_toml`` reads back into an equal config.

    Each modality holds the keys of its kind only (``RecfuseConfig.to_written_dict``), as a config
    file must.

    Raises:
        ConfigError: the text would not read back equal (a value TOML cannot carry).
    """
    text = dumps(cfg.to_written_dict())
    if RecfuseConfig.from_written_dict(tomllib.loads(text)) != cfg:
        raise ConfigError("the config does not round-trip through TOML; a value has no TOML spelling")
    return text
