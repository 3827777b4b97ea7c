"""Strong simple baselines for full-ranking evaluation: popularity, ItemKNN and EASE (numpy + scipy).

A learned model is only worth its cost if it beats these (Dacrema et al. 2019, "Are we really
making much progress?"), so each is tuned on the validation split the same way:

- ``popularity``: every user gets the training count of each item (no hyper-parameters).
- ``itemknn``: cosine item-item similarity of the training columns (``shrink`` added to the
  denominator, diagonal zeroed); each target item keeps its ``neighbors`` most similar items and a
  user's score for item ``j`` sums the similarities of ``j``'s neighbours the user has (the
  RecBole / Dacrema "ItemKNN-CF"). Built in row blocks: never a dense ``n x n`` similarity.
- ``ease``: EASE^R (Steck 2019): ``P = (X^T X + lambda I)^-1``, ``B = -P / diag(P)`` column-wise,
  ``diag(B) = 0``, score ``= x B``. float32, inverted in place by LAPACK's Cholesky
  (``spotrf`` + ``spotri``), restricted to items with training interactions (the others' rows and
  columns of ``X^T X`` are zero, so their ``B`` entries are exactly 0).

:func:`fit_baseline` fits every grid value on ``train``, ranks the validation users (their train
items excluded) and keeps the value with the best ``settings.select_metric``; ``selection`` holds
one row per grid value as the evidence.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]], np.float32))
    >>> fitted = fit_baseline("popularity", train, train[:1], [np.array([2])], [np.array([0, 1])])
    >>> fitted.score(train[:1]).tolist()
    [[2.0, 2.0, 2.0]]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recfuse.evaluation.metrics import hit_rate_at_k, hits_from_pairs, ndcg_at_k, recall_at_k, relevant_pairs
from recfuse.item_weights import (
    active_items,
    binary_csr,
    ease_memory_bytes,
    ease_weights_dense,
    neighbour_matrix,
    top_neighbours,
)
from recfuse.ranking import topk_of_scores
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

BASELINES = ("popularity", "itemknn", "ease")
SELECT_METRICS = ("ndcg", "recall", "hit")
Params = dict[str, float | int]


@dataclass(frozen=True)
class BaselineSettings:
    """Hyper-parameter grids and limits; each grid is searched on the validation split.

    Attributes:
        ease_lambdas: EASE L2 weights. Half-decade steps over 10..1000: Steck's optima were 200-1000
            on dense data (ML-20M, Netflix, MSD); sparser implicit data (a few items per user) wants
            less shrinkage. One value costs one ``n x n`` Cholesky inverse (about 27 s at 19,220
            items on 2 cores), so five values fit the benchmark's budget. A best value at the edge
            of the grid is logged as a warning.
        itemknn_neighbors: neighbourhood sizes ``K``. All come from one similarity pass (the
            largest ``K`` is kept, smaller ones are its prefixes), so the grid is nearly free.
        itemknn_shrink: added to the cosine denominator ``|x_i| |x_j| + shrink``; damps
            similarities between rare items (0 = plain cosine).
        ease_max_items: refuse EASE when more items have training interactions: it holds two dense
            ``n x n`` float32 matrices (the one being inverted and the best so far).
        select_metric: ``"ndcg@k"``, ``"recall@k"`` or ``"hit@k"`` on the validation split.
        block_size: users scored (and items of the similarity computed) per block.
    """

    ease_lambdas: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0)
    itemknn_neighbors: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)
    itemknn_shrink: float = 0.0
    ease_max_items: int = 50_000
    select_metric: str = "ndcg@10"
    block_size: int = 1024

    def __post_init__(self) -> None:
        if not self.ease_lambdas or any(not (np.isfinite(v) and v > 0) for v in self.ease_lambdas):
            raise ValueError(f"`ease_lambdas` must be a non-empty tuple of finite values > 0, got {self.ease_lambdas}")
        if not self.itemknn_neighbors or any(int(v) != v or v < 1 for v in self.itemknn_neighbors):
            raise ValueError(
                f"`itemknn_neighbors` must be a non-empty tuple of integers >= 1, got {self.itemknn_neighbors}"
            )
        if not (np.isfinite(self.itemknn_shrink) and self.itemknn_shrink >= 0):
            raise ValueError(f"`itemknn_shrink` must be finite and >= 0, got {self.itemknn_shrink}")
        if self.ease_max_items < 1 or self.block_size < 1:
            raise ValueError(
                f"`ease_max_items` and `block_size` must be >= 1, got {self.ease_max_items} and {self.block_size}"
            )
        metric_k(self.select_metric)


def metric_k(select_metric: str) -> tuple[str, int]:
    """Split ``"ndcg@10"`` into ``("ndcg", 10)``; raises ``ValueError`` naming the allowed forms."""
    name, _, k = select_metric.partition("@")
    if name not in SELECT_METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"`select_metric` must be one of {SELECT_METRICS} '@k' with k >= 1, got {select_metric!r}")
    return name, int(k)


class _Scorer(Protocol):
    def __call__(self, profiles: sp.csr_matrix) -> FloatArray: ...


@dataclass
class FittedBaseline:
    """A baseline fitted on the training split with its hyper-parameters chosen on validation.

    Attributes:
        name: one of :data:`BASELINES`.
        params: the chosen hyper-parameters (``{}``, ``{"neighbors", "shrink"}`` or ``{"lambda"}``).
        selection: one row per grid value: its params, the validation metric and ``seconds`` (fit
            + validation; work shared across the grid, such as ItemKNN's similarity, counts in the first row).
        fit_seconds: wall time of fitting and selection together.
        n_items: catalog size the baseline scores.
    """

    name: str
    params: Params
    selection: list[dict[str, float | int]]
    fit_seconds: float
    n_items: int
    scorer: _Scorer = field(repr=False)

    def score(self, profiles: sp.spmatrix | sp.sparray) -> FloatArray:
        """Scores of every item for each user row.

        Args:
            profiles: ``[b, n_items]`` user rows (their training items; values > 0 count as 1).

        Returns:
            ``[b, n_items]`` float32 scores (a fresh array: ``topk_of_scores`` may mask it in place).
        """
        return self.scorer(binary_csr(profiles, "profiles", self.n_items))


def fit_baseline(
    name: str,
    train: sp.spmatrix | sp.sparray,
    valid_profiles: sp.spmatrix | sp.sparray,
    valid_targets: Sequence[npt.ArrayLike],
    valid_exclude: Sequence[npt.ArrayLike] | None,
    settings: BaselineSettings | None = None,
) -> FittedBaseline:
    """Fit baseline ``name`` on ``train`` and choose its hyper-parameters on the validation users.

    Args:
        name: one of :data:`BASELINES`.
        train: ``[n_users, n_items]`` training interactions (duplicates and counts become 1).
        valid_profiles: ``[v, n_items]`` query rows of the validation users (their train items).
        valid_targets: per validation user, the held-out item indices (each non-empty; len ``v``).
        valid_exclude: per validation user, item indices never ranked (their train items), or None.
        settings: grids and limits (defaults: :class:`BaselineSettings`).

    Returns:
        The fitted baseline at the best grid value (ties: the first in grid order).
    """
    settings = settings or BaselineSettings()
    if name not in BASELINES:
        raise ValueError(f"unknown baseline `name` {name!r}; known: {', '.join(BASELINES)}")
    x = binary_csr(train, "train")
    n_items = x.shape[1]
    profiles = binary_csr(valid_profiles, "valid_profiles", n_items)
    v = profiles.shape[0]
    if len(valid_targets) != v:
        raise ValueError(
            f"`valid_targets` must have one entry per `valid_profiles` row ({v}), got {len(valid_targets)}"
        )
    if valid_exclude is not None and len(valid_exclude) != v:
        raise ValueError(
            f"`valid_exclude` must have one entry per `valid_profiles` row ({v}), got {len(valid_exclude)}"
        )
    rel_users, rel_items = relevant_pairs(valid_targets)
    if v == 0 or np.bincount(rel_users, minlength=v).min() == 0:
        raise ValueError(
            "`valid_targets` must be non-empty for every validation user; drop users without held-out items"
        )
    if rel_items.min() < 0 or rel_items.max() >= n_items:
        raise ValueError(
            f"`valid_targets` item indices must be in [0, {n_items}), got {rel_items.min()}..{rel_items.max()}"
        )

    def evaluate(scorer: _Scorer) -> float:
        return validation_metric(
            lambda s, e: scorer(profiles[s:e]), v, rel_users, rel_items, valid_exclude,
            settings.select_metric, settings.block_size,
        )  # fmt: skip

    start = time.perf_counter()
    grid = {"popularity": _popularity_grid, "itemknn": _itemknn_grid, "ease": _ease_grid}[name](x, settings)
    selection: list[dict[str, float | int]] = []
    best: tuple[float, Params, _Scorer] | None = None
    t = time.perf_counter()
    try:
        candidate = next(grid)
        while True:
            params, scorer = candidate
            value = evaluate(scorer)
            seconds = round(time.perf_counter() - t, 3)
            selection.append({**params, settings.select_metric: value, "seconds": seconds})
            logger.info(
                "%s %s: %s = %.5f (%.1f s fit + validation)", name, params, settings.select_metric, value, seconds
            )
            improved = best is None or value > best[0]
            if improved:
                best = (value, params, scorer)
            t = time.perf_counter()
            candidate = grid.send(improved)  # EASE reuses the buffer of a value that did not win
    except StopIteration:
        pass
    finally:
        grid.close()
    assert best is not None  # the grids are validated non-empty
    _warn_on_edge(name, selection, best[1], settings)
    return FittedBaseline(name, best[1], selection, time.perf_counter() - start, n_items, best[2])


def validation_metric(
    score_rows: Callable[[int, int], FloatArray],
    n_rows: int,
    rel_users: npt.NDArray[np.int64],
    rel_items: npt.NDArray[np.int64],
    exclude: Sequence[npt.ArrayLike] | None,
    select_metric: str,
    block_size: int,
) -> float:
    """Mean ``select_metric`` (e.g. ``"ndcg@10"``) of a full ranking of ``n_rows`` validation users.

    Args:
        score_rows: ``(start, stop) -> [stop - start, n_items]`` fresh float32 scores of those users.
        n_rows: validation users.
        rel_users, rel_items: the held-out ``(user row, item)`` pairs (:func:`relevant_pairs`).
        exclude: per user, item indices never ranked, or None.
        select_metric: ``"ndcg@k"``, ``"recall@k"`` or ``"hit@k"``.
        block_size: users scored per block.
    """
    metric, k = metric_k(select_metric)
    tops = []
    for s in range(0, n_rows, block_size):
        e = min(s + block_size, n_rows)
        block = score_rows(s, e)
        top = topk_of_scores(block, min(k, block.shape[1]), None if exclude is None else exclude[s:e])
        scores = top.scores
        idx = np.where(np.isfinite(scores), top.rows, -1)  # excluded items fill a short list: empty slots
        tops.append(np.take_along_axis(idx, np.lexsort((idx, -scores.astype(np.float64)), axis=-1), axis=1))
    hits, n_rel = hits_from_pairs(np.concatenate(tops), rel_users, rel_items)
    k = hits.shape[1]
    per_user = {"ndcg": lambda: ndcg_at_k(hits, n_rel, k), "recall": lambda: recall_at_k(hits, n_rel, k)}
    return float(per_user.get(metric, lambda: hit_rate_at_k(hits, k))().mean())


def _warn_on_edge(name: str, selection: list[dict[str, float | int]], best: Params, s: BaselineSettings) -> None:
    grid = {"lambda": s.ease_lambdas, "neighbors": s.itemknn_neighbors}
    for key, values in grid.items():
        if key in best and len(values) > 1 and best[key] in (min(values), max(values)):
            logger.warning("%s: best %s = %s is at the edge of the grid %s; widen it", name, key, best[key], values)


def _popularity_grid(x: sp.csr_matrix, settings: BaselineSettings) -> Generator[tuple[Params, _Scorer], bool, None]:
    counts = np.asarray(x.sum(axis=0), dtype=np.float32).reshape(-1)

    def scorer(profiles: sp.csr_matrix) -> FloatArray:
        return np.repeat(counts[None, :], profiles.shape[0], axis=0)

    yield {}, scorer


def _itemknn_grid(x: sp.csr_matrix, settings: BaselineSettings) -> Generator[tuple[Params, _Scorer], bool, None]:
    n = x.shape[1]
    k_max = min(max(settings.itemknn_neighbors), max(n - 1, 1))
    nb_idx, nb_val = top_neighbours(x, k_max, settings.itemknn_shrink, settings.block_size)
    for k in settings.itemknn_neighbors:
        # W[i, j] = sim(i, j) for neighbour i of target j, so profile @ W sums j's neighbours
        w = neighbour_matrix(nb_idx[:, :k], nb_val[:, :k])

        def scorer(profiles: sp.csr_matrix, w: sp.csr_matrix = w) -> FloatArray:
            return np.asarray((profiles @ w).toarray(), dtype=np.float32)

        yield {"neighbors": int(k), "shrink": settings.itemknn_shrink}, scorer


def _human(n_bytes: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} B"


def _ease_grid(x: sp.csr_matrix, settings: BaselineSettings) -> Generator[tuple[Params, _Scorer], bool, None]:
    n = x.shape[1]
    active = active_items(x)  # items with training interactions
    m = len(active)
    if m > settings.ease_max_items:
        raise ValueError(
            f"EASE over {m:,} items (those with training interactions) needs about {_human(ease_memory_bytes(m))}: "
            f"two dense {m:,} x {m:,} float32 matrices (2 * n^2 * 4 bytes); raise "
            f"`BaselineSettings.ease_max_items` (now {settings.ease_max_items:,}) if the machine has the memory, "
            "or drop rare items"
        )
    xa = x[:, active] if m < n else x
    buffers: list[FloatArray | None] = [None, None]
    best_slot = -1
    for lam in settings.ease_lambdas:
        slot = 1 if best_slot == 0 else 0  # never overwrite the best B so far
        buf = buffers[slot]
        if buf is None:
            buf = buffers[slot] = np.empty((m, m), dtype=np.float32)
        ease_weights_dense(xa, float(lam), buf, settings.block_size)
        if (yield {"lambda": float(lam)}, _ease_scorer(buf, active, n)):
            best_slot = slot


def _ease_scorer(b: FloatArray, active: npt.NDArray[np.intp], n: int) -> _Scorer:
    def scorer(profiles: sp.csr_matrix) -> FloatArray:
        if len(active) == n:
            return np.asarray(profiles @ b, dtype=np.float32)
        out = np.zeros((profiles.shape[0], n), dtype=np.float32)
        out[:, active] = profiles[:, active] @ b
        return out

    return scorer
