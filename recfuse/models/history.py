"""User histories as the query tower's integer inputs (numpy only; shared by training and loading).

Example:
    >>> from recfuse.data.vocab import IdVocab
    >>> hist, pos = history_arrays([["b", "zz", "a"]], IdVocab(("a", "b"), num_oov=0), max_history=3)
    >>> hist.tolist(), pos.tolist()
    ([[1, 0, -1]], [[0.0, 1.0, 2.0]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recfuse.data.vocab import IdVocab
from recfuse.types import FloatArray, Int64Array


def history_arrays(
    histories: Sequence[Sequence[str]], item_vocab: IdVocab, max_history: int
) -> tuple[Int64Array, FloatArray]:
    """``(hist_idx [b, L], hist_pos [b, L])`` from id lists, most recent first.

    Unknown ids are skipped (the next known item moves up), and only the first ``max_history`` known
    items are kept; positions are ``0..L-1`` as in training.
    """
    b = len(histories)
    hist = np.full((b, max_history), -1, dtype=np.int64)
    for r, items in enumerate(histories):
        idx = item_vocab.lookup(list(items))
        idx = idx[idx >= 0][:max_history]
        hist[r, : len(idx)] = idx
    pos = np.broadcast_to(np.arange(max_history, dtype=np.float32), (b, max_history)).copy()
    return hist, pos
