"""Fit the item-item head of a trained model on its training split, every choice made on validation.

:func:`fit_item_head` (run by ``recfuse train`` when ``item_head.method`` is not ``"none"``):

1. the training interactions as a 0/1 user x item matrix over the model's catalog;
2. the weights (EASE^R per ``item_head.ease_lambdas`` and ``ease_content_alphas``, or item-kNN per
   ``item_head.knn_neighbors``), each cut to ``item_head.keep`` per history item, scored alone on
   the validation users; the best is kept;
3. ``beta``: the model's scores (``q . v`` times the popularity factor, as served) plus ``beta`` times
   the head's, for ``beta`` = 0 and ``c * m`` for each multiplier ``m`` in ``item_head.betas``, where
   ``c`` is the median over validation users of the ratio of the model scores' standard deviation to
   the head scores' (so the grid fits the model's score scale); the best wins (0: no head).
4. with ``item_head.content_modality`` set, the content term: each item's ``content_neighbors``
   nearest items by cosine of the modality's vectors (:func:`recfuse.item_weights.content_weights`),
   its weight ``content_beta = c' * m'`` chosen the same way (``m'`` in ``item_head.content_betas``, 0
   always tried) with ``beta`` fixed; the head stores ``W + (content_beta / beta) C``, one matrix the
   server reads as before (``C`` alone, as ``beta``, where ``beta`` is 0: ``params["content_only"]``).

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

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfuse.config import EvalConfig, ItemHeadConfig
from recfuse.evaluation.baselines import validation_metric
from recfuse.evaluation.fullrank import RankingModel, SplitLike, build_eval_sets
from recfuse.evaluation.head_terms import (
    check_content,
    choose_content,
    content_vectors,
    fold_content,
    narrow,
    score_scale,
    weight_grid,
)
from recfuse.evaluation.metrics import relevant_pairs
from recfuse.item_weights import content_weights
from recfuse.itemitem import HEAD_DIR, ItemHead, history_rows, profile_matrix
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

__all__ = ["content_vectors", "describe", "fit_and_save", "fit_item_head", "fixed_item_head", "refit_item_head"]


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
    content: FloatArray | None = None,
) -> ItemHead:
    """The item-item head of ``model`` (see the module doc); ``cfg.method`` must not be ``"none"``.

    Args:
        model: the trained model (catalog, ranking vectors, query tower).
        split: the split it was trained on (``train`` fits the weights, ``val`` chooses).
        cfg: the ``[item_head]`` settings.
        max_history: history items a query reads (``data.max_history``): the head reads as many.
        seed: the validation sample's seed.
        block_size: users scored per block.
        content: ``[n, dim]`` content vectors in ``model``'s catalog order (:func:`content_vectors`),
            needed when ``cfg.content_modality`` is set.

    Raises:
        ValueError: ``cfg.method`` is ``"none"``, there are no validation users with a catalog item,
            EASE is asked for more items than ``cfg.ease_max_items``, or the content term's vectors
            are missing or do not fit the catalog.
    """
    if not cfg.enabled:
        raise ValueError("`item_head.method` is 'none': there is no head to fit")
    check_content(cfg, content, len(model.item_ids))
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
    for w, params in weight_grid(cfg, split, index, block_size, content):
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
    scale = score_scale(queries, vectors, profiles, weights, block_size)
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
    if cfg.content_modality:
        assert content is not None
        weights, best_beta, params = choose_content(
            cfg, content, queries, vectors, profiles, weights, best_beta, params, metric, selection, block_size
        )
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
    content: FloatArray | None = None,
) -> ItemHead:
    """``chosen`` (fitted by :func:`fit_item_head` on the selection run) fitted again for the refit ``model``.

    The weights setting, the history decay and the ``beta`` multiplier stay as chosen; ``W`` is
    fitted on ``split.train`` + ``split.val`` (what the refit model trained on) and the score-scale
    ratio ``c`` is measured with ``model`` on the same validation users as the choice, so
    ``beta = c * multiplier``. A head chosen at ``beta`` 0 stays at 0. A content term keeps its
    chosen multiplier the same way (its weights need no interaction: they are rebuilt as they were),
    and EASE its chosen content ``alpha``.

    Args:
        model: the refit model.
        split: the split before the refit (``train`` and ``val`` separate, as the choice saw them).
        chosen: the head :func:`fit_item_head` chose on the selection run.
        cfg: the ``[item_head]`` settings (``keep``, ``max_val_users``, ``ease_max_items``).
        max_history, seed, block_size, content: as :func:`fit_item_head` (the same ``seed`` picks the
            same users).

    Raises:
        ValueError: ``chosen`` records no chosen ``beta`` in its selection table, or its params do
            not name its method's setting.
    """
    check_content(cfg, content, len(model.item_ids))
    multiplier = 0.0
    if chosen.beta > 0 and not chosen.params.get("content_only"):
        rows = [r for r in chosen.selection if r.get("stage") == "beta" and r.get("beta") == chosen.beta]
        if not rows:
            raise ValueError(f"the chosen head's selection table has no row for its beta {chosen.beta}: re-fit it")
        multiplier = float(rows[0]["multiplier"])
    setting = {"ease": "lambda", "itemknn": "neighbors", "sequential": "window"}[chosen.method]
    if setting not in chosen.params:
        raise ValueError(f"the chosen {chosen.method} head's params {chosen.params} do not name its {setting!r}")
    keep = int(chosen.params.get("keep", cfg.keep))
    c_multiplier = float(chosen.params.get("content_multiplier", 0.0)) if cfg.content_modality else 0.0
    alpha = float(chosen.params.get("content_alpha", 0.0)) if cfg.content_modality else 0.0
    only = narrow(cfg, chosen.method, float(chosen.params[setting]), keep, chosen.decay, alpha)
    return _fit_fixed(model, split, only, multiplier, "refit", chosen.selection, max_history, seed, block_size,
                      content, c_multiplier)  # fmt: skip


def fixed_item_head(
    model: RankingModel,
    split: SplitLike,
    cfg: ItemHeadConfig,
    max_history: int,
    seed: int = 0,
    block_size: int = 1024,
    content: FloatArray | None = None,
) -> ItemHead:
    """The head of a ``train.refit_epochs`` model, every choice given by ``cfg``: nothing is chosen.

    Each grid :meth:`ItemHeadConfig.choice_grids` names holds one value (the config checks it): the
    weights setting, the decay and the ``beta`` multiplier ``m``. ``W`` is fitted on ``split.train`` +
    ``split.val`` (what the refit trained on) and ``beta = c * m`` with ``c`` measured on ``model``'s
    scores of the validation users, or of the training users where ``split.val`` is empty (``c``
    reads histories, not held-out items). A content term (``cfg.content_modality``, ``content`` as in
    :func:`fit_item_head`) takes ``content_betas``' one multiplier the same way, and EASE
    ``ease_content_alphas``' one value.

    Raises:
        ValueError: a grid holds more than one value, ``cfg.method`` is ``"none"``, or the content
            vectors are missing.
    """
    if not cfg.enabled:
        raise ValueError("`item_head.method` is 'none': there is no head to fit")
    grids = cfg.choice_grids()
    several = {name: values for name, values in grids.items() if len(values) != 1}
    if several:
        raise ValueError(f"a head fitted without validation takes one value per grid; {several} hold several")
    check_content(cfg, content, len(model.item_ids))
    alpha = cfg.ease_content_alphas[0] if cfg.method == "ease" else 0.0
    only = narrow(cfg, cfg.method, next(iter(grids.values()))[0], cfg.keep, cfg.history_decays[0], alpha)
    c_multiplier = cfg.content_betas[0] if cfg.content_modality else 0.0
    return _fit_fixed(model, split, only, cfg.betas[0], "fixed", [], max_history, seed, block_size,
                      content, c_multiplier)  # fmt: skip


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
    content: FloatArray | None = None,
    c_multiplier: float = 0.0,
) -> ItemHead:
    """The head of ``only``'s single setting, ``W`` on train + val and ``beta = c * multiplier``; with
    ``c_multiplier`` > 0 the content term of ``content``, ``content_beta = c' * c_multiplier``, folded in."""
    t0 = time.perf_counter()
    decay = only.history_decays[0]
    scale_split: SplitLike = split
    if not len(split.val):  # a retrain on every row: the training users' histories give c
        scale_split = _ValSplit(split)
        scale_split.val = split.train
    val = _val_users(model, scale_split, only, max_history, seed)
    merged = _ValSplit(split)  # only its train is read below: the training + validation rows
    merged.train = pd.concat([split.train, split.val], ignore_index=True)
    weights, params = next(weight_grid(only, merged, val.index, block_size, content))
    vectors, queries = _model_scores(model, val, block_size)
    scale = score_scale(queries, vectors, profile_matrix(val.rows, len(val.index), decay), weights, block_size)
    beta = scale * multiplier if scale > 0 else 0.0
    record = {"stage": stage, "rows": len(merged.train), "scale": scale, "multiplier": multiplier, "beta": beta}
    params = dict(params)
    if content is not None:  # a content term, off (multiplier 0) or on
        c_weights, c_scale, c_beta = sp.csr_matrix(weights.shape, dtype=np.float32), 0.0, 0.0
        if c_multiplier > 0:
            profiles = profile_matrix(val.rows, len(val.index), decay)
            c_weights = content_weights(content, only.content_neighbors, block_size)
            c_scale = score_scale(queries, vectors, profiles, c_weights, block_size)
            c_beta = c_scale * c_multiplier if c_scale > 0 else 0.0
        k = only.content_neighbors
        weights, beta, params = fold_content(weights, beta, c_weights, c_beta, k, c_multiplier, params)
        record.update({"content_scale": c_scale, "content_multiplier": c_multiplier, "content_beta": c_beta})
    record["seconds"] = _since(t0)
    logger.info("item head %s on %d rows in %.1f s: beta %.4g", stage, len(merged.train), _since(t0), beta)
    return ItemHead(weights, float(beta), only.method, params, [*selection, record], decay)


