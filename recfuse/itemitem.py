"""Item-item weights (EASE^R, cosine item-kNN) and the item-item head that blends them into a ranking.

The two-tower model scores an item by ``q . v`` (times the popularity factor). On random per-user
splits, where a user's whole profile carries the signal rather than its order, whole-profile models
such as EASE rank better than any two-tower recipe tried (bench/README.md, "Real-data quality"). The
item-item head adds that signal to the model's score:

    score(u, j) = q_u . v_j * factor_j + beta * sum_{i in history(u)} W[i, j]

``W`` is sparse: row ``i`` (a history item) keeps its ``keep`` largest weights. ``beta`` is chosen on
the validation split by :func:`recfuse.evaluation.item_head.fit_item_head` (0 when the head does not
help, so the head never makes a model worse on validation). Items with no training interaction
have no row and no column: the head adds nothing to them, which also means it does not lift cold
items in a mixed ranking (their content score alone must do that).

This module is numpy + scipy only (no TensorFlow): training, evaluation and the serving
``Recommender`` share it. The weight builders here are also the evaluation baselines' (EASE,
item-kNN in :mod:`recfuse.evaluation.baselines`): one implementation.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], np.float32))
    >>> head = ItemHead(knn_weights(x, neighbors=2), beta=1.0, method="itemknn", params={"neighbors": 2})
    >>> cols, vals = head.row_scores(np.array([0]))
    >>> cols.tolist(), [round(v, 3) for v in vals.tolist()]
    ([1], [0.816])
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.linalg import lapack

from recfuse.errors import ArtifactError
from recfuse.fsio import atomic_write_json, fsync_dir, fsync_tree
from recfuse.types import FloatArray, Int64Array

HEAD_DIR = "item_head"
HEAD_FORMAT = "recfuse.item_head/1"
METHODS = ("ease", "itemknn", "sequential")
_ARRAYS = ("indptr", "indices", "data")

__all__ = [
    "HEAD_DIR",
    "METHODS",
    "ItemHead",
    "active_items",
    "binary_csr",
    "cut_rows",
    "ease_memory_bytes",
    "ease_weights",
    "ease_weights_dense",
    "gram_row_blocks",
    "history_weights",
    "knn_weights",
    "load_item_head",
    "neighbour_matrix",
    "profile_matrix",
    "prune_rows",
    "sequential_weights",
    "top_neighbours",
]


def binary_csr(matrix: Any, arg: str, n_items: int | None = None) -> sp.csr_matrix:
    """``matrix`` as a float32 CSR of 0/1 (duplicates summed, values > 0 become 1); validated."""
    if not sp.issparse(matrix):
        raise TypeError(f"`{arg}` must be a scipy.sparse matrix [rows, n_items], got {type(matrix).__name__}")
    if matrix.ndim != 2 or (n_items is not None and matrix.shape[1] != n_items):
        raise ValueError(f"`{arg}` must be [rows, {n_items or 'n_items'}] (train's item count), got {matrix.shape}")
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    m.sum_duplicates()
    if m.nnz and (not np.isfinite(m.data).all() or m.data.min() < 0):
        raise ValueError(f"`{arg}` must hold finite interaction values >= 0, got min {float(m.data.min())!r}")
    m.data = (m.data > 0).astype(np.float32)
    m.eliminate_zeros()
    return m


def gram_row_blocks(x: sp.csr_matrix, block: int) -> Iterator[tuple[int, int, FloatArray]]:
    """Dense row blocks ``(start, stop, G[start:stop] [b, n])`` of ``G = X^T X`` (co-occurrence counts)."""
    xt = x.T.tocsr()
    for s in range(0, xt.shape[0], block):
        e = min(s + block, xt.shape[0])
        yield s, e, np.asarray((xt[s:e] @ x).toarray(), dtype=np.float32)


def top_neighbours(x: sp.csr_matrix, k: int, shrink: float, block: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Per item its ``k`` most cosine-similar items ``([n, k] indices, [n, k] similarities)``.

    Sorted by descending similarity, ties by ascending index; missing neighbours (similarity 0)
    have index 0 and value 0.
    """
    n = x.shape[1]
    norms = np.sqrt(np.asarray(x.power(2).sum(axis=0), dtype=np.float32).reshape(-1))
    nb_idx = np.zeros((n, k), dtype=np.int64)
    nb_val = np.zeros((n, k), dtype=np.float32)
    for s, e, sim in gram_row_blocks(x, block):
        denom = norms[s:e, None] * norms[None, :] + np.float32(shrink)
        np.divide(sim, denom, out=sim, where=denom > 0)
        sim[np.arange(e - s), np.arange(s, e)] = 0.0
        rows, cols, vals = _top_per_row(sim, k)
        pos = np.arange(len(rows)) - np.searchsorted(rows, rows)
        nb_idx[s + rows, pos], nb_val[s + rows, pos] = cols, vals
    return nb_idx, nb_val


