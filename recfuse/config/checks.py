"""Validation helpers shared by the config sections: messages name the key and show the value."""

from __future__ import annotations

from recfuse.errors import ConfigError


def check_choice(section: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"`{section}.{name}` must be one of {list(choices)}, got {value!r}")


def check_range(section: str, name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"`{section}.{name}` must be in {bounds}, got {value!r}")
