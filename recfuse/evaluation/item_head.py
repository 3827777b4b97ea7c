"""Fit the item-item head of a trained model on its training split, every choice made on validation.

:func:`fit_item_head` (run by ``recfuse train`` when ``item_head.method`` is not ``"none"``):

1. the training interactions as a 0/1 user x item matrix over the model's catalog;
2. the weights (EASE^R per ``item_head.ease_lambdas``, or item-kNN per ``item_head.knn_neighbors``),
   each cut to ``item_head.keep`` per history item, scored alone on the validation users; the best
   is kept;
3. ``beta``: the model's scores (``q . v`` times the popularity factor, as served) plus ``beta`` times
   the head's, for ``beta`` = 0 and ``c * m`` for each multiplier ``m`` in ``item_head.betas``, where
   ``c`` is the median over validation users of the ratio of the model scores' standard deviation to
   the head scores' (so the grid fits the model's score scale). The best ``beta`` wins; 0 when the
   head does not help.

Validation users are those of ``split.val`` with a held-out catalog item (a seeded sample of
``item_head.max_val_users``); each query reads the user's training items (most recent first, cut to
``data.max_history`` as the served query is), and the user's training items are masked.

:func:`refit_item_head` (``train.refit = true``): the head chosen with the selection run, where the
validation rows are unseen, fitted again for the refit model: the same weights setting, decay and
``beta`` multiplier ``m``, with ``W`` fitted on the training + validation rows and ``c`` measured
on the refit model's scores, so ``beta = c * m`` fits its score scale.

:func:`fixed_item_head` (``train.refit_epochs``: a refit with no selection run): every choice comes
from the config (one value per grid), ``W`` is fitted on the training + validation rows and ``c`` is
measured on the model's scores as in the refit.

Example:
    >>> head = fit_item_head(TrainedModel.load("runs/model"), split, cfg.item_head)   # doctest: +SKIP
    >>> head.save(Path("runs/model") / HEAD_DIR)                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfuse.config import EvalConfig, ItemHeadConfig
from recfuse.evaluation.baselines import validation_metric
from recfuse.evaluation.fullrank import RankingModel, SplitLike, build_eval_sets
from recfuse.evaluation.metrics import relevant_pairs
from recfuse.item_weights import cut_rows, ease_weights, neighbour_matrix, sequential_weights, top_neighbours
from recfuse.itemitem import HEAD_DIR, ItemHead, history_rows, profile_matrix
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

__all__ = ["describe", "fit_and_save", "fit_item_head", "fixed_item_head", "refit_item_head"]


class _ValSplit:
    """``split`` with its validation rows as the target and the training rows as the query."""

    def __init__(self, split: SplitLike) -> None:
        self.train, self.val, self.test = split.train, split.val.iloc[:0], split.val
        self.cold_items: frozenset[str] = frozenset()
        self.kind = "random"  # the validation query reads training rows only


def fit_item_head(
    model: RankingModel,
    split: SplitLike,
    cfg: ItemHeadConfig,
    max_history: int,
    seed: int = 0,
    block_size: int = 1024,
) -> ItemHead:
    """The item-item head of ``model`` (see the module doc); ``cfg.method`` must not be ``"none"``.

    Args:
        model: the trained model (catalog, ranking vectors, query tower).
        split: the split it was trained on (``train`` fits the weights, ``val`` chooses).
        cfg: the ``[item_head]`` settings.
        max_history: history items a query reads (``data.max_history``): the head reads as many.
        seed: the validation sample's seed.
        block_size: users scored per block.

    Raises:
        ValueError: ``cfg.method`` is ``"none"``, there are no validation users with a catalog item,
            or EASE is asked for more items than ``cfg.ease_max_items``.
    """
    if not cfg.enabled:
        raise ValueError("`item_head.method` is 'none': there is no head to fit")
    t0 = time.perf_counter()
    val = _val_users(model, split, cfg, max_history, seed)
    users, exclude, index = val.users, val.exclude, val.index
    rel_users, rel_items = val.relevant
    n = len(index)
    profiles_by_decay = {d: profile_matrix(val.rows, n, d) for d in cfg.history_decays}
    v = len(users)

    def metric(score_rows: Any) -> float:
        return validation_metric(score_rows, v, rel_users, rel_items, exclude, cfg.select_metric, block_size)

    selection: list[dict[str, Any]] = []
    best: tuple[float, sp.csr_matrix, dict[str, float | int], float] | None = None
    t = time.perf_counter()
    for w, params in _weight_grid(cfg, split, index, block_size):
        for decay, profiles in profiles_by_decay.items():
            score = metric(lambda s, e, w=w, p=profiles: np.asarray((p[s:e] @ w).toarray(), np.float32))
            selection.append({"stage": "weights", **params, "decay": decay, cfg.select_metric: score,
                              "seconds": _since(t)})  # fmt: skip
            logger.info("item head %s %s decay %g: %s %.5f alone", cfg.method, params, decay, cfg.select_metric, score)
            if best is None or score > best[0]:
                best = (score, w, params, decay)
            t = time.perf_counter()
    assert best is not None
    _, weights, params, decay = best
    profiles = profiles_by_decay[decay]

    vectors, queries = _model_scores(model, val, block_size)
    scale = _score_scale(queries, vectors, profiles, weights, block_size)
    betas = [0.0] + ([scale * m for m in cfg.betas] if scale > 0 else [])
    best_beta, best_score = 0.0, -1.0
    for beta in betas:
        t = time.perf_counter()

        def blended(s: int, e: int, beta: float = beta) -> FloatArray:
            out = queries[s:e] @ vectors.T
            if beta:
                out += np.float32(beta) * (profiles[s:e] @ weights).toarray().astype(np.float32)
            return out

        score = metric(blended)
        selection.append({"stage": "beta", "beta": beta, "multiplier": beta / scale if scale else 0.0,
                          cfg.select_metric: score, "seconds": _since(t)})  # fmt: skip
        logger.info("item head beta %.4g: %s %.5f", beta, cfg.select_metric, score)
        if score > best_score:
            best_beta, best_score = beta, score
    for edge, word in ((max(cfg.betas), "largest"), (min(cfg.betas), "smallest")):
        if scale > 0 and best_beta == scale * edge and len(cfg.betas) > 1:
            logger.warning("item head: the best beta is the %s multiplier %s; widen `item_head.betas`", word, edge)
    logger.info("item head fitted in %.1f s: %s %s, beta %.4g", time.perf_counter() - t0, cfg.method, params, best_beta)
    return ItemHead(weights, float(best_beta), cfg.method, params, selection, decay)


@dataclass(frozen=True)
class _ValUsers:
    """The validation users the head's choices are measured on (see the module doc)."""

    index: dict[str, int]  # item id -> catalog row
    users: list[str]
    histories: list[Any]  # training items, most recent first
    exclude: list[Any]  # catalog rows masked per user (their training items)
    relevant: tuple[Any, Any]  # (user positions, catalog rows) of the held-out items
    rows: list[Any]  # history catalog rows, as the served query reads them