def _top_per_row(block: FloatArray, k: int) -> tuple[Int64Array, Int64Array, FloatArray]:
    """The ``k`` largest positive entries of each row ``(rows, cols, values)``, by row then descending
    value then ascending column (a tie at the cut is filled by ascending column: well defined)."""
    k = min(k, block.shape[1])
    kth = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]  # k-th largest per row
    greater = block > kth
    equal = block == kth
    need = k - greater.sum(axis=1, keepdims=True)
    keep = (greater | (equal & (np.cumsum(equal, axis=1, dtype=np.int32) <= need))) & (block > 0)
    rows, cols = np.nonzero(keep)
    vals = block[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    return rows[order].astype(np.int64), cols[order].astype(np.int64), vals[order].astype(np.float32)


def knn_weights(x: sp.csr_matrix, neighbors: int, shrink: float = 0.0, block: int = 1024) -> sp.csr_matrix:
    """Item-kNN weights ``W [n, n]``: ``W[i, j]`` = cosine(i, j) when ``i`` is one of target ``j``'s
    ``neighbors`` most similar items (the RecBole / Dacrema "ItemKNN-CF"), so ``profile @ W`` sums each
    target's neighbours that the profile holds."""
    x = binary_csr(x, "x")
    k = min(int(neighbors), max(x.shape[1] - 1, 1))
    return neighbour_matrix(*top_neighbours(x, k, shrink, block))


def neighbour_matrix(idx: npt.NDArray[np.int64], val: FloatArray) -> sp.csr_matrix:
    """``W [n, n]`` from :func:`top_neighbours`' ``[n, k]`` output: ``W[idx[j, r], j] = val[j, r]``."""
    n = idx.shape[0]
    keep = val > 0
    targets = np.broadcast_to(np.arange(n)[:, None], idx.shape)[keep]
    return sp.csr_matrix((val[keep], (idx[keep], targets)), shape=(n, n), dtype=np.float32)


def ease_memory_bytes(n_items: int) -> int:
    """Peak bytes EASE holds for ``n_items`` items with training interactions (two ``n x n`` float32)."""
    return 2 * n_items * n_items * 4


def ease_weights_dense(xa: sp.csr_matrix, lam: float, out: FloatArray, block: int) -> None:
    """EASE ``B [m, m]`` into ``out``: Gram, Cholesky inverse and column scaling all in place."""
    m = out.shape[0]
    for s, e, g in gram_row_blocks(xa, block):
        out[s:e] = g
    out[np.diag_indices(m)] += np.float32(lam)
    # out.T is Fortran-ordered, so LAPACK works on our buffer without a copy; its upper triangle is
    # our lower one.
    c, info = lapack.spotrf(out.T, lower=0, overwrite_a=1, clean=0)
    if info == 0:
        c, info = lapack.spotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(
            f"EASE: X^T X + lambda I is not positive definite in float32 (LAPACK info {info}) at "
            f"lambda {lam}; use larger `ease_lambdas`"
        )
    if not np.shares_memory(c, out):  # scipy would only copy if the buffer layout changed
        out[...] = c.T
    tile = 256  # mirror the lower triangle into the upper one in cache-sized tiles (5x faster than strips)
    for s in range(0, m, tile):
        e = min(s + tile, m)
        diag = out[s:e, s:e]
        diag[...] = np.tril(diag) + np.tril(diag, -1).T
        for r in range(e, m, tile):
            out[s:e, r : r + tile] = out[r : r + tile, s:e].T
    d = np.diagonal(out).copy()
    out *= -1.0 / d[None, :]  # B = -P / diag(P), column j divided by P[j, j]
    out[np.diag_indices(m)] = 0.0


def active_items(x: sp.csr_matrix) -> npt.NDArray[np.intp]:
    """Columns of ``x`` with at least one interaction."""
    return np.flatnonzero(np.diff(x.tocsc().indptr) > 0)


def ease_weights(x: sp.csr_matrix, lam: float, keep: int, block: int = 1024, max_items: int = 50_000) -> sp.csr_matrix:
    """EASE^R weights ``W [n, n]`` with each row (a history item) cut to its ``keep`` largest positive
    weights: what the item-item head stores and serves.

    Raises:
        ValueError: more than ``max_items`` items have interactions (EASE holds an ``m x m`` float32
            matrix), or the Gram matrix is not positive definite at ``lam``.
    """
    x = binary_csr(x, "x")
    n = x.shape[1]
    active = active_items(x)
    m = len(active)
    if m > max_items:
        raise ValueError(
            f"EASE over {m:,} items (those with training interactions) needs a dense {m:,} x {m:,} float32 "
            f"matrix ({ease_memory_bytes(m) // 2 / 1e9:.1f} GB); raise `item_head.ease_max_items` (now "
            f"{max_items:,}) if the machine has the memory, or use method 'itemknn'"
        )
    b = np.empty((m, m), dtype=np.float32)
    ease_weights_dense(x[:, active] if m < n else x, float(lam), b, block)
    return prune_rows(b, keep, active, n, block)


def prune_rows(
    dense: FloatArray, keep: int, index: npt.NDArray[np.intp] | None = None, n: int | None = None, block: int = 1024
) -> sp.csr_matrix:
    """A CSR ``[n, n]`` of each row's ``keep`` largest positive entries of ``dense [m, m]``, whose rows and
    columns are items ``index`` (default: all ``m``)."""
    m = dense.shape[0]
    index = np.arange(m) if index is None else np.asarray(index, dtype=np.int64)
    n = m if n is None else n
    parts = []
    for s in range(0, m, block):
        rows, cols, vals = _top_per_row(dense[s : s + block], keep)
        parts.append((index[s + rows], index[cols], vals))
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    vals = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float32)