def _since(t: float) -> float:
    return round(time.perf_counter() - t, 3)


def fit_and_save(
    model_dir: str | Path, split: SplitLike, selection_dir: str | Path | None = None, items: pd.DataFrame | None = None
) -> ItemHead:
    """Fit the head that ``model_dir``'s config asks for (``[item_head]``) and store it in ``model_dir``.

    With ``selection_dir`` (``train.refit``'s early-stopped run, whose validation rows are unseen) the
    head is chosen there and stored with it, then refitted (:func:`refit_item_head`) for the refit
    model in ``model_dir``. With ``train.refit_epochs`` (no selection run) it is
    :func:`fixed_item_head`. ``items`` (the catalog table the model trained on) gives the content
    term's vectors when ``item_head.content_modality`` is set.

    Returns:
        the head stored in ``model_dir``.

    Raises:
        ValueError: the config's ``item_head.method`` is ``"none"`` (see :func:`fit_item_head`), or
            it names a content modality and ``items`` is None.
    """
    from recfuse.models.trained import TrainedModel

    chooser = TrainedModel.load(selection_dir if selection_dir is not None else model_dir)
    cfg = chooser.config
    content = None
    name = cfg.item_head.content_modality
    if name:
        if items is None:
            raise ValueError(f"`item_head.content_modality` = {name!r} needs the catalog table (`items`)")
        modality = next(m for m in cfg.modalities if m.name == name)
        content = content_vectors(items, modality, chooser.item_ids)
    if cfg.train.refit_epochs:  # a refit with no selection run: nothing to choose on
        head = fixed_item_head(chooser, split, cfg.item_head, cfg.data.max_history, seed=cfg.train.seed,
                               content=content)  # fmt: skip
        head.save(Path(model_dir) / HEAD_DIR)
        return head
    head = fit_item_head(chooser, split, cfg.item_head, cfg.data.max_history, seed=cfg.train.seed, content=content)
    if selection_dir is not None:
        head.save(Path(selection_dir) / HEAD_DIR)
        model = TrainedModel.load(model_dir)
        head = refit_item_head(model, split, head, cfg.item_head, cfg.data.max_history, seed=cfg.train.seed,
                               content=content)  # fmt: skip
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