def _val_users(model: RankingModel, split: SplitLike, cfg: ItemHeadConfig, max_history: int, seed: int) -> _ValUsers:
    item_ids = [str(i) for i in model.item_ids]
    index = {item: i for i, item in enumerate(item_ids)}
    sets = build_eval_sets(_ValSplit(split), item_ids, EvalConfig(mask="train", history="train"))
    keep_users = np.arange(len(sets.users))
    if len(keep_users) > cfg.max_val_users:
        keep_users = np.sort(np.random.default_rng(seed).choice(len(keep_users), cfg.max_val_users, replace=False))
    if not len(keep_users):
        raise ValueError("the validation split has no user with a catalog item: the head's choices need one")
    histories = [sets.histories[i] for i in keep_users]
    users, exclude = [sets.users[i] for i in keep_users], [sets.exclude[i] for i in keep_users]
    relevant = relevant_pairs([sets.test[i] for i in keep_users])
    return _ValUsers(index, users, histories, exclude, relevant, history_rows(histories, index, max_history))


def _model_scores(model: RankingModel, val: _ValUsers, block_size: int) -> tuple[FloatArray, FloatArray]:
    """The model's ranking vectors and the validation users' query vectors."""
    vectors = np.asarray(model.ranking_embeddings, dtype=np.float32)
    users, histories = val.users, val.histories
    parts = [model.query_embeddings(users[s : s + block_size], histories[s : s + block_size])
             for s in range(0, len(users), block_size)]  # fmt: skip
    return vectors, np.concatenate(parts).astype(np.float32)


