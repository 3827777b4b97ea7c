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
transformation for inner-product spaces", RecSys 2014), in unit form: with ``M`` the largest item
norm, item ``x`` becomes ``[x / M, sqrt(1 - |x / M|²)]`` and query ``q`` becomes ``[q / |q|, 0]``,
both of norm 1, so ``|q' - x'|² = 2 - 2 q·x / (M |q|)``: the nearest items in L2 are exactly the
items of largest inner product, and ``q·x = M |q| (1 - dist / 2)`` gives the inner product back.
On the same vectors at nprobe 8 IVF1024,Flat then serves 0.99 (100k) and IVF4096,Flat 0.996 (1M).
A graph (HNSW) does better without it (at 100k items, efSearch 256: 0.968 on inner product, 0.891
augmented), so ``auto`` augments inverted-file indexes that store the vectors (``IVF…,Flat``) only.

:class:`recfuse.index.item_index.ItemIndex` applies it (``mips_norm`` set); ``index.mips`` in the
config says when :func:`recfuse.index.build.build_index` builds one (:func:`wanted`).

Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    >>> xa = augment(x, norm_of(x))
    >>> np.linalg.norm(xa, axis=1).round(6).tolist()
    [1.0, 1.0]
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
    return float(np.sqrt(_sq_norms(vectors).max()))


def wanted(mode: str, metric: str, factory: str, vectors: FloatArray) -> float | None:
    """``M`` (:func:`norm_of`) when an index of ``factory`` over ``vectors`` is built as L2 over
    augmented vectors, else None (one pass over the vectors).

    ``mode`` is ``index.mips``: ``off`` never, ``on`` for every inner-product index that is not
    exact (``Flat``), ``auto`` for inverted-file inner-product indexes that store the vectors
    (``IVF…,Flat``; a PQ code needs ``d + 1`` divisible by its sub-quantizers) whose vectors' norms
    differ by more than :data:`UNEQUAL_NORMS`.
    """
    if not len(vectors) or not wanted_for_norms(mode, metric, factory, 0.0, 1.0):
        return None  # decided without the norms: "off", another metric, Flat, or not IVF,Flat
    sq = _sq_norms(vectors)
    smallest, largest = float(np.sqrt(sq.min())), float(np.sqrt(sq.max()))
    return largest if wanted_for_norms(mode, metric, factory, smallest, largest) else None


def _sq_norms(vectors: FloatArray) -> np.ndarray:
    x = np.asarray(vectors, np.float64)
    return np.einsum("ij,ij->i", x, x)


def wanted_for_norms(mode: str, metric: str, factory: str, smallest: float, largest: float) -> bool:
    """:func:`wanted` from the smallest and largest row norm (what a streamed pass can keep)."""
    if mode == "off" or metric != "ip" or factory.strip() == "Flat":
        return False
    if mode == "on":
        return True
    ivf_flat = factory.strip().startswith("IVF") and "PQ" not in factory and "SQ" not in factory
    return ivf_flat and largest > smallest * (1 + UNEQUAL_NORMS)


def augment(vectors: FloatArray, norm: float) -> FloatArray:
    """Items ``[n, d]`` as ``[n, d + 1]`` unit rows ``[x / M, sqrt(1 - |x / M|²)]`` (rows longer
    than ``M`` get a 0, see :func:`too_long`). Unit rows and unit queries keep L2 distances in
    ``[0, 4]``, so float32 resolves inner-product gaps relative to ``M |q|`` whatever the scale."""
    x = np.asarray(vectors, np.float64) / norm
    extra = np.sqrt(np.maximum(1.0 - (x**2).sum(axis=1), 0.0))
    return np.ascontiguousarray(np.hstack([x, extra[:, None]]).astype(np.float32))


def too_long(vectors: FloatArray, norm: float) -> int:
    """How many rows of ``vectors`` are longer than ``norm`` (their scores come back too low by
    ``|q| (|x|² - M²) / 2M``; a rebuild over all vectors fixes it)."""
    return int((_sq_norms(vectors) > norm * norm * (1 + 1e-6)).sum())


def pad_queries(queries: FloatArray) -> FloatArray:
    """Queries ``[b, d]`` as unit rows ``[q / |q|, 0]`` ``[b, d + 1]`` (a zero query stays zero)."""
    q = np.asarray(queries, np.float32)
    norms = np.sqrt((q.astype(np.float64) ** 2).sum(axis=1))
    out = np.zeros((q.shape[0], q.shape[1] + 1), np.float32)
    out[:, :-1] = q / np.where(norms > 0, norms, 1.0)[:, None]
    return out


def to_scores(distances: np.ndarray, queries: FloatArray, norm: float) -> np.ndarray:
    """Inner products ``q·x = M |q| (1 - dist / 2)`` from the squared L2 ``distances [b, m]`` between
    :func:`augment`-ed items and :func:`pad_queries`-ed ``queries [b, d]``."""
    q = np.asarray(queries, np.float64)
    scale = norm * np.sqrt((q**2).sum(axis=1))[:, None]
    with np.errstate(over="ignore"):  # faiss's empty slots (distance FLT_MAX) become -inf
        return (scale * (1.0 - np.asarray(distances, np.float64) / 2.0)).astype(np.float32)
