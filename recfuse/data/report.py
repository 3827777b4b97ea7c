"""Validation report: what was read, kept and rejected (and why), per table.

Nothing is dropped silently: every rejected row is counted under a reason, the first problem rows
are listed with their row number, id, field and value, and (in quarantine mode) written to a side
file whose path the report records.

Example:
    >>> r = TableReport("items", "items.parquet")
    >>> r.reject(Problem(3, "i3", "image", "x.png", "image_missing", "no such file"))
    >>> r.read = 10; r.ok = 9
    >>> r.reasons
    {'image_missing': 1}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One unusable row.

    Attributes:
        row: 0-based position of the row among the file's data rows.
        id: the row's item id (catalog) or ``user_id -> item_id`` (interactions), as text.
        field: the offending column.
        value: a short text rendering of the offending value.
        reason: machine-readable reason code (``image_missing``, ``unknown_item``…).
        message: human explanation with the fix.
    """

    row: int
    id: str
    field: str
    value: str
    reason: str
    message: str

    def to_text(self) -> str:
        return f"row {self.row} (id {self.id!r}) field {self.field!r} value {self.value!r}: {self.message}"


@dataclass
class TableReport:
    """Counts for one table (``items`` or ``interactions``)."""

    name: str
    path: str
    read: int = 0
    ok: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    quarantine_file: str = ""
    max_problems: int = MAX_PROBLEMS

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def reject(self, problem: Problem) -> None:
        """Count one rejected row (its first problem) and keep it if fewer than ``max_problems`` are kept."""
        self.reasons[problem.reason] = self.reasons.get(problem.reason, 0) + 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "read": self.read,
            "ok": self.ok,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "problems": [p.__dict__.copy() for p in self.problems],
            "quarantine_file": self.quarantine_file,
        }


@dataclass
class ValidationReport:
    """Report of one :func:`recfuse.data.validate.load_dataset` run.

    Attributes:
        items: catalog counts.
        interactions: interaction counts.
        users: distinct users among the kept interactions.
        coverage: modality name -> share of kept items that have it (``image``, ``text``, vectors…).
        notes: extra lines (e.g. defaults filled in) shown in :meth:`to_text`.
    """

    items: TableReport
    interactions: TableReport
    users: int = 0
    coverage: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return self.items.rejected + self.interactions.rejected

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items.to_dict(),
            "interactions": self.interactions.to_dict(),
            "users": self.users,
            "coverage": dict(self.coverage),
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        """Multi-line human summary (what ``recfuse validate`` prints)."""
        lines: list[str] = []
        for t in (self.items, self.interactions):
            lines.append(f"{t.name}: {t.read} read, {t.ok} ok, {t.rejected} rejected  ({t.path})")
            for reason, n in sorted(t.reasons.items()):
                lines.append(f"  rejected {reason}: {n}")
            for p in t.problems[:5]:
                lines.append(f"  - {p.to_text()}")
            if t.quarantine_file:
                lines.append(f"  quarantined rows written to {t.quarantine_file}")
        lines.append(f"users: {self.users}")
        if self.coverage:
            cov = ", ".join(f"{k} {v:.1%}" for k, v in self.coverage.items())
            lines.append(f"modality coverage: {cov}")
        lines.extend(self.notes)
        return "\n".join(lines)
