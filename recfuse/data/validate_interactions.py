"""Interaction validation against the kept catalog: user and item ids, timestamps, weights.

See :mod:`recfuse.data.validate` for the data contract and the bad-row policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.data.report import MAX_PROBLEMS, Problem, TableReport
from recfuse.data.rows import apply_bad_rows, ids_to_str, short_value
from recfuse.data.schema import INTERACTION_SPECS, check_columns

# Unix seconds beyond this (year ~2200) are almost surely milliseconds or garbage.
MAX_TIMESTAMP = 7_258_118_400


def _timestamp_problems(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 seconds [n], bad mask [n])``."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        bad = series.isna().to_numpy()
        secs = (series.astype("datetime64[s]").astype("int64")).to_numpy()
        return np.where(bad, 0, secs).astype(np.int64), bad
    num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num) | (num < 0) | (num > MAX_TIMESTAMP) | (np.floor(np.nan_to_num(num)) != np.nan_to_num(num))
    return np.where(bad, 0, np.nan_to_num(num)).astype(np.int64), bad


def validate_interactions(
    interactions: pd.DataFrame,
    item_ids: set[str],
    *,
    rejected_items: set[str] | None = None,
    path: str = "interactions",
    on_bad_rows: str = "fail",
    quarantine_dir: str | Path = "quarantine",
    max_problems: int = MAX_PROBLEMS,
) -> tuple[pd.DataFrame, TableReport]:
    """Validate and normalise interactions against the kept catalog ids.

    Args:
        interactions: ``[n]`` rows as read.
        item_ids: ids of the kept catalog items.
        rejected_items: ids of catalog rows that were rejected (reason ``item_rejected`` instead of
            ``unknown_item``).

    Returns:
        ``(kept interactions, report)``; columns user_id, item_id (str), timestamp (int64), event (str),
        weight (float64) and any extra columns.
    """
    check_columns(interactions, INTERACTION_SPECS, "interactions", path)
    df = interactions.reset_index(drop=True).copy()
    users = ids_to_str(df["user_id"])
    items = ids_to_str(df["item_id"])
    secs, bad_ts = _timestamp_problems(df["timestamp"])
    weight = (
        pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if "weight" in df.columns
        else np.ones(len(df))
    )
    bad_weight = ~np.isfinite(weight) | (weight < 0)
    user_null = users.isna().to_numpy()
    item_null = items.isna().to_numpy()
    known = items.isin(item_ids).to_numpy()
    rejected = items.isin(rejected_items or set()).to_numpy()
    raw_ts = df["timestamp"].tolist()
    raw_w = df["weight"].tolist() if "weight" in df.columns else [1.0] * len(df)
    checks = (
        (user_null, "user_id", None, "null_user_id", "user_id is null; every interaction needs a user"),
        (item_null, "item_id", None, "null_item_id", "item_id is null; every interaction needs an item"),
        (bad_ts, "timestamp", raw_ts, "bad_timestamp",
         f"timestamp must be whole unix seconds in [0, {MAX_TIMESTAMP}] (milliseconds? divide by 1000)"),
        (bad_weight, "weight", raw_w, "bad_weight", "weight must be a finite number >= 0"),
        (rejected, "item_id", None, "item_rejected", "the item's catalog row was rejected (see rejected items)"),
        (~known, "item_id", None, "unknown_item", "item_id is not in the catalog; add the item or fix the id"),
    )  # fmt: skip
    bad: dict[int, Problem] = {}
    for mask, field, raw, reason, message in checks:
        for pos in np.flatnonzero(mask).tolist():
            if pos in bad:
                continue
            value = raw[pos] if raw is not None else df[field].iloc[pos]
            who = f"{users.iloc[pos]} -> {items.iloc[pos]}"
            bad[pos] = Problem(pos, who, field, short_value(value), reason, message)
    df["user_id"] = users
    df["item_id"] = items
    df["timestamp"] = secs
    df["weight"] = np.where(bad_weight, 0.0, weight)
    report = TableReport("interactions", path, max_problems=max_problems)
    if "event" in df.columns:
        df["event"] = df["event"].astype(object).where(df["event"].notna(), "").astype(str).astype(object)
    kept = apply_bad_rows(df, bad, report, on_bad_rows, Path(quarantine_dir) / "rejected_interactions.parquet")
    if "event" not in kept.columns:
        kept["event"] = pd.Series([""] * len(kept), dtype=object)
    kept["timestamp"] = kept["timestamp"].astype(np.int64)
    kept["weight"] = kept["weight"].astype(np.float64)
    return kept, report
