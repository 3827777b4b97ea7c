"""advise_hugepages: the index's big arrays move onto 2 MiB pages where the kernel allows; answers unchanged."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from recfuse.index.hugepages import HUGE_PAGE, advise_hugepages


def _thp_expected() -> bool:
    """Linux >= 6.1 (MADV_COLLAPSE) with transparent huge pages not set to ``never``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return "[never]" not in mode and (major, minor) >= (6, 1)


def _huge_kb_at(addr: int) -> tuple[int, int]:
    """(start, AnonHugePages in kB) of the memory mapping holding ``addr``; (0, 0) where none does."""
    start = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            start = lo if lo <= addr < hi else None
        elif start is not None and line.startswith("AnonHugePages:"):
            return start, int(line.split()[1])
    return 0, 0


def test_hnsw_in_idmap2_moves_to_huge_pages_and_answers_the_same() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 64)).astype(np.float32)  # 5 MiB of vectors, 5 MiB of links
    hnsw = faiss.IndexHNSWFlat(64, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    index = faiss.IndexIDMap2(hnsw)
    index.add_with_ids(x, np.arange(20_000, dtype=np.int64) * 3)
    queries = rng.standard_normal((50, 64)).astype(np.float32)
    before = index.search(queries, 10)

    done = advise_hugepages(index)

    after = index.search(queries, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert done % HUGE_PAGE == 0
    if not _thp_expected():
        assert done == 0
        return
    # Each array holds at least one whole aligned 2 MiB page inside it; the kernel collapses them now
    # (a collapse can still fail on a loaded machine: at least one array's pages must be counted).
    assert done >= HUGE_PAGE
    codes = int(faiss.downcast_index(hnsw.storage).codes.data())
    links = int(hnsw.hnsw.neighbors.data())
    # What it counts is real: the advised ranges (each its own mapping now) hold that many huge-page bytes.
    mappings = dict(_huge_kb_at(-(-addr // HUGE_PAGE) * HUGE_PAGE) for addr in (codes, links))
    assert 0 not in mappings, (hex(codes), hex(links))
    assert sum(mappings.values()) * 1024 >= done, (mappings, done)


def test_small_or_unsupported_indexes_are_left_alone() -> None:
    flat = faiss.IndexFlatIP(16)
    flat.add(np.ones((1000, 16), np.float32))  # 64 KiB: not worth a huge page
    assert advise_hugepages(flat) == 0
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4)
    ivf.train(np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32))
    assert advise_hugepages(ivf) == 0  # IVF lists are many small allocations: not handled


@pytest.mark.skipif(not _thp_expected(), reason="needs Linux >= 6.1 with transparent huge pages allowed")
def test_flat_index_vectors_on_huge_pages() -> None:
    flat = faiss.IndexFlatIP(64)
    flat.add(np.random.default_rng(2).standard_normal((40_000, 64)).astype(np.float32))  # 9.8 MiB
    nbytes = 40_000 * 64 * 4
    # at least every whole aligned huge page inside the array, however it is aligned (here 3 or 4)
    assert advise_hugepages(flat) >= (nbytes - HUGE_PAGE) // HUGE_PAGE * HUGE_PAGE
