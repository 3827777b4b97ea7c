"""``[data]``: where the catalog and interactions are, how they are split and how bad rows are handled."""

from __future__ import annotations

from dataclasses import dataclass

from recfuse.config.checks import check_choice, check_range

SPLITS = ("random", "temporal", "cold_start", "column")


@dataclass(frozen=True)
class DataConfig:
    """Where the catalog and interactions are and how they are split.

    Attributes:
        items: catalog file (Parquet, CSV or JSON Lines).
        interactions: interactions file (same formats).
        images_dir: base directory of relative image paths; empty means the catalog file's directory.
        split: ``random`` (per-user 8:1:1), ``temporal`` (per-user leave-one-out by time: the
            standard leave-one-out protocol), ``cold_start`` (items held out) or ``column`` (the
            interactions' own ``split`` column: ``train`` / ``valid`` / ``test``); see
            :mod:`recfuse.data.splits`.
        split_seed: seed of the ``random`` and ``cold_start`` splits (the same seed gives the same split;
            an experiment keeps it fixed across variants and seeds).
        cold_item_fraction: share of items held out entirely for the ``cold_start`` split.
        max_history: longest history a query reads: training examples and evaluation queries keep a
            user's latest ``max_history`` interactions.
        on_bad_rows: ``fail`` stops at the first unusable row; ``quarantine`` writes them to a side file.
        quarantine_dir: where ``on_bad_rows = "quarantine"`` writes the rejected rows
            (``rejected_items.parquet``, ``rejected_interactions.parquet``); empty means ``quarantine/``
            beside the catalog file.
        allow_external_images: image paths may point outside ``images_dir`` (absolute paths, ``..``).
            Off by default: a catalog cannot make recfuse read files elsewhere on the machine.
        max_title_chars: longest ``title`` (characters, default 1000).
        max_text_chars: longest value of any other text column, e.g. ``description`` (default 20000).
        long_text: what ``validate`` does with a longer value: ``truncate`` (cut it, counted in the
            report as ``truncated``) or ``reject`` (a bad row, reason ``text_too_long``).
    """

    items: str = "data_samples/items.parquet"
    interactions: str = "data_samples/interactions.parquet"
    images_dir: str = ""
    split: str = "random"
    split_seed: int = 42
    cold_item_fraction: float = 0.1
    max_history: int = 20
    on_bad_rows: str = "fail"
    quarantine_dir: str = ""
    allow_external_images: bool = False
    max_title_chars: int = 1000
    max_text_chars: int = 20_000
    long_text: str = "truncate"

    def __post_init__(self) -> None:
        check_choice("data", "split", self.split, SPLITS)
        check_choice("data", "on_bad_rows", self.on_bad_rows, ("fail", "quarantine"))
        check_choice("data", "long_text", self.long_text, ("truncate", "reject"))
        check_range("data", "max_title_chars", self.max_title_chars, 1)
        check_range("data", "max_text_chars", self.max_text_chars, 1)
        check_range("data", "cold_item_fraction", self.cold_item_fraction, 0.0, 0.9)
        check_range("data", "max_history", self.max_history, 1, 1000)