def refit_item_head(
    model: RankingModel,
    split: SplitLike,
    chosen: ItemHead,
    cfg: ItemHeadConfig,
    max_history: int,
    seed: int = 0,
    block_size: int = 1024,
) -> ItemHead:
    """``chosen`` (fitted by :func:`fit_item_head` on the selection run) fitted again for the refit ``model``.

    The weights setting, the history decay and the ``beta`` multiplier stay as chosen; ``W`` is
    fitted on ``split.train`` + ``split.val`` (what the refit model trained on) and the score-scale
    ratio ``c`` is measured with ``model`` on the same validation users as the choice, so
    ``beta = c * multiplier``. A head chosen at ``beta`` 0 stays at 0.

    Args:
        model: the refit model.
        split: the split before the refit (``train`` and ``val`` separate, as the choice saw them).
        chosen: the head :func:`fit_item_head` chose on the selection run.
        cfg: the ``[item_head]`` settings (``keep``, ``max_val_users``, ``ease_max_items``).
        max_history, seed, block_size: as :func:`fit_item_head` (the same ``seed`` picks the same users).

    Raises:
        ValueError: ``chosen`` records no chosen ``beta`` in its selection table, or its params do
            not name its method's setting.
    """
    multiplier = 0.0
    if chosen.beta > 0:
        rows = [r for r in chosen.selection if r.get("stage") == "beta" and r.get("beta") == chosen.beta]
        if not rows:
            raise ValueError(f"the chosen head's selection table has no row for its beta {chosen.beta}: re-fit it")
        multiplier = float(rows[0]["multiplier"])
    setting = {"ease": "lambda", "itemknn": "neighbors", "sequential": "window"}[chosen.method]
    if setting not in chosen.params:
        raise ValueError(f"the chosen {chosen.method} head's params {chosen.params} do not name its {setting!r}")
    keep = int(chosen.params.get("keep", cfg.keep))
    only = _only(cfg, chosen.method, float(chosen.params[setting]), keep, chosen.decay)
    return _fit_fixed(model, split, only, multiplier, "refit", chosen.selection, max_history, seed, block_size)


def fixed_item_head(
    model: RankingModel, split: SplitLike, cfg: ItemHeadConfig, max_history: int, seed: int = 0, block_size: int = 1024
) -> ItemHead:
    """The head of a ``train.refit_epochs`` model, every choice given by ``cfg``: nothing is chosen.

    Each grid :meth:`ItemHeadConfig.choice_grids` names holds one value (the config checks it): the
    weights setting, the decay and the ``beta`` multiplier ``m``. ``W`` is fitted on ``split.train`` +
    ``split.val`` (what the refit trained on) and ``beta = c * m`` with ``c`` measured on ``model``'s
    scores of the validation users, or of the training users where ``split.val`` is empty (``c``
    reads histories, not held-out items).

    Raises:
        ValueError: a grid holds more than one value, or ``cfg.method`` is ``"none"``.
    """
    if not cfg.enabled:
        raise ValueError("`item_head.method` is 'none': there is no head to fit")
    grids = cfg.choice_grids()
    several = {name: values for name, values in grids.items() if len(values) != 1}
    if several:
        raise ValueError(f"a head fitted without validation takes one value per grid; {several} hold several")
    only = _only(cfg, cfg.method, next(iter(grids.values()))[0], cfg.keep, cfg.history_decays[0])
    return _fit_fixed(model, split, only, cfg.betas[0], "fixed", [], max_history, seed, block_size)


