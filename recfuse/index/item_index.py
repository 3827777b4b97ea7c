"""``ItemIndex``: a faiss index over catalog item vectors keyed by int64 catalog ids.

numpy in, numpy out. Searches are batched; per-query exclusions and allow-lists return exactly ``k``
results whenever at least ``k`` candidates pass the filter (see :mod:`recfuse.index.filtered`).
Reads (``search``) may run concurrently from several threads; ``add`` must not overlap them.
An inner-product index over vectors of unequal norm may be held as L2 search over augmented vectors
(:mod:`recfuse.index.mips`; ``mips_norm`` set, saved beside the index file as ``<file>.mips.json``):
callers see the same ``ip`` metric, width and scores.

Example:
    >>> import numpy as np
    >>> from recfuse.config import IndexConfig
    >>> from recfuse.index import build_index
    >>> vecs = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1]], dtype=np.float32)
    >>> index = build_index(vecs, np.array([10, 11, 12, 13]), IndexConfig(recall_queries=0))
    >>> res = index.search(vecs[:1], k=2, exclude=[{10}])
    >>> res.ids.tolist(), res.scores.dtype  # (scores, ids), faiss's order: read them by name
    ([[11, 12]], dtype('float32'))
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recfuse.config import IndexConfig
from recfuse.errors import ArtifactError, InvalidRequestError
from recfuse.index import mips
from recfuse.index.factory import apply_search_params, describe, metric_name, supports_selector
from recfuse.index.filtered import Filter, filtered_search
from recfuse.index.result import SearchResult, SearchResultList
from recfuse.index.validate import check_ids, check_k, check_vectors
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)

IdSets = Sequence[Collection[int] | None]


class ItemIndex:
    """A built (or loaded) IDMap2-wrapped faiss index plus its metadata.

    Attributes:
        factory: faiss factory string of the wrapped index (``Flat``, ``HNSW32``, ``IVF1024,PQ32``).
        metric: ``ip`` (scores: higher is better) or ``l2`` (scores: squared distance, lower is better).
        recall: ANN Recall@10 vs exact search measured at build, or None (not measured / loaded).
        config: the :class:`IndexConfig` in force (efSearch, nprobe, filter mode).
        mips_norm: ``M`` when the faiss index is L2 search over ``[x / M, sqrt(1 - |x / M|²)]``
            standing for inner product over ``x`` (:mod:`recfuse.index.mips`), else None.
    """

    def __init__(
        self,
        index: faiss.Index,
        factory: str,
        cfg: IndexConfig,
        recall: float | None = None,
        mips_norm: float | None = None,
    ) -> None:
        if not isinstance(index, faiss.IndexIDMap2):
            raise ArtifactError(f"expected an IDMap2-wrapped faiss index, got {type(index).__name__}")
        if mips_norm is not None and (metric_name(index.metric_type) != "l2" or not mips_norm > 0):
            raise ArtifactError(f"an augmented inner-product index must be L2 with a norm > 0, got {mips_norm!r}")
        self._index = index
        self.factory = factory
        self.mips_norm = mips_norm
        self.metric = "ip" if mips_norm is not None else metric_name(index.metric_type)
        self.recall = recall
        self.config = cfg
        # how the factory was chosen (recfuse.index.choose's record; None: configured, not measured)
        self.choice: dict[str, Any] | None = None
        # exact top-k of export's served queries over these vectors (recfuse.index.served.Truth), handed
        # from the factory choice to the bundle writer so that it is computed once; None otherwise
        self.truth: Any = None
        self._ids = np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
        self._selector_ok = supports_selector(index)
        self._dim = int(index.d) - (mips_norm is not None)
        self._pad = np.float32(-np.inf if self.metric == "ip" else np.inf)
        if cfg.filter_mode == "selector" and not self._selector_ok:
            logger.warning("index %s does not honour ID selectors; filtering by over-fetch and refill", factory)
        self.filter_mode = "selector" if cfg.filter_mode != "refill" and self._selector_ok else "refill"
        apply_search_params(index, *cfg.search_params())
        if cfg.threads > 0:
            faiss.omp_set_num_threads(cfg.threads)

    @property
    def ntotal(self) -> int:
        """Number of indexed items."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Vector width ``d`` (of the vectors and queries, not of an augmented faiss index)."""
        return self._dim

    @property
    def ids(self) -> Int64Array:
        """Sorted ids of every indexed item ``[ntotal]`` (a copy)."""
        return self._ids.copy()

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying ``faiss.IndexIDMap2`` (for benchmarks and expert use)."""
        return self._index

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, (int, np.integer)):
            return False
        pos = int(np.searchsorted(self._ids, item_id))
        return pos < len(self._ids) and int(self._ids[pos]) == int(item_id)

    def __repr__(self) -> str:
        return f"ItemIndex(factory={self.factory!r}, metric={self.metric!r}, ntotal={self.ntotal}, dim={self.dim})"

    # ----------------------------------------------------------------- search
    def search(
        self, queries: FloatArray, k: int, exclude: IdSets | None = None, allow: IdSets | None = None
    ) -> SearchResult:
        """Top-``k`` items per query, optionally filtered per query.

        Args:
            queries: ``[b, d]`` float query vectors.
            k: results per query (>= 1).
            exclude: per-query collections of ids never to return (seen items, explicit exclusions);
                ``len(exclude) == b``; ``None`` entries or empty sets mean no exclusion.
            allow: per-query collections of the only ids that may be returned (e.g. a category
                filter resolved to ids); ``None`` entries mean no restriction, an empty set allows nothing.

        Returns:
            :class:`~recfuse.index.result.SearchResult` ``(scores [b, k] float32, ids [b, k] int64)``
            (faiss's order; read ``.scores`` / ``.ids``), best first. Rows hold exactly ``k`` results
            when at least ``k`` candidates pass the filter; missing slots have id -1 and score -inf
            (``ip``) / +inf (``l2``).

        Raises:
            InvalidRequestError: bad query shape/dtype/NaN, ``k < 1``, or filter lists of the wrong length.
        """
        if (
            exclude is None
            and allow is None
            and type(queries) is np.ndarray
            and queries.dtype == np.float32
            and queries.ndim == 2
            and queries.shape[1] == self._dim
            and queries.flags.c_contiguous
            and type(k) is int
            and k > 0
            and np.isfinite(queries).all()
        ):  # fast path for the common serving call (keeps the wrapper within a few µs of bare faiss)
            scores, ids = self._faiss_search(queries, k)
            if ids[:, -1].min() < 0:
                scores[ids < 0] = self._pad
            return SearchResult(scores, ids)
        q = check_vectors(queries, "queries", dim=self.dim, error=InvalidRequestError)
        k = check_k(k)
        b = len(q)
        for name, sets in (("exclude", exclude), ("allow", allow)):
            if sets is not None and len(sets) != b:
                raise InvalidRequestError(f"`{name}` must have one entry per query ({b}), got {len(sets)}")
        pad = self._pad
        filters = [self._filter(exclude, allow, i) for i in range(b)] if (exclude or allow) else [None] * b
        plain = [i for i, f in enumerate(filters) if f is None]
        if len(plain) == b:
            scores, ids = self._faiss_search(q, k)
            scores[ids < 0] = pad
            return SearchResult(scores, ids)
        out_ids = np.full((b, k), -1, dtype=np.int64)
        out_scores = np.full((b, k), pad, dtype=np.float32)
        if plain:
            scores, ids = self._faiss_search(q[plain], k)
            scores[ids < 0] = pad
            out_ids[plain], out_scores[plain] = ids, scores
        for i, flt in enumerate(filters):
            if flt is not None:
                row = self._filtered(q[i : i + 1], k, flt)
                out_ids[i, : len(row.ids)] = row.ids
                out_scores[i, : len(row.ids)] = row.scores
        return SearchResult(out_scores, out_ids)

    def search_one(self, query: FloatArray, k: int) -> SearchResultList:
        """The serving fast path: one trusted, unfiltered query; a :class:`~recfuse.index.result.SearchResultList`
        ``(scores, ids)`` of lists, best first.

        ``query`` must be a finite float32 ``[1, d]`` C-contiguous array (the caller's own vector, e.g.
        a query-tower output); nothing is checked, so no caller input may reach it unvalidated.
        Missing slots (fewer than ``k`` found, e.g. an IVF probe) are dropped, not padded.
        """
        scores, ids = self._faiss_search(query, k)
        id_list, score_list = ids[0].tolist(), scores[0].tolist()
        if id_list[-1] < 0:  # faiss puts the -1 slots last
            kept = [(i, s) for i, s in zip(id_list, score_list) if i >= 0]
            id_list, score_list = [i for i, _ in kept], [s for _, s in kept]
        return SearchResultList(score_list, id_list)

    def _faiss_search(self, q: FloatArray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's ``(scores, ids)`` for checked queries ``q [b, d]``, as inner products when augmented
        (empty slots: id -1, score -inf)."""
        if self.mips_norm is None:
            return self._index.search(q, k)  # type: ignore[no-any-return]
        dist, ids = self._index.search(mips.pad_queries(q), k)
        return mips.to_scores(dist, q, self.mips_norm), ids

    def _filtered(self, q: FloatArray, k: int, flt: Filter) -> SearchResult:
        if self.mips_norm is None:
            return filtered_search(self._index, q, k, flt, self.filter_mode, self.metric)
        row = filtered_search(self._index, mips.pad_queries(q), k, flt, self.filter_mode, "l2")
        return SearchResult(mips.to_scores(row.scores[None, :], q, self.mips_norm)[0], row.ids)

    def _present(self, ids: Collection[int]) -> Int64Array:
        """Sorted unique ids from ``ids`` that are in the index."""
        arr = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64, count=len(ids)))
        if not len(arr):
            return arr
        pos = np.searchsorted(self._ids, arr).clip(max=len(self._ids) - 1)
        return arr[self._ids[pos] == arr]

    def _filter(self, exclude: IdSets | None, allow: IdSets | None, i: int) -> Filter | None:
        ex_raw = exclude[i] if exclude is not None else None
        al_raw = allow[i] if allow is not None else None
        if al_raw is None and not ex_raw:
            return None
        ex = self._present(ex_raw) if ex_raw else np.empty(0, np.int64)
        if al_raw is None:
            return Filter(exclude=ex, allow=None) if len(ex) else None
        al = self._present(al_raw)
        if len(ex):
            al = al[~np.isin(al, ex)]
        return Filter(exclude=ex, allow=al)

    # ------------------------------------------------------------ add / io
    def add(self, vectors: FloatArray, ids: Int64Array) -> None:
        """Add new items ``vectors [n, d]`` with new, unique ``ids [n]`` (no retraining).

        Raises:
            SchemaError: wrong shape/dtype/NaN or ids that are duplicated or already indexed.
        """
        x = check_vectors(vectors, dim=self.dim)
        new_ids = check_ids(ids, len(x), existing=self._ids)
        if not len(x):
            return
        if self.mips_norm is not None:
            longer = mips.too_long(x, self.mips_norm)
            if longer:
                logger.warning(
                    "%d of %d added vectors are longer than the index's norm M = %.4g (its longest item at "
                    "build): their scores come back too low by |q|(|x|² - M²)/2M; rebuild the index (export "
                    "again) to rank them exactly", longer, len(x), self.mips_norm,
                )  # fmt: skip
            x = mips.augment(x, self.mips_norm)
        self._index.add_with_ids(x, new_ids)
        self._ids = np.sort(np.concatenate([self._ids, new_ids]))
        logger.info("added %d items to %s index (ntotal %d)", len(x), self.factory, self.ntotal)

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` atomically (temp file + fsync + rename). Returns the path.

        An augmented index (``mips_norm``) also writes ``<path>.mips.json`` (first, so that no reader
        finds the index without it); a plain one removes a stale one.
        """
        path = Path(path)
        side = mips_file(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.mips_norm is not None:
                body = json.dumps({"norm": self.mips_norm, "dim": self._dim}).encode()
                _atomic_write(side, lambda tmp: tmp.write_bytes(body))
            else:
                side.unlink(missing_ok=True)
            _atomic_write(path, lambda tmp: faiss.write_index(self._index, str(tmp)))
        except (OSError, RuntimeError) as err:
            raise ArtifactError(f"could not write index file {str(path)!r}: {err}") from err
        return path

    @classmethod
    def load(cls, path: str | Path, cfg: IndexConfig | None = None) -> ItemIndex:
        """Read an index written by :meth:`save`; applies ``cfg``'s efSearch/nprobe/threads.

        Raises:
            ArtifactError: missing/corrupt file, not an IDMap2 index, or a metric other than ``cfg.metric``.
        """
        cfg = cfg or IndexConfig()
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"index file {str(path)!r} does not exist; build it with build_index(...).save(path)")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1][:200]
            raise ArtifactError(f"index file {str(path)!r} is not a readable faiss index: {first}") from None
        if not isinstance(index, faiss.IndexIDMap2):
            raise ArtifactError(
                f"index file {str(path)!r} holds a {type(index).__name__}, expected IDMap2; rebuild it with build_index"
            )
        norm = _read_mips_norm(mips_file(path), int(index.d))
        metric = "ip" if norm is not None else metric_name(index.metric_type)
        if metric != cfg.metric:
            raise ArtifactError(
                f"index file {str(path)!r} uses metric {metric!r} but `index.metric` is {cfg.metric!r}; "
                "rebuild the index or set index.metric to match (an inner-product index built as L2 over "
                f"augmented vectors needs its {mips_file(path).name!r} beside it)"
            )
        return cls(index, describe(index), cfg, mips_norm=norm)


def mips_file(path: Path) -> Path:
    """Where an augmented index's norm is kept: ``<index file>.mips.json``."""
    return path.with_name(path.name + ".mips.json")


def _read_mips_norm(side: Path, faiss_dim: int) -> float | None:
    if not side.is_file():
        return None
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
        norm, dim = float(raw["norm"]), int(raw["dim"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{str(side)!r} is not an index norm file ({{'norm': float, 'dim': int}}): {err}") from None
    if not (np.isfinite(norm) and norm > 0) or dim + 1 != faiss_dim:
        raise ArtifactError(
            f"{str(side)!r}: norm {norm!r} / dim {dim} do not fit an augmented index of width {faiss_dim}; "
            "rebuild the index"
        )
    return norm


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` then fsync, rename onto ``path`` and fsync the folder; the temp file never stays."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
