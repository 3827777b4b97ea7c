"""Request limits and validation: every bad field is an InvalidRequestError naming it and the limit.

The gRPC layer maps :class:`~recfuse.errors.InvalidRequestError` to ``INVALID_ARGUMENT``, so these
messages reach clients verbatim: each names the field, shows the value (or its size) and the limit.

Example:
    >>> Limits().check(RecommendQuery(k=0))
    Traceback (most recent call last):
    ...
    recfuse.errors.InvalidRequestError: `k` must be in [1, 1000], got 0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from recfuse.errors import ConfigError, InvalidRequestError
from recfuse.inference.types import RecommendQuery


@dataclass(frozen=True)
class Limits:
    """Upper bounds on one request.

    Attributes:
        max_k: largest ``k``.
        max_history: longest request ``history``.
        max_id_length: longest user/item/category id (characters).
        max_exclusions: most ``exclude_item_ids``.
        max_categories: most include + exclude categories.
        max_batch: most queries in one ``recommend_batch``.
    """

    max_k: int = 1000
    max_history: int = 1000
    max_id_length: int = 256
    max_exclusions: int = 1000
    max_categories: int = 100
    max_batch: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_k", "max_history", "max_id_length", "max_exclusions", "max_categories", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"`limits.{name}` must be a positive integer, got {value!r}")

    def check_k(self, k: object) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_k:
            raise InvalidRequestError(f"`k` must be in [1, {self.max_k}], got {k!r}")
        return k

    def check_ids(self, field: str, values: Sequence[str], max_count: int) -> list[str]:
        if isinstance(values, (str, bytes)):
            raise InvalidRequestError(f"`{field}` must be a list of ids, got the single string {values!r}")
        if len(values) > max_count:
            raise InvalidRequestError(f"`{field}` has {len(values)} entries; at most {max_count} are allowed")
        out = []
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise InvalidRequestError(f"`{field}[{i}]` must be a string id, got {type(v).__name__} {v!r}")
            if not v:
                raise InvalidRequestError(f"`{field}[{i}]` is an empty string; remove it or pass a real id")
            if len(v) > self.max_id_length:
                raise InvalidRequestError(
                    f"`{field}[{i}]` is {len(v)} characters long; ids are at most {self.max_id_length} ({v[:32]!r}…)"
                )
            out.append(v)
        return out

    def check_user(self, user_id: object) -> str | None:
        """``None`` or ``""`` mean anonymous (proto3 sends ``""`` for an unset string)."""
        if user_id is None or user_id == "":
            return None
        if not isinstance(user_id, str):
            raise InvalidRequestError(f"`user_id` must be a string or None, got {type(user_id).__name__} {user_id!r}")
        if len(user_id) > self.max_id_length:
            raise InvalidRequestError(
                f"`user_id` is {len(user_id)} characters long; ids are at most {self.max_id_length} ({user_id[:32]!r}…)"
            )
        return user_id

    def check(self, q: RecommendQuery) -> RecommendQuery:
        """``q`` validated: ``q`` itself, or a copy with the anonymous user as ``None`` (``""`` on the
        wire) and ``exclude_seen`` a bool. Empty lists cost nothing to check (the common request)."""
        self.check_k(q.k)
        if len(q.include_categories) or len(q.exclude_categories):
            include = self.check_ids("include_categories", q.include_categories, self.max_categories)
            exclude = self.check_ids("exclude_categories", q.exclude_categories, self.max_categories)
            if len(include) + len(exclude) > self.max_categories:
                raise InvalidRequestError(
                    f"`include_categories` + `exclude_categories` have {len(include) + len(exclude)} entries; "
                    f"at most {self.max_categories} are allowed"
                )
        if len(q.history):
            self.check_ids("history", q.history, self.max_history)
        if len(q.exclude_item_ids):
            self.check_ids("exclude_item_ids", q.exclude_item_ids, self.max_exclusions)
        user = self.check_user(q.user_id)
        if user is q.user_id and type(q.exclude_seen) is bool:
            return q
        return dataclasses.replace(q, user_id=user, exclude_seen=bool(q.exclude_seen))
