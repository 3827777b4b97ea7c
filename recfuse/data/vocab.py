"""Id vocabularies (users, items, categories): built once, saved with every artifact.

Known ids map to ``num_oov + position``; unknown ids map to one of ``num_oov`` out-of-vocabulary
buckets chosen by a stable hash (crc32, identical in every process and in numpy-only serving), or to
``-1`` when ``num_oov == 0`` (used for items, where an unknown id must be skipped, not guessed).
A vocabulary with no ids (:meth:`IdVocab.hashed`) maps every id to its bucket: the hashed user table
of ``model.user_id_buckets``; :func:`hash_buckets` is the same hash for the item table of
``model.item_id_buckets``.
Ids are strings everywhere (an integer catalog id ``7`` becomes ``"7"``).

Example:
    >>> v = IdVocab.build(["b", "a", "b"], num_oov=1)
    >>> v.lookup(["a", "b", "zzz"]).tolist()
    [2, 1, 0]
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recfuse.errors import ArtifactError
from recfuse.types import Int64Array

FORMAT = "recfuse.vocab/1"


def id_str(value: object) -> str:
    """Canonical string form of a catalog/user id (ints and numpy ints print without decoration)."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def hash_bucket(value: str, buckets: int) -> int:
    """The stable bucket ``crc32(utf-8 value) % buckets`` of an id (the same in every process)."""
    return zlib.crc32(value.encode("utf-8")) % buckets


def hash_buckets(values: Iterable[object], buckets: int) -> Int64Array:
    """``[n]`` int64 :func:`hash_bucket` of each id (in its :func:`id_str` form).

    Example:
        >>> hash_buckets(["a", 7], 5).tolist() == [hash_bucket("a", 5), hash_bucket("7", 5)]
        True
    """
    if buckets < 1:
        raise ValueError(f"`buckets` must be >= 1, got {buckets!r}")
    return np.fromiter((hash_bucket(id_str(v), buckets) for v in values), dtype=np.int64)


@dataclass(frozen=True)
class IdVocab:
    """Ordered id vocabulary with hashed OOV buckets.

    Attributes:
        ids: known ids in index order (index of ``ids[i]`` is ``num_oov + i``).
        num_oov: number of hash buckets for unknown ids (0: unknown ids map to -1).
    """

    ids: tuple[str, ...]
    num_oov: int = 1
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_oov < 0:
            raise ValueError(f"`num_oov` must be >= 0, got {self.num_oov}")
        index = {v: i + self.num_oov for i, v in enumerate(self.ids)}
        if len(index) != len(self.ids):
            raise ValueError("`ids` must be unique; build the vocabulary with IdVocab.build()")
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(cls, values: Iterable[object], num_oov: int = 1) -> IdVocab:
        """Vocabulary of the distinct values in first-seen order."""
        seen: dict[str, None] = {}
        for v in values:
            seen.setdefault(id_str(v), None)
        return cls(tuple(seen), num_oov)

    @classmethod
    def hashed(cls, buckets: int) -> IdVocab:
        """A vocabulary of no ids and ``buckets`` hash buckets: every id maps to ``hash_bucket(id, buckets)``."""
        if buckets < 1:
            raise ValueError(f"`buckets` must be >= 1, got {buckets!r}")
        return cls((), buckets)

    @property
    def size(self) -> int:
        """Number of rows an embedding table over this vocabulary needs (OOV buckets included)."""
        return self.num_oov + len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, value: object) -> bool:
        return id_str(value) in self._index

    def oov_bucket(self, value: str) -> int:
        if self.num_oov == 0:
            return -1
        return hash_bucket(value, self.num_oov)

    def lookup_one(self, value: object) -> int:
        s = id_str(value)
        idx = self._index.get(s)
        return idx if idx is not None else self.oov_bucket(s)

    def lookup(self, values: Sequence[object] | Iterable[object]) -> Int64Array:
        """Indices ``[n]`` (int64) of the given ids."""
        return np.fromiter((self.lookup_one(v) for v in values), dtype=np.int64)

    def id_of(self, index: int) -> str:
        """The id at ``index`` (raises ``IndexError`` for OOV buckets and out-of-range indices)."""
        pos = int(index) - self.num_oov
        if pos < 0 or pos >= len(self.ids):
            raise IndexError(f"index {index} is not a known id (num_oov={self.num_oov}, size={self.size})")
        return self.ids[pos]

    def to_json(self) -> dict[str, object]:
        return {"format": FORMAT, "num_oov": self.num_oov, "ids": list(self.ids)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> IdVocab:
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"cannot read vocabulary {str(p)!r}: {err}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise ArtifactError(f"vocabulary {str(p)!r} has format {found!r}, expected {FORMAT!r}")
        return cls(tuple(str(x) for x in raw["ids"]), int(raw["num_oov"]))
