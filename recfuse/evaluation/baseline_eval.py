"""Score the simple baselines on a split, exactly as a trained model is scored.

Each baseline (:mod:`recfuse.evaluation.baselines`: ``popularity``, ``itemknn``, ``ease``) is fit on
the split's training interactions, its hyper-parameter is chosen on the validation interactions
(the query reads the user's training items, which are masked), and the test ranking uses the same
protocol (:class:`recfuse.config.EvalConfig`), masks, cut-offs and metrics as
:func:`recfuse.evaluation.fullrank.evaluate_model`: the user's profile is the items the protocol's
query reads (train, or train + valid), every catalog item is ranked.

Example:
    >>> result = evaluate_baseline("ease", split, item_ids, ks=(10, 20))  # doctest: +SKIP
    >>> result.means()["hit@10"], result.info["baseline"]["params"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfuse.config import EvalConfig
from recfuse.evaluation.baselines import BASELINES, BaselineSettings, fit_baseline
from recfuse.evaluation.fullrank import SplitLike, build_eval_sets, evaluate_scores
from recfuse.evaluation.result import EvalResult
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)


def _rows(df: pd.DataFrame, users: Mapping[str, int], items: Mapping[str, int]) -> tuple[Int64Array, Int64Array]:
    """(user row, item column) of each row of ``df`` whose item is known (others are skipped)."""
    if df is None or df.empty:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cols = df["item_id"].astype(str).map(items)
    known = cols.notna().to_numpy()
    rows = df["user_id"].astype(str).map(users).to_numpy()[known]
    return rows.astype(np.int64), cols.to_numpy()[known].astype(np.int64)


def _binary(rows: Int64Array, cols: Int64Array, shape: tuple[int, int]) -> sp.csr_matrix:
    """A 0/1 CSR matrix (repeated pairs count once)."""
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _chosen(settings: BaselineSettings, params: Mapping[str, Any]) -> BaselineSettings:
    """``settings`` whose grids hold only the chosen ``params`` (popularity has none)."""
    if "lambda" in params:
        settings = dataclasses.replace(settings, ease_lambdas=(float(params["lambda"]),))
    if "neighbors" in params:
        shrink = float(params.get("shrink", settings.itemknn_shrink))
        settings = dataclasses.replace(settings, itemknn_neighbors=(int(params["neighbors"]),), itemknn_shrink=shrink)
    return settings


def _lists(rows: Int64Array, cols: Int64Array, n_rows: int) -> list[Int64Array]:
    order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[order], np.arange(1, n_rows))
    return list(np.split(cols[order], bounds))


def evaluate_baseline(
    name: str,
    split: SplitLike,
    item_ids: Sequence[str],
    protocol: EvalConfig | None = None,
    ks: Sequence[int] = (10, 20, 50),
    settings: BaselineSettings | None = None,
    block_size: int = 1024,
    refit: bool = False,
) -> EvalResult:
    """Fit ``name`` on ``split.train``, choose its hyper-parameter on ``split.val``, score ``split.test``.

    Args:
        name: one of :data:`recfuse.evaluation.baselines.BASELINES`.
        split: train / val / test interactions (``recfuse.data.splits.Split``).
        item_ids: the catalog ranked (``[n]``; the same item list a model ranks).
        protocol: what the test ranking excludes and what the profile reads (default ``EvalConfig()``).
        ks: cut-offs.
        settings: hyper-parameter grids and limits (default :class:`BaselineSettings`).
        block_size: users scored per block.
        refit: after the choice, fit again with the chosen value on ``split.train`` and ``split.val``
            together (what ``train.refit`` does for a model), and score ``split.test`` with that fit.

    Returns:
        :class:`EvalResult` with ``info["baseline"]`` = name, chosen params, the validation table
        and fit / eval seconds.

    Raises:
        ValueError: unknown ``name`` (the known ones are listed), or what the baseline refuses (e.g.
            EASE above its item limit).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {list(BASELINES)}")
    settings = settings or BaselineSettings()
    protocol = protocol or EvalConfig()
    item_ids = [str(i) for i in item_ids]
    items = {item: i for i, item in enumerate(item_ids)}
    n_items = len(item_ids)
    all_users = sorted(set().union(*(set(df["user_id"].astype(str)) for df in (split.train, split.val, split.test))))
    users = {u: i for i, u in enumerate(all_users)}
    train = _binary(*_rows(split.train, users, items), (len(all_users), n_items))

    v_rows, v_cols = _rows(split.val, users, items)
    valid_users = np.unique(v_rows)
    if len(valid_users):
        position = np.full(len(all_users), -1, np.int64)
        position[valid_users] = np.arange(len(valid_users))
        valid_targets = _lists(position[v_rows], v_cols, len(valid_users))
        valid_profiles = train[valid_users]
        valid_exclude = [valid_profiles.indices[valid_profiles.indptr[r] : valid_profiles.indptr[r + 1]]
                         for r in range(len(valid_users))]  # fmt: skip
    else:
        logger.warning("split has no validation interactions: %s keeps the first value of its grid", name)
        valid_profiles, valid_targets, valid_exclude = train[:0], [], []
    t0 = time.perf_counter()
    fitted = fit_baseline(name, train, valid_profiles, valid_targets, valid_exclude, settings)
    if refit and len(valid_users):
        merged = _binary(*_rows(pd.concat([split.train, split.val], ignore_index=True), users, items), train.shape)
        chosen = _chosen(settings, fitted.params)
        fitted = dataclasses.replace(
            fit_baseline(name, merged, valid_profiles, valid_targets, valid_exclude, chosen),
            selection=fitted.selection,
        )
    fit_seconds = time.perf_counter() - t0

    sets = build_eval_sets(split, item_ids, protocol)
    prof_rows = np.repeat(np.arange(len(sets.users)), [len(h) for h in sets.histories])
    prof_items = [items.get(i, -1) for h in sets.histories for i in h]
    prof_cols = np.asarray(prof_items, dtype=np.int64)
    keep = prof_cols >= 0
    profiles = _binary(prof_rows[keep], prof_cols[keep], (len(sets.users), n_items))

    def score(rows: Int64Array) -> FloatArray:
        return np.asarray(fitted.score(profiles[rows]), dtype=np.float32)

    t1 = time.perf_counter()
    result = evaluate_scores(
        score,
        n_items,
        sets.users,
        sets.exclude,
        sets.test,
        ks=ks,
        cold_mask=sets.cold_mask,
        item_counts=sets.item_counts,
        block_size=block_size,
        counts=sets.counts,
    )
    eval_seconds = time.perf_counter() - t1
    result.info.update(sets.info)
    result.info["baseline"] = _describe(fitted, fit_seconds, eval_seconds)
    logger.info("baseline %s %s: fit %.1f s, eval %.1f s", name, fitted.params, fit_seconds, eval_seconds)
    return result


def _describe(fitted: Any, fit_seconds: float, eval_seconds: float) -> dict[str, Any]:
    return {
        "name": fitted.name,
        "params": dict(fitted.params),
        "selection": list(getattr(fitted, "selection", [])),
        "fit_seconds": round(fit_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
    }