def _only(cfg: ItemHeadConfig, method: str, value: float, keep: int, decay: float) -> ItemHeadConfig:
    """``cfg`` narrowed to one weights setting (of ``method``'s grid) and one decay."""
    cfg = dataclasses.replace(cfg, method=method, keep=keep, history_decays=(float(decay),))
    if method == "ease":
        return dataclasses.replace(cfg, ease_lambdas=(float(value),))
    if method == "itemknn":
        return dataclasses.replace(cfg, knn_neighbors=(int(value),))
    return dataclasses.replace(cfg, seq_windows=(int(value),))


def _fit_fixed(
    model: RankingModel,
    split: SplitLike,
    only: ItemHeadConfig,
    multiplier: float,
    stage: str,
    selection: list[dict[str, Any]],
    max_history: int,
    seed: int,
    block_size: int,
) -> ItemHead:
    """The head of ``only``'s single setting, ``W`` on train + val and ``beta = c * multiplier``."""
    t0 = time.perf_counter()
    decay = only.history_decays[0]
    scale_split: SplitLike = split
    if not len(split.val):  # a retrain on every row: the training users' histories give c
        scale_split = _ValSplit(split)
        scale_split.val = split.train
    val = _val_users(model, scale_split, only, max_history, seed)
    merged = _ValSplit(split)  # only its train is read below: the training + validation rows
    merged.train = pd.concat([split.train, split.val], ignore_index=True)
    weights, params = next(_weight_grid(only, merged, val.index, block_size))
    vectors, queries = _model_scores(model, val, block_size)
    scale = _score_scale(queries, vectors, profile_matrix(val.rows, len(val.index), decay), weights, block_size)
    beta = scale * multiplier if scale > 0 else 0.0
    record = {"stage": stage, "rows": len(merged.train), "scale": scale, "multiplier": multiplier, "beta": beta,
              "seconds": _since(t0)}  # fmt: skip
    logger.info("item head %s on %d rows in %.1f s: beta %.4g", stage, len(merged.train), _since(t0), beta)
    return ItemHead(weights, float(beta), only.method, dict(params), [*selection, record], decay)


def _since(t: float) -> float:
    return round(time.perf_counter() - t, 3)


