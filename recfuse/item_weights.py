"""Item-item weights for the item-item head and the evaluation baselines (numpy + scipy).

- :func:`ease_weights`: EASE^R (Steck 2019), ``P = (X^T X + lambda I)^-1``, ``B = -P / diag(P)``,
  ``diag(B) = 0``; float32, inverted in place by LAPACK's Cholesky, restricted to items with
  training interactions, each row cut to its ``keep`` largest positive weights. With content
  vectors it is EASE with side information: ``X^T X`` gains ``alpha`` times the items' content
  cosines, so items with content but no interaction get weights too.
- :func:`knn_weights`: cosine item-kNN ("ItemKNN-CF"): each target keeps its ``neighbors`` most
  similar items. Built in row blocks: never a dense ``n x n`` similarity.
- :func:`sequential_weights`: sequential rules, ``1 / gap`` for each time ``j`` followed ``i``.
- :func:`content_weights`: content neighbours: each item's ``neighbors`` nearest items by cosine of
  their content vectors (e.g. pretrained text vectors). Needs no interaction, so items without
  training interactions have rows and columns too.

Every builder returns a float32 CSR ``W [n, n]`` whose row is a history item and column a scored
item, so ``profile @ W`` scores every item for a user row.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], np.float32))
    >>> [[round(float(v), 3) for v in row] for row in knn_weights(x, neighbors=1).toarray()]
    [[0.0, 0.816, 0.0], [0.816, 0.0, 0.577], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.linalg import lapack

from recfuse.types import FloatArray, Int64Array

__all__ = [
    "active_items",
    "binary_csr",
    "content_weights",
    "cut_rows",
    "ease_memory_bytes",
    "ease_weights",
    "ease_weights_dense",
    "gram_row_blocks",
    "knn_weights",
    "neighbour_matrix",
    "prune_rows",
    "sequential_weights",
    "top_neighbours",
    "unit_rows",
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


def ease_weights_dense(
    xa: sp.csr_matrix, lam: float, out: FloatArray, block: int, side: FloatArray | None = None
) -> None:
    """EASE ``B [m, m]`` into ``out``: Gram (plus ``side side^T`` where ``side [m, d]`` is given),
    Cholesky inverse and column scaling all in place."""
    m = out.shape[0]
    for s, e, g in gram_row_blocks(xa, block):
        out[s:e] = g
        if side is not None:
            out[s:e] += side[s:e] @ side.T
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


def ease_weights(
    x: sp.csr_matrix,
    lam: float,
    keep: int,
    block: int = 1024,
    max_items: int = 50_000,
    content: npt.ArrayLike | None = None,
    content_alpha: float = 0.0,
) -> sp.csr_matrix:
    """EASE^R weights ``W [n, n]`` with each row (a history item) cut to its ``keep`` largest positive
    weights: what the item-item head stores and serves.

    With ``content [n, dim]`` and ``content_alpha`` > 0 the Gram matrix is ``X^T X + alpha U U^T``
    (``U`` the unit-length content rows, so ``alpha`` times the items' content cosines; each content
    dimension acts as a pseudo-user), EASE with side information: items that share content
    are pulled together where co-occurrence is thin, and an item with content but no interaction
    gets weights (an item whose vector is zero or non-finite gets none from content).

    Raises:
        ValueError: more than ``max_items`` items have interactions or content (EASE holds an
            ``m x m`` float32 matrix), the Gram matrix is not positive definite at ``lam``, or
            ``content`` does not have one row per item.
    """
    x = binary_csr(x, "x")
    n = x.shape[1]
    active = active_items(x)
    side = None
    if content is not None and content_alpha > 0:
        unit = unit_rows(content)
        if unit.shape[0] != n:
            raise ValueError(f"`content` must be [{n}, dim] (one row per item), got {unit.shape}")
        active = np.union1d(active, np.flatnonzero(np.abs(unit).sum(axis=1) > 0))
        side = unit[active] * np.float32(np.sqrt(content_alpha))
    m = len(active)
    if m > max_items:
        raise ValueError(
            f"EASE over {m:,} items (those with training interactions or content) needs a dense {m:,} x {m:,} float32 "
            f"matrix ({ease_memory_bytes(m) // 2 / 1e9:.1f} GB); raise `item_head.ease_max_items` (now "
            f"{max_items:,}) if the machine has the memory, or use method 'itemknn'"
        )
    b = np.empty((m, m), dtype=np.float32)
    ease_weights_dense(x[:, active] if m < n else x, float(lam), b, block, side)
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
    return _csr_from_parts(parts, n)


def unit_rows(vectors: npt.ArrayLike) -> FloatArray:
    """``vectors [n, dim]`` as float32 rows of length 1; an all-zero or non-finite row becomes zeros.

    Raises:
        ValueError: ``vectors`` is not 2-D.
    """
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"`vectors` must be [n, dim], got shape {v.shape}")
    ok: npt.NDArray[np.bool_] = np.asarray(np.isfinite(v).all(axis=1))
    norms = np.where(ok, np.linalg.norm(np.where(ok[:, None], v, 0), axis=1), 0).astype(np.float32)
    unit = np.zeros_like(v)
    has = norms > 0
    unit[has] = v[has] / norms[has, None]
    return unit


def content_weights(vectors: npt.ArrayLike, neighbors: int, block: int = 1024) -> sp.csr_matrix:
    """Content-neighbour weights ``W [n, n]``: row ``i`` holds the cosine of item ``i``'s content vector
    (row ``i`` of ``vectors [n, dim]``) to each of its ``neighbors`` most similar items, positive
    similarities only; an all-zero or non-finite vector (an item without content) has no row and is
    nobody's neighbour. Exact: ``n^2 * dim`` multiply-adds in ``block``-row slices, never a dense
    ``n x n`` matrix.

    Raises:
        ValueError: ``vectors`` is not 2-D or ``neighbors`` < 1.
    """
    if int(neighbors) < 1:
        raise ValueError(f"`neighbors` must be >= 1, got {neighbors!r}")
    unit = unit_rows(vectors)
    n = unit.shape[0]
    k = min(int(neighbors), max(n - 1, 1))
    parts = []
    for s in range(0, n, block):
        e = min(s + block, n)
        sim = unit[s:e] @ unit.T
        sim[np.arange(e - s), np.arange(s, e)] = 0.0
        rows, cols, vals = _top_per_row(sim, k)
        parts.append((s + rows, cols, vals))
    return _csr_from_parts(parts, n)


def _csr_from_parts(parts: list[tuple[Int64Array, Int64Array, FloatArray]], n: int) -> sp.csr_matrix:
    """The float32 CSR ``[n, n]`` of row blocks' ``(rows, cols, values)`` triplets."""
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
