"""Deterministic, sticky assignment of users to A/B variants by a salted hash.

The same function serves the live service (route each request to its variant's bundle) and offline
simulation/analysis (which variant should a user have seen?), so both always agree.

How it works: ``sha256(salt + "\\x1f" + user_id)`` → the first 8 bytes as an unsigned integer →
``bucket = value % 10_000``. Variants own contiguous bucket ranges in the order the shares mapping
lists them, each ``round(cumulative_share * 10_000)`` wide, so a 90/10 split gives exactly
9,000/1,000 buckets. A user's bucket never changes for a given salt, so assignment is sticky across
processes, restarts and machines; changing the salt reshuffles everyone (a new experiment). Growing a
later variant's share (10% → 20%) moves only users from the variant ranged just before it.

Example:
    >>> shares = {"attention": 0.9, "concat": 0.1}
    >>> assign_variant("user-42", "exp1", shares) == assign_variant("user-42", "exp1", shares)
    True
    >>> assign_variant("user-42", "exp1", shares, override="concat")
    'concat'
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recfuse.errors import ConfigError, InvalidRequestError

NUM_BUCKETS = 10_000
SHARE_TOLERANCE = 1e-6
_SEP = "\x1f"  # unit separator: ("ab", "c") and ("a", "bc") never hash alike


def validate_shares(shares: Mapping[str, float]) -> dict[str, float]:
    """Check traffic shares: non-empty names, finite shares in [0, 1], summing to 1.

    Args:
        shares: variant name -> share of traffic (e.g. ``{"attention": 0.9, "concat": 0.1}``).

    Returns:
        A plain ``dict`` copy in the given order.

    Raises:
        ConfigError: empty mapping, empty/blank name, share outside [0, 1] or not a number, or a
            sum that differs from 1 by more than 1e-6.
    """
    if not isinstance(shares, Mapping) or not shares:
        raise ConfigError(f"`shares` must map variant names to traffic shares, got {shares!r}; e.g. attention=0.9")
    out: dict[str, float] = {}
    for name, share in shares.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"`shares` variant names must be non-empty strings, got {name!r}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share):
            raise ConfigError(f"`shares[{name!r}]` must be a number in [0, 1], got {share!r}")
        if not 0.0 <= float(share) <= 1.0:
            raise ConfigError(f"`shares[{name!r}]` must be in [0, 1], got {share!r}")
        out[name] = float(share)
    total = sum(out.values())
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ConfigError(f"`shares` must sum to 1, got {total:.6g} from {out}; rescale them, e.g. 0.9 and 0.1")
    return out


def parse_shares(text: str) -> dict[str, float]:
    """Parse ``"attention=0.9,concat=0.1"`` (as written on a command line) into validated shares.

    Raises:
        ConfigError: a part without ``=``, a non-numeric share, or invalid shares.
    """
    shares: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"`shares` part {part!r} must be NAME=SHARE, e.g. attention=0.9")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"`shares` part {part!r}: share {value!r} is not a number") from None
    return validate_shares(shares)


def user_bucket(user_id: str, salt: str) -> int:
    """Bucket in ``[0, 10_000)`` of one user under one salt (stable across processes and versions)."""
    if not isinstance(user_id, str) or not user_id:
        raise InvalidRequestError(f"`user_id` must be a non-empty string to assign a variant, got {user_id!r}")
    digest = hashlib.sha256(f"{salt}{_SEP}{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % NUM_BUCKETS


@dataclass(frozen=True)
class VariantAssigner:
    """Assignment with the shares validated once (the service builds one and calls it per request).

    Attributes:
        salt: experiment salt; a new salt reshuffles all users.
        shares: validated variant -> share mapping, in range order.
    """

    salt: str
    shares: Mapping[str, float]
    _bounds: np.ndarray = field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shares", validate_shares(self.shares))
        cum = np.cumsum(list(self.shares.values()))
        bounds = np.rint(cum * NUM_BUCKETS).astype(np.int64)
        bounds[-1] = NUM_BUCKETS
        object.__setattr__(self, "_bounds", bounds)
        object.__setattr__(self, "_names", tuple(self.shares))

    @property
    def variants(self) -> tuple[str, ...]:
        return self._names

    def variant_of_bucket(self, bucket: int) -> str:
        """Variant that owns ``bucket``."""
        idx = int(np.searchsorted(self._bounds, bucket, side="right"))
        return self._names[idx]

    def assign(self, user_id: str, override: str | None = None) -> str:
        """Variant of ``user_id``; ``override`` (a configured variant name) wins when given.

        Raises:
            InvalidRequestError: empty ``user_id`` or an ``override`` that is not a configured variant.
        """
        if override is not None and override != "":
            if override not in self.shares:
                raise InvalidRequestError(
                    f"variant override {override!r} is not a configured variant; choose one of {list(self.shares)}"
                )
            return override
        return self.variant_of_bucket(user_bucket(user_id, self.salt))

    def assign_many(self, user_ids: Sequence[str]) -> list[str]:
        """Variants of many users (offline simulation); same result as :meth:`assign` per user."""
        buckets = np.fromiter((user_bucket(u, self.salt) for u in user_ids), dtype=np.int64, count=len(user_ids))
        idx = np.searchsorted(self._bounds, buckets, side="right")
        return [self._names[i] for i in idx]


def assign_variant(user_id: str, salt: str, shares: Mapping[str, float], override: str | None = None) -> str:
    """Variant of one user: deterministic salted hash into 10,000 buckets split by ``shares``.

    Args:
        user_id: the user's id (non-empty string).
        salt: experiment salt.
        shares: variant name -> traffic share (sum 1), ranges laid out in mapping order.
        override: force this variant (tests, QA); must be one of ``shares``.

    Returns:
        The variant name.

    Raises:
        ConfigError: invalid shares. InvalidRequestError: empty user id or unknown override.

    Example:
        >>> assign_variant("u1", "s", {"a": 1.0})
        'a'
    """
    return VariantAssigner(salt, shares).assign(user_id, override)