def _train_matrix(split: SplitLike, index: dict[str, int]) -> sp.csr_matrix:
    """0/1 ``[users, n]`` of the training rows (rows whose item the catalog lacks are left out)."""
    train = split.train
    rows = train["item_id"].astype(str).map(index)
    known = rows.notna().to_numpy()
    users = np.unique(train["user_id"].astype(str).to_numpy()[known], return_inverse=True)[1]
    cols = rows[known].astype(np.int64).to_numpy()
    x = sp.csr_matrix(
        (np.ones(len(cols), np.float32), (users, cols)), shape=(int(users.max(initial=-1)) + 1, len(index))
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def _weight_grid(
    cfg: ItemHeadConfig, split: SplitLike, index: dict[str, int], block_size: int
) -> Iterator[tuple[sp.csr_matrix, dict[str, float | int]]]:
    """The head's weights for each grid value of ``cfg.method`` and the params that name them; what
    the values share (the training matrix, one similarity pass at the largest K, the sorted
    sequences) is built once."""
    keep = cfg.keep
    if cfg.method == "sequential":
        users, items = _sequences(split, index)
        for window in cfg.seq_windows:
            yield sequential_weights(users, items, len(index), int(window), keep), {"window": int(window), "keep": keep}
        return
    x = _train_matrix(split, index)
    if cfg.method == "ease":
        for lam in cfg.ease_lambdas:
            yield (
                ease_weights(x, float(lam), keep, block_size, cfg.ease_max_items),
                {"lambda": float(lam), "keep": keep},
            )
        return
    k_max = min(max(cfg.knn_neighbors), max(len(index) - 1, 1))
    nb_idx, nb_val = top_neighbours(x, k_max, 0.0, block_size)  # smaller K are prefixes of the largest
    for k in cfg.knn_neighbors:
        w = cut_rows(neighbour_matrix(nb_idx[:, :k], nb_val[:, :k]), keep)
        yield w, {"neighbors": int(k), "keep": keep}


def _sequences(split: SplitLike, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The training rows as (user code, catalog row), sorted by user then time (ties in file order)."""
    train = split.train
    rows = train["item_id"].astype(str).map(index)
    known = train.loc[rows.notna().to_numpy()].assign(_row=rows[rows.notna()].astype(np.int64))
    order = known.sort_values(["user_id", "timestamp"], kind="stable") if "timestamp" in known else known
    users = pd.factorize(order["user_id"].astype(str))[0]
    return users, order["_row"].to_numpy(np.int64)


def _score_scale(
    queries: FloatArray, vectors: FloatArray, profiles: sp.csr_matrix, weights: sp.csr_matrix, block_size: int
) -> float:
    """Median over users of std(model scores) / std(head scores); 0 when the head scores nobody."""
    ratios = []
    for s in range(0, len(queries), block_size):
        e = min(s + block_size, len(queries))
        m = (queries[s:e] @ vectors.T).std(axis=1)
        h = np.asarray((profiles[s:e] @ weights).toarray()).std(axis=1)
        ok = h > 0
        ratios.append(m[ok] / h[ok])
    r = np.concatenate(ratios) if ratios else np.zeros(0)
    return float(np.median(r)) if len(r) else 0.0


def fit_and_save(model_dir: str | Path, split: SplitLike, selection_dir: str | Path | None = None) -> ItemHead:
    """Fit the head that ``model_dir``'s config asks for (``[item_head]``) and store it in ``model_dir``.

    With ``selection_dir`` (``train.refit``'s early-stopped run, whose validation rows are unseen) the
    head is chosen there and stored with it, then refitted (:func:`refit_item_head`) for the refit
    model in ``model_dir``. With ``train.refit_epochs`` (no selection run) it is
    :func:`fixed_item_head`.

    Returns:
        the head stored in ``model_dir``.

    Raises:
        ValueError: the config's ``item_head.method`` is ``"none"`` (see :func:`fit_item_head`).
    """
    from recfuse.models.trained import TrainedModel

    chooser = TrainedModel.load(selection_dir if selection_dir is not None else model_dir)
    cfg = chooser.config
    if cfg.train.refit_epochs:  # a refit with no selection run: nothing to choose on
        head = fixed_item_head(chooser, split, cfg.item_head, cfg.data.max_history, seed=cfg.train.seed)
        head.save(Path(model_dir) / HEAD_DIR)
        return head
    head = fit_item_head(chooser, split, cfg.item_head, cfg.data.max_history, seed=cfg.train.seed)
    if selection_dir is not None:
        head.save(Path(selection_dir) / HEAD_DIR)
        model = TrainedModel.load(model_dir)
        head = refit_item_head(model, split, head, cfg.item_head, cfg.data.max_history, seed=cfg.train.seed)
    head.save(Path(model_dir) / HEAD_DIR)
    return head


def describe(head: ItemHead, metric: str) -> str:
    """One line for ``recfuse train``: the chosen weights and beta, and validation with and without."""
    rows = [r for r in head.selection if r.get("stage") == "beta"]
    without = next((r[metric] for r in rows if r["beta"] == 0.0), float("nan"))
    best = max((r[metric] for r in rows), default=float("nan"))
    params = ", ".join([f"{k} {v:g}" for k, v in head.params.items()] + [f"decay {head.decay:g}"])
    if not rows:  # fixed_item_head: nothing was chosen on validation
        return f"item head {head.method} ({params}), beta {head.beta:.4g}: fixed by the config, not chosen"
    verdict = "kept" if head.active else "not kept: it does not help on validation"
    return (f"item head {head.method} ({params}), beta {head.beta:.4g}: valid {metric} {best:.4f} with it, "
            f"{without:.4f} without ({verdict})")  # fmt: skip