def cut_rows(w: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each row of ``w`` cut to its ``keep`` largest entries (ties by ascending column)."""
    w = sp.csr_matrix(w, dtype=np.float32)
    counts = np.diff(w.indptr)
    if counts.max(initial=0) <= keep:
        return w
    rows = np.repeat(np.arange(w.shape[0]), counts)
    order = np.lexsort((w.indices, -w.data, rows))
    rank = np.arange(len(order)) - np.repeat(w.indptr[:-1], counts)
    sel = order[rank < keep]
    return sp.csr_matrix((w.data[sel], (rows[sel], w.indices[sel])), shape=w.shape, dtype=np.float32)


def sequential_weights(users: npt.ArrayLike, items: npt.ArrayLike, n: int, window: int, keep: int) -> sp.csr_matrix:
    """Sequential rules: ``W[i, j]`` = sum over every user's training sequence of ``1 / gap`` for each
    time ``j`` follows ``i`` within ``window`` steps (Ludewig & Jannach's "SR"), each row cut to ``keep``.

    Args:
        users: ``[m]`` user codes of the interactions, sorted by user then time (oldest first).
        items: ``[m]`` the interactions' catalog rows, in the same order.
        n: catalog size.
        window: the largest gap counted (1: only the next item).
        keep: weights kept per row.
    """
    u = np.asarray(users).reshape(-1)
    it = np.asarray(items, dtype=np.int64).reshape(-1)
    if len(u) != len(it):
        raise ValueError(f"`users` and `items` must have equal length, got {len(u)} and {len(it)}")
    if window < 1:
        raise ValueError(f"`window` must be >= 1, got {window}")
    rows, cols, vals = [], [], []
    for gap in range(1, window + 1):
        same = u[gap:] == u[:-gap]
        src, dst = it[:-gap][same], it[gap:][same]
        keep_pair = src != dst
        rows.append(src[keep_pair])
        cols.append(dst[keep_pair])
        vals.append(np.full(int(keep_pair.sum()), 1.0 / gap, np.float32))
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    w = sp.csr_matrix((v, (r, c)), shape=(n, n), dtype=np.float32)
    w.sum_duplicates()
    return cut_rows(w, keep)


def history_weights(history: npt.ArrayLike, n: int, decay: float) -> tuple[Int64Array, FloatArray]:
    """A history's rows (most recent first; ``-1``, out-of-range rows and repeats dropped, the most
    recent occurrence kept) and their weights ``decay ** position``."""
    h = np.asarray(history, dtype=np.int64).reshape(-1)
    h = h[(h >= 0) & (h < n)]
    _, first = np.unique(h, return_index=True)
    h = h[np.sort(first)]
    return h, (np.float32(decay) ** np.arange(len(h), dtype=np.float32)).astype(np.float32)


def profile_matrix(histories: Sequence[npt.ArrayLike], n: int, decay: float) -> sp.csr_matrix:
    """``[b, n]`` weighted rows of :func:`history_weights` for each history."""
    parts = [history_weights(h, n, decay) for h in histories]
    r = np.repeat(np.arange(len(parts), dtype=np.int64), [len(p[0]) for p in parts])
    c = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    v = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
    return sp.csr_matrix((v, (r, c)), shape=(len(parts), n), dtype=np.float32)


@dataclass(frozen=True)
class ItemHead:
    """Sparse item-item weights and the blend weight of the item-item head.

    Attributes:
        weights: ``[n, n]`` float32 CSR; row = history item, column = scored item (catalog rows).
        beta: the head's weight in ``model score + beta * head score`` (chosen on validation).
        method: ``"ease"``, ``"itemknn"`` or ``"sequential"``.
        params: the method's chosen hyper-parameters (``lambda`` / ``neighbors`` / ``window``, ``keep``).
        selection: the validation evidence, one row per value tried (params or beta, the metric).
        decay: a history item's weight is ``decay ** position`` (0 = the most recent item, after
            repeats are dropped): 1 weighs the whole profile alike (EASE's setting), less leans on
            the latest items (what next-item data rewards).
    """

    weights: sp.csr_matrix
    beta: float
    method: str
    params: dict[str, float | int]
    selection: list[dict[str, Any]] = field(default_factory=list)
    decay: float = 1.0

    def __post_init__(self) -> None:
        w = self.weights
        if not sp.isspmatrix_csr(w) or w.ndim != 2 or w.shape[0] != w.shape[1]:
            raise ValueError(f"`weights` must be a square scipy CSR matrix [n, n], got {type(w).__name__} {w.shape}")
        if w.dtype != np.float32 or (w.nnz and not np.isfinite(w.data).all()):
            raise ValueError(f"`weights` must hold finite float32 values, got dtype {w.dtype}")
        if not (np.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"`beta` must be a finite number >= 0, got {self.beta!r}")
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {self.method!r}")
        if not (np.isfinite(self.decay) and 0 < self.decay <= 1):
            raise ValueError(f"`decay` must be in (0, 1], got {self.decay!r}")

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[0])

    @property
    def active(self) -> bool:
        """Whether the head changes a ranking (``beta > 0`` and some weight)."""
        return self.beta > 0 and self.weights.nnz > 0

    def scores(self, profiles: sp.spmatrix | sp.sparray) -> FloatArray:
        """Head scores ``[b, n]`` (unweighted by ``beta``) of weighted history rows ``profiles [b, n]``
        (:meth:`profile_rows`)."""
        return np.asarray((sp.csr_matrix(profiles, dtype=np.float32) @ self.weights).toarray(), np.float32)

    def profile_rows(self, histories: Sequence[npt.ArrayLike]) -> sp.csr_matrix:
        """``[b, n]`` rows of per-query history item rows, most recent first, each weighted
        ``decay ** position`` (:func:`history_weights`)."""
        return profile_matrix(histories, self.n_items, self.decay)

    def row_scores(self, history: npt.ArrayLike) -> tuple[Int64Array, FloatArray]:
        """One query's nonzero head scores ``(columns ascending, scores)`` from its history rows
        (most recent first)."""
        h, wts = history_weights(history, self.n_items, self.decay)
        if not len(h):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        w = self.weights
        idx = np.concatenate([w.indices[w.indptr[i] : w.indptr[i + 1]] for i in h])
        val = np.concatenate([w.data[w.indptr[i] : w.indptr[i + 1]] * f for i, f in zip(h, wts)])
        cols, inv = np.unique(idx, return_inverse=True)
        sums = np.bincount(inv.reshape(-1), weights=val, minlength=len(cols))
        return cols.astype(np.int64), sums.astype(np.float32)

    def record(self) -> dict[str, Any]:
        """What a manifest or report says of the head (no arrays)."""
        return {"format": HEAD_FORMAT, "method": self.method, "params": dict(self.params), "beta": float(self.beta),
                "decay": float(self.decay), "n_items": self.n_items, "nnz": int(self.weights.nnz),
                "selection": list(self.selection)}  # fmt: skip

    def save(self, folder: str | Path) -> Path:
        """Write ``folder`` (``head.json`` + the CSR as three ``.npy``) atomically: a temp folder beside
        it is renamed into place, so a reader finds the old head, the new one or none, never half."""
        dest = Path(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        old = dest.with_name(f".{dest.name}.old")
        for stale in (tmp, old):
            if stale.exists():
                shutil.rmtree(stale)
        tmp.mkdir()
        w = self.weights
        for name, arr in zip(_ARRAYS, (w.indptr.astype(np.int64), w.indices.astype(np.int64), w.data)):
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        atomic_write_json(tmp / "head.json", self.record())
        fsync_tree(tmp)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        fsync_dir(dest.parent)
        if old.exists():
            shutil.rmtree(old)
        return dest


def load_item_head(folder: str | Path, n_items: int | None = None) -> ItemHead:
    """Read a head :meth:`ItemHead.save` wrote; every array is checked before use (no pickles).

    Raises:
        ArtifactError: a file missing or unreadable, shapes or indices inconsistent, or a catalog of
            another size than ``n_items``.
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "head.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
    except (OSError, ValueError) as err:
        raise ArtifactError(f"item head {str(folder)!r} cannot be read ({err}); re-run `recfuse train`") from err
    if meta.get("format") != HEAD_FORMAT:
        raise ArtifactError(f"item head {str(folder)!r} has format {meta.get('format')!r}, expected {HEAD_FORMAT!r}")
    n = int(meta.get("n_items", -1))
    indptr, indices, data = arrays["indptr"], arrays["indices"], arrays["data"]
    problems = []
    if n_items is not None and n != n_items:
        problems.append(f"it covers {n} items but the catalog has {n_items}")
    if indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
        problems.append(f"indptr {indptr.shape} does not describe {n} rows of {len(indices)} entries")
    if len(indices) != len(data) or data.dtype != np.float32 or (len(data) and not np.isfinite(data).all()):
        problems.append("data must be finite float32, one value per index")
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        problems.append(f"column indices outside [0, {n})")
    if problems:
        raise ArtifactError(f"item head {str(folder)!r} is inconsistent: {'; '.join(problems)}; re-run `recfuse train`")
    weights = sp.csr_matrix((data, indices, indptr), shape=(n, n), dtype=np.float32)
    try:
        return ItemHead(weights, float(meta["beta"]), str(meta["method"]), dict(meta.get("params", {})),
                        list(meta.get("selection", [])), float(meta.get("decay", 1.0)))  # fmt: skip
    except (KeyError, ValueError, TypeError) as err:
        raise ArtifactError(f"item head {str(folder)!r}: {err}; re-run `recfuse train`") from err
