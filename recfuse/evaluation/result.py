"""Evaluation results: per-user metric arrays per segment (all / warm / cold), saved atomically as JSON.

Per-user values are kept (not only means) so two variants evaluated on the same split can be
compared user by user (paired bootstrap, permutation test). Users are identified by id, in sorted
order, so results of different models line up.

Example:
    >>> import numpy as np
    >>> seg = SegmentResult(["u1", "u2"], {"recall@10": np.array([1.0, 0.0])}, {"coverage@10": 0.5}, 1)
    >>> seg.means()["recall@10"]
    0.5
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recfuse.errors import ArtifactError
from recfuse.fsio import atomic_write_json

FORMAT = "recfuse.eval/1"
SEGMENTS = ("all", "warm", "cold")


@dataclass
class SegmentResult:
    """Metrics of one segment of test items (``all``, ``warm`` or ``cold``).

    Attributes:
        users: evaluated user ids ``[u]`` (sorted; users with ≥ 1 test item in the segment).
        per_user: metric name -> ``[u]`` float64 values aligned with ``users``.
        aggregate: catalog-level metrics (``coverage@k``, ``gini@k``).
        skipped_users: users with no test item in this segment (excluded, counted).
    """

    users: list[str]
    per_user: dict[str, npt.NDArray[np.float64]]
    aggregate: dict[str, float] = field(default_factory=dict)
    skipped_users: int = 0

    def means(self) -> dict[str, float]:
        """Mean of every per-user metric (NaN when no user was evaluated) plus the aggregates."""
        out = {name: float(v.mean()) if len(v) else float("nan") for name, v in self.per_user.items()}
        out.update(self.aggregate)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": list(self.users),
            "per_user": {k: [float(x) for x in v] for k, v in self.per_user.items()},
            "aggregate": dict(self.aggregate),
            "skipped_users": int(self.skipped_users),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SegmentResult:
        return cls(
            users=[str(u) for u in raw["users"]],
            per_user={k: np.asarray(v, dtype=np.float64) for k, v in raw["per_user"].items()},
            aggregate={k: float(v) for k, v in raw["aggregate"].items()},
            skipped_users=int(raw["skipped_users"]),
        )


@dataclass
class EvalResult:
    """Full-ranking evaluation of one model on one split.

    Attributes:
        ks: cut-offs evaluated.
        segments: ``"all"``, ``"warm"`` and (when the split has cold items) ``"cold"``.
        n_items: catalog size ranked.
        counts: bookkeeping, e.g. ``test_rows``, ``unknown_test_rows`` (test items the model cannot
            rank), ``users_no_test_items``.
        info: how the result was made, for reports: ``protocol`` (what the ranking excludes and
            what the query reads), ``split`` (kind, seed, sizes, fingerprint), ``model`` /
            ``baseline`` and its chosen parameters.
    """

    ks: tuple[int, ...]
    segments: dict[str, SegmentResult]
    n_items: int
    counts: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def means(self, segment: str = "all") -> dict[str, float]:
        """Mean metrics of one segment."""
        return self.segment(segment).means()

    def segment(self, name: str) -> SegmentResult:
        if name not in self.segments:
            raise KeyError(f"segment {name!r} not evaluated; available: {sorted(self.segments)}")
        return self.segments[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "ks": list(self.ks),
            "n_items": int(self.n_items),
            "counts": {k: int(v) for k, v in self.counts.items()},
            "segments": {k: s.to_dict() for k, s in self.segments.items()},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalResult:
        if raw.get("format") != FORMAT:
            raise ArtifactError(f"evaluation result format {raw.get('format')!r} is not {FORMAT!r}; re-run evaluation")
        return cls(
            ks=tuple(int(k) for k in raw["ks"]),
            segments={k: SegmentResult.from_dict(v) for k, v in raw["segments"].items()},
            n_items=int(raw["n_items"]),
            counts={k: int(v) for k, v in raw["counts"].items()},
            info=dict(raw.get("info") or {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write as JSON atomically (temp file + fsync + rename); returns the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        """Read a saved result.

        Raises:
            ArtifactError: missing, unreadable or of another format.
        """
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            msg = f"evaluation result {str(path)!r} cannot be read ({err}); delete it to re-run"
            raise ArtifactError(msg) from None
        return cls.from_dict(raw)
