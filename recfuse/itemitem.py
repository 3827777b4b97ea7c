"""The item-item head: sparse item-item weights blended into the model's ranking, stored and served.

The two-tower model scores an item by ``q . v`` (times the popularity factor). On random per-user
splits, where a user's whole profile carries the signal rather than its order, whole-profile models
such as EASE rank better than any two-tower recipe tried (bench/README.md, "Real-data quality"). The
item-item head adds that signal to the model's score:

    score(u, j) = q_u . v_j * factor_j + beta * sum_{i in history(u)} W[i, j]

``W`` is sparse: row ``i`` (a history item) keeps its ``keep`` largest weights. ``beta`` is chosen on
the validation split by :func:`recfuse.evaluation.item_head.fit_item_head` (0 when the head does not
help, so the head never makes a model worse on validation). Items with no training interaction
have no row and no column in the interaction weights. An optional content term
(``[item_head] content_modality``: each item's nearest items by cosine of a vector modality) is
folded into ``W`` as ``W + (content_beta / beta) C``; it needs no interaction, so it also scores
items of the catalog that had none. Items added after the fit have empty rows and columns.

This module is numpy + scipy only (no TensorFlow): training, evaluation and the serving
``Recommender`` share it. The weights come from :mod:`recfuse.item_weights` (EASE, item-kNN,
sequential rules), whose builders the evaluation baselines use too: one implementation.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recfuse.errors import ArtifactError
from recfuse.fsio import atomic_write_json, fsync_dir, fsync_tree
from recfuse.item_weights import ease_weights, knn_weights, sequential_weights
from recfuse.types import FloatArray, Int64Array

HEAD_DIR = "item_head"
HEAD_FORMAT = "recfuse.item_head/1"
METHODS = ("ease", "itemknn", "sequential")
_ARRAYS = ("indptr", "indices", "data")

__all__ = [
    "HEAD_DIR",
    "METHODS",
    "ItemHead",
    "ease_weights",
    "history_rows",
    "history_weights",
    "knn_weights",
    "load_item_head",
    "profile_matrix",
    "sequential_weights",
]


def history_rows(histories: Sequence[Sequence[str]], index: dict[str, int], max_history: int) -> list[Int64Array]:
    """Per query, the catalog rows of its history ids as a served query reads them: most recent first,
    unknown ids skipped, repeats dropped (the most recent kept), cut to ``max_history``."""
    out = []
    for h in histories:
        rows = np.fromiter((index[i] for i in h if i in index), dtype=np.int64)
        _, first = np.unique(rows, return_index=True)
        out.append(rows[np.sort(first)][:max_history])
    return out


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
