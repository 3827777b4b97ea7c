"""Back a loaded index's large arrays with 2 MiB transparent huge pages (Linux), for cheaper searches.

A graph search reads a few thousand vectors and neighbour lists scattered over the whole index.
With 4 KiB pages almost every such read is also a TLB miss, and a page walk is dearer still inside
a VM (two levels of page tables). With 2 MiB pages a 1M x 64-d HNSW32 index (~0.5 GiB) needs ~250
TLB entries instead of ~125,000. Measured on the 2-core VM (bench/README.md, "Known users' query
vectors at load"), CPU per single-query search: -15% at 1M items, -6% at 100k.

:func:`advise_hugepages` asks the kernel (``madvise``) to back the index's big arrays with huge pages
and to do it now (``MADV_COLLAPSE``, Linux >= 6.1). Only memory faiss owns is touched: the flat
vectors, the HNSW neighbour lists and the id map. It changes which pages hold the bytes, never the
bytes. Where the kernel cannot (another OS, THP set to ``never``, an older kernel, no free huge
pages), it does nothing and returns 0; the index works the same, only without the speed-up.

Example:
    >>> from recfuse.index.hugepages import advise_hugepages
    >>> advise_hugepages(item_index.faiss_index)            # doctest: +SKIP
    499122176
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import sys
import time
from typing import Any

import faiss

logger = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
#: arrays smaller than this are left alone (they hold at most one huge page)
MIN_BYTES = 2 * HUGE_PAGE
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
#: MADV_COLLAPSE tries per array: the kernel documents EAGAIN as a transient failure (it can come
#: from pages it cannot take at that moment, more often on a loaded machine)
COLLAPSE_TRIES = 4


@functools.cache
def _madvise() -> Any:
    """libc's ``madvise`` (None where there is no such C library)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _arrays(index: faiss.Index) -> list[tuple[str, Any, int]]:
    """``(name, vector, bytes per element)`` of the index's large owned arrays."""
    out: list[tuple[str, Any, int]] = []
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        out.append(("id_map", index.id_map, 8))
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexHNSW):
        hnsw: Any = index.hnsw
        out += [("hnsw.neighbors", hnsw.neighbors, 4), ("hnsw.offsets", hnsw.offsets, 8)]
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlatCodes):
        out.append(("codes", index.codes, 1))
    return out


def _owned(vec: Any) -> bool:
    # faiss >= 1.10 MaybeOwnedVector: a view of a memory-mapped file is not ours to re-back.
    is_owned = getattr(vec, "is_owned", True)
    return bool(is_owned() if callable(is_owned) else is_owned)


def advise_hugepages(index: faiss.Index) -> int:
    """Back ``index``'s large arrays with transparent huge pages where the kernel allows.

    Args:
        index: a faiss index (``IDMap2``-wrapped or not): Flat, HNSW-over-flat and their id maps are
            handled; other kinds (IVF lists, PQ codes) are left as they are.

    Returns:
        Bytes now backed by huge pages (0 where unsupported: not Linux, THP off, old kernel).
    """
    if not sys.platform.startswith("linux"):
        return 0
    madvise = _madvise()
    if madvise is None:
        return 0
    done = 0
    for name, vec, itemsize in _arrays(index):
        nbytes = int(vec.size()) * itemsize
        if nbytes < MIN_BYTES or not _owned(vec):
            continue
        addr = int(vec.data())
        start = -(-addr // HUGE_PAGE) * HUGE_PAGE  # whole huge pages inside the array only
        stop = (addr + nbytes) // HUGE_PAGE * HUGE_PAGE
        if stop <= start:
            continue
        if madvise(start, stop - start, _MADV_HUGEPAGE) != 0:
            logger.debug("madvise(MADV_HUGEPAGE) on %s failed: errno %d", name, ctypes.get_errno())
            return done  # THP disabled or unsupported: the rest would fail the same way
        if _collapse(madvise, start, stop - start):
            done += stop - start
        else:  # older kernel: khugepaged may still collapse the advised range later
            logger.debug("madvise(MADV_COLLAPSE) on %s failed: errno %d", name, ctypes.get_errno())
    return done


def _collapse(madvise: Any, start: int, length: int) -> bool:
    """``MADV_COLLAPSE`` on the range, tried again while the kernel answers EAGAIN (transient)."""
    for attempt in range(COLLAPSE_TRIES):
        if madvise(start, length, _MADV_COLLAPSE) == 0:
            return True
        if ctypes.get_errno() != errno.EAGAIN:
            return False
        time.sleep(0.001 * (attempt + 1))
    return False
