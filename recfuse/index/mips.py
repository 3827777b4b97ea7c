"""Inner-product search over vectors of unequal norm as L2 search in one more dimension.

faiss's approximate indexes are built for L2 (and for inner product over unit vectors, i.e. cosine).
Over vectors whose norms differ, as a recommender's ranked item vectors do (embeddings times a
popularity prior), an IVF index under inner product probes the lists whose unit centroids point
nearest the query, while the items of largest inner product are the long ones in nearby directions;
trained embeddings share a cone of directions, so the probed lists miss them. Measured on a trained
model's item vectors (scaled up, its own query vectors): at 100k items IVF1024,Flat reached served
recall@10 0.33 at nprobe 8 and 0.96 at nprobe 64; at 1M items IVF4096,Flat needed nprobe 256 for
0.98 (1.8 ms a query on one thread).

The reduction (Bachrach et al., "Speeding up the Xbox recommender system using a euclidean
transformation for inner-product spaces", RecSys 2014): with ``M`` the largest item norm, item
``x`` becomes ``[x, sqrt(M² - |x|²)]`` (every item then has norm ``M``) and query ``q`` becomes
``[q, 0]``, so ``|q' - x'|² = |q|² + M² - 2 q·x``: the nearest items in L2 are exactly the items of
largest inner product, and ``q·x = (|q|² + M² - dist) / 2`` gives the inner product back. On the
same vectors IVF1024,Flat then reaches 0.99 at nprobe 8 (100k) and IVF4096,Flat 0.998 (1M). A graph (HNSW) does better
without it (at 100k items, efSearch 256: 0.968 on inner product, 0.891 augmented), so ``auto``
augments inverted-file indexes only.

:class:`recfuse.index.item_index.ItemIndex` applies it (``mips_norm`` set); ``index.mips`` in the
config says when :func:`recfuse.index.build.build_index` builds one (:func:`wanted`).

Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    >>> xa = augment(x, norm_of(x))
    >>> np.linalg.norm(xa, axis=1).round(6).tolist()
    [2.0, 2.0]
"""

from __future__ import annotations

import logging

import numpy as np

from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

#: ``index.mips = "auto"`` augments when the largest item norm exceeds the smallest by more than this
#: fraction (unit vectors, i.e. cosine, need no augmentation)
UNEQUAL_NORMS = 1e-3


def norm_of(vectors: FloatArray) -> float:
    """``M``: the largest row norm of ``vectors`` (float64, so that ``M² - |x|²`` is never negative for them)."""
    return float(np.sqrt((np.asarray(vectors, np.float64) ** 2).sum(axis=1).max()))


def wanted(mode: str, metric: str, factory: str, vectors: FloatArray) -> bool:
    """Whether an index of ``factory`` over ``vectors`` is built as L2 over augmented vectors.

    ``mode`` is ``index.mips``: ``off`` never, ``on`` for every inner-product index that is not
    exact (``Flat``), ``auto`` for inverted-file (``IVF…``) inner-product indexes whose vectors'
    norms differ by more than :data:`UNEQUAL_NORMS`.
    """
    if not len(vectors):
        return False
    sq = (np.asarray(vectors, np.float64) ** 2).sum(axis=1)
    return wanted_for_norms(mode, metric, factory, float(np.sqrt(sq.min())), float(np.sqrt(sq.max())))


def wanted_for_norms(mode: str, metric: str, factory: str, smallest: float, largest: float) -> bool:
    """:func:`wanted` from the smallest and largest row norm (what a streamed pass can keep)."""
    if mode == "off" or metric != "ip" or factory.strip() == "Flat":
        return False
    if mode == "on":
        return True
    return factory.strip().startswith("IVF") and largest > smallest * (1 + UNEQUAL_NORMS)


def augment(vectors: FloatArray, norm: float) -> FloatArray:
    """Items ``[n, d]`` as ``[n, d + 1]`` rows of norm ``norm`` (rows longer than it get a 0, see
    :func:`too_long`)."""
    x = np.asarray(vectors, np.float32)
    extra = np.sqrt(np.maximum(norm * norm - (x.astype(np.float64) ** 2).sum(axis=1), 0.0))
    return np.ascontiguousarray(np.hstack([x, extra[:, None].astype(np.float32)]))


def too_long(vectors: FloatArray, norm: float) -> int:
    """How many rows of ``vectors`` are longer than ``norm`` (their scores come back too low by
    ``(|x|² - M²) / 2``; a rebuild over all vectors fixes it)."""
    sq = (np.asarray(vectors, np.float64) ** 2).sum(axis=1)
    return int((sq > norm * norm * (1 + 1e-6)).sum())


def pad_queries(queries: FloatArray) -> FloatArray:
    """Queries ``[b, d]`` as ``[b, d + 1]`` with a 0 last column."""
    q = np.asarray(queries, np.float32)
    out = np.zeros((q.shape[0], q.shape[1] + 1), np.float32)
    out[:, :-1] = q
    return out


def to_scores(distances: np.ndarray, queries: FloatArray, norm: float) -> np.ndarray:
    """Inner products from the squared L2 ``distances [b, m]`` of augmented items to padded
    ``queries [b, d]`` (rows of ``+inf``, faiss's empty slots, become ``-inf``)."""
    q = np.asarray(queries, np.float32)
    offset = (q * q).sum(axis=1, dtype=np.float32)[:, None] + np.float32(norm * norm)
    return ((offset - np.asarray(distances, np.float32)) * np.float32(0.5)).astype(np.float32)
