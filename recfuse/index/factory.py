"""Index type selection: faiss factory strings, the ``auto`` rule, metrics and search-time parameters.

The factory string *is* the index type (faiss's own convention). ``auto`` picks by catalog size:

* ``n <= IndexConfig.exact_max_items``: ``Flat`` (exact search; fine up to ~50k items, ~1-3 ms/query).
* ``n <= 2_000_000``: ``HNSW32`` (graph; ~0.3-1 ms/query at 1M, costs ~500 MB and ~5 min to build at 1M x 64-d).
* above: ``IVF{nlist},PQ{m}`` with ``nlist = 4 * sqrt(n)`` rounded to a power of two (inverted lists of
  ~sqrt(n)/4 vectors) and ``m`` the largest divisor of ``d`` not above ``d / 2`` (``m`` bytes per
  vector with 8-bit codes, e.g. 32 bytes for 64-d: 8x smaller than float32). PQ loses recall; the
  build-time recall check says by how much, and ``IndexConfig.factory`` can name anything else.

Every index is wrapped in ``IDMap2`` so searches return the catalog's int64 ids.

Example:
    >>> auto_factory(10_000, 64, exact_max_items=50_000)
    'Flat'
    >>> auto_factory(4_000_000, 64, exact_max_items=50_000)
    'IVF8192,PQ32'
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import faiss

from recfuse.errors import ConfigError

logger = logging.getLogger(__name__)

_FAISS: Any = faiss  # the bundled stubs miss SearchParametersHNSW
HNSW_MAX_ITEMS = 2_000_000
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def auto_factory(n: int, dim: int, exact_max_items: int) -> str:
    """The ``auto`` factory string for ``n`` vectors of width ``dim`` (rule in the module docstring)."""
    if n <= exact_max_items:
        return "Flat"
    if n <= HNSW_MAX_ITEMS:
        return "HNSW32"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    m = max(div for div in range(1, max(1, dim // 2) + 1) if dim % div == 0)
    return f"IVF{nlist},PQ{m}"


def resolve_factory(factory: str, n: int, dim: int, exact_max_items: int) -> str:
    """The user's factory string (``auto`` resolved), without an ``IDMap`` prefix (we add ``IDMap2``)."""
    factory = factory.strip()
    if factory == "auto":
        return auto_factory(n, dim, exact_max_items)
    if re.match(r"^IDMap2?\b", factory):
        raise ConfigError(
            f"`index.factory` must not start with IDMap (recfuse wraps every index in IDMap2), got {factory!r}; "
            f"drop the prefix, e.g. {factory.split(',', 1)[-1]!r}"
        )
    return factory


def faiss_metric(metric: str) -> int:
    """faiss metric constant for ``ip`` / ``l2``."""
    try:
        return int(METRICS[metric])
    except KeyError:
        raise ConfigError(f"`index.metric` must be one of {sorted(METRICS)}, got {metric!r}") from None


def metric_name(metric_type: int) -> str:
    """``ip`` / ``l2`` for a faiss metric constant."""
    for name, value in METRICS.items():
        if int(value) == int(metric_type):
            return name
    raise ConfigError(f"unsupported faiss metric type {metric_type}; recfuse supports inner product and L2")


def inner_index(index: Any) -> Any:
    """The index under the ``IDMap2`` wrapper, downcast to its concrete class."""
    return faiss.downcast_index(index.index)


def ivf_of(index: Any) -> Any:
    """The IVF index inside ``index`` (through IDMap2/pre-transforms), or None."""
    try:
        return faiss.extract_index_ivf(index.index)
    except RuntimeError:
        return None


def describe(index: faiss.Index) -> str:
    """The factory string of a loaded ``IDMap2`` index (``Flat``, ``HNSW32``, ``IVF1024,PQ32x8``).

    faiss's own reverse of ``index_factory`` (``faiss.contrib.factory_tools.reverse_index_factory``)
    for the inner index; an index it cannot name is described by its class name.
    """
    from faiss.contrib.factory_tools import reverse_index_factory

    inner = inner_index(index)
    try:
        return str(reverse_index_factory(inner))
    except (NotImplementedError, AssertionError, RuntimeError):
        return type(inner).__name__


def supports_selector(index: faiss.Index) -> bool:
    """Whether faiss honours ``SearchParameters.sel`` for this IDMap2-wrapped index type.

    Checked on faiss 1.15: IDMap2 translates external ids for the selector, and Flat, HNSW and every
    IVF variant apply it; PQ/LSH/pre-transform/refine wrappers reject or ignore the parameter.
    """
    inner = inner_index(index)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSW, faiss.IndexIVF))


def apply_search_params(index: faiss.Index, ef_search: int, nprobe: int) -> None:
    """Set efSearch / nprobe on the index (they persist in the object; not stored by write_index)."""
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = int(ef_search)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.nprobe = int(min(nprobe, ivf.nlist))


def search_parameters(
    index: Any, selector: Any, widen: bool = False
) -> Any:
    """SearchParameters carrying ``selector`` and the index's *current* efSearch/nprobe.

    faiss's parameter objects default to efSearch=16 / nprobe=1 and override the index's own values,
    so they are copied here. ``widen`` searches exhaustively (every inverted list, efSearch >= 1024),
    used when a filtered search came back short.
    """
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        params = _FAISS.SearchParametersHNSW()
        params.efSearch = max(inner.hnsw.efSearch, 1024) if widen else inner.hnsw.efSearch
    elif isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = inner.nlist if widen else inner.nprobe
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params
