"""``[eval]``: the test protocol (what a test ranking excludes, what the test query reads)."""

from __future__ import annotations

from dataclasses import dataclass

from recfuse.config.checks import check_choice

EVAL_MASKS = ("train", "train+valid")
EVAL_HISTORIES = ("auto", "train", "train+valid")


@dataclass(frozen=True)
class EvalConfig:
    """The test protocol: what each user's test ranking excludes and what its query reads.

    Attributes:
        mask: items removed from a user's test ranking: ``train`` (the user's training items; the
            MMRec / RecBole convention and the default) or ``train+valid``. A test item is never
            removed, even when the user also has it in train or valid.
        history: the interactions the test query is built from: ``train+valid`` (every interaction
            before the test ones: the leave-one-out protocol, where the valid item is the one just
            before the test item), ``train`` (the random per-user protocol of MMRec and the
            Amazon-review papers: the query reads training items only) or ``auto``: ``train+valid``
            for the ``temporal`` and ``column`` splits, ``train`` for ``random`` and ``cold_start``.
    """

    mask: str = "train"
    history: str = "auto"

    def __post_init__(self) -> None:
        check_choice("eval", "mask", self.mask, EVAL_MASKS)
        check_choice("eval", "history", self.history, EVAL_HISTORIES)

    def resolved_history(self, split_kind: str) -> str:
        """``history`` with ``auto`` resolved for a split kind (``train`` or ``train+valid``)."""
        if self.history != "auto":
            return self.history
        return "train+valid" if split_kind in ("temporal", "column") else "train"

    def describe(self, split_kind: str) -> str:
        """One line for reports: ``mask train items; query reads train+valid``."""
        return f"ranking excludes each user's {self.mask} items; the query reads {self.resolved_history(split_kind)}"
