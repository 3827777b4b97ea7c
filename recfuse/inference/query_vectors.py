"""Query vectors of planned queries: a known user's precomputed vector, or one numpy forward.

:func:`known_user_vectors` runs the query tower once at load over every vocabulary user's stored
history (what a request by user id without a history of its own reads), within a memory budget;
:class:`QueryVectors` then answers each :class:`~recfuse.inference.plan.QueryPlan` from those rows
where it can and encodes the rest in one batched forward. A tower giving NaN or inf is a broken
bundle: both raise :class:`~recfuse.errors.ArtifactError`, never return such a vector.

Example:
    >>> vecs = known_user_vectors(encoder, vocab, 64, stored_history, budget_mb=256, bundle_path="b")  # doctest: +SKIP
    >>> QueryVectors(encoder, vecs, vocab.num_oov, "b").encode(plans).shape                           # doctest: +SKIP
    (3, 64)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recfuse.data.vocab import IdVocab
from recfuse.errors import ArtifactError
from recfuse.forward.query import QueryEncoder
from recfuse.inference.plan import QueryPlan
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)


class QueryVectors:
    """Query vectors for plans: rows of ``user_vectors`` where a plan names one, a forward for the rest.

    Args:
        encoder: the bundle's query encoder.
        user_vectors: ``[known users, d]`` from :func:`known_user_vectors`, or None (every query is encoded).
        num_oov: the user vocabulary's OOV buckets (user index ``num_oov + i`` is row ``i``).
        bundle_path: named in errors.
    """

    def __init__(
        self, encoder: QueryEncoder, user_vectors: FloatArray | None, num_oov: int, bundle_path: str | Path
    ) -> None:
        self.encoder = encoder
        self.user_vectors = user_vectors
        self.num_oov = int(num_oov)
        self.bundle_path = str(bundle_path)

    def vector_row(self, user_idx: int, request_rows: int) -> int:
        """Row of ``user_vectors`` answering a query by a known user whose request adds no history
        rows (``request_rows``: known ids in the request history); -1 when it must be encoded."""
        if self.user_vectors is None or request_rows or user_idx < self.num_oov:
            return -1
        return user_idx - self.num_oov

    def encode(self, plans: Sequence[QueryPlan]) -> FloatArray:
        """Query vectors ``[len(plans), d]``: precomputed rows where a plan has one, one forward for the rest."""
        vecs = self.user_vectors
        if len(plans) == 1 and plans[0].vector_row >= 0:  # the common serving call: a [1, d] view, no copy
            r = plans[0].vector_row
            return vecs[r : r + 1]  # type: ignore[index]  # rows only when vecs is set
        stored: list[int] = []
        rest: list[int] = []
        for j, p in enumerate(plans):
            (stored if p.vector_row >= 0 else rest).append(j)
        if not rest:
            return vecs[[p.vector_row for p in plans]]  # type: ignore[index]  # rows only when vecs is set
        encoded = self.finite(
            self.encoder.encode_many([plans[j].user_idx for j in rest], [plans[j].hist for j in rest])
        )
        if not stored:
            return encoded
        full = np.empty((len(plans), encoded.shape[1]), np.float32)
        full[stored] = vecs[[plans[j].vector_row for j in stored]]  # type: ignore[index]
        full[rest] = encoded
        return full

    def finite(self, queries: FloatArray) -> FloatArray:
        """``queries`` from the query tower, or an ArtifactError: a tower giving NaN/inf is a broken
        bundle (the server's reload rejects it), not a bad request."""
        if not np.isfinite(queries).all():
            raise ArtifactError(
                f"the query tower of bundle {self.bundle_path!r} gave a non-finite vector; re-export the "
                "bundle from a model trained without NaN weights"
            )
        return queries


def known_user_vectors(
    encoder: QueryEncoder,
    user_vocab: IdVocab,
    dim: int,
    stored_history: Callable[[str], Int64Array],
    budget_mb: float,
    bundle_path: str | Path,
) -> FloatArray | None:
    """Every vocabulary user's query vector with no request history, batched; read-only.

    Args:
        encoder: the bundle's query encoder.
        user_vocab: the bundle's user vocabulary (row ``i`` is user ``user_vocab.ids[i]``).
        dim: query vector width ``d``.
        stored_history: a user's history rows as a request without one reads them (stored,
            de-duplicated, cut to ``max_history``).
        budget_mb: None is returned when ``users x d x 4`` bytes exceed this many MiB, or when it is 0.
        bundle_path: named in errors.

    Returns:
        ``[len(user_vocab), d]`` float32, or None (off, over budget, or no users).

    Raises:
        ValueError: ``budget_mb`` < 0. ArtifactError: the tower gives a non-finite vector.
    """
    voc = user_vocab
    n, d = len(voc.ids), dim
    if budget_mb < 0:
        raise ValueError(f"`user_vectors_mb` must be >= 0 MiB, got {budget_mb!r}")
    if n == 0 or budget_mb == 0:
        return None
    if n * d * 4 > budget_mb * 2**20:
        logger.info(
            "%d known users' query vectors (%.3g MiB) exceed user_vectors_mb=%g; they are encoded per request",
            n,
            n * d * 4 / 2**20,
            budget_mb,
        )
        return None
    out = np.zeros((n, d), np.float32)
    chunk = 4096
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        hists = [stored_history(u) for u in voc.ids[start:stop]]
        # Rows with no history and no user table never use the model (popular fallback instead).
        out[start:stop] = encoder.encode_many(range(voc.num_oov + start, voc.num_oov + stop), hists)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out).all(axis=1)).sum())
        raise ArtifactError(
            f"the query tower of bundle {str(bundle_path)!r} gives non-finite vectors for {bad} known "
            "user(s); re-export the bundle from a model trained without NaN weights"
        )
    out.flags.writeable = False
    return out
