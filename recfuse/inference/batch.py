"""Batch top-k for many users: every answer through :meth:`Recommender.recommend_batch`, streamed to Parquet.

Each batch of users is one ``recommend_batch`` call (the same validation, history merge, query
forward, exclusions and popularity fallback as serving), written as one row group of
``user_id, item_id, rank, score`` (rank 1 is best) to a temp file beside the output; the file is
fsynced and renamed into place at the end, so the output path holds a whole file or nothing new.

Example:
    >>> rec = Recommender.from_bundle("bundles/attention")  # doctest: +SKIP
    >>> result = recommend_all(rec, known_users(rec), k=100, out_path="recs.parquet")  # doctest: +SKIP
    >>> result.users, result.rows  # doctest: +SKIP
    (50000, 5000000)
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.errors import InvalidRequestError, SchemaError
from recfuse.fsio import fsync_dir
from recfuse.inference.recommender import Recommender
from recfuse.inference.types import FALLBACK_POPULAR, RecommendQuery

logger = logging.getLogger(__name__)

RECS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("rank", pa.int32()), ("score", pa.float64())]
)


@dataclass(frozen=True)
class BatchResult:
    """What :func:`recommend_all` wrote.

    Attributes:
        path: the Parquet file (``user_id, item_id, rank, score``).
        users: users answered (duplicates in the input answered once).
        rows: rows written.
        unknown_users: users the bundle does not know (in neither its user vocabulary nor its stored
            histories); they get what the service gives them.
        fallback_users: users answered by the popularity fallback (no user signal).
        duplicate_users: repeated ids in the input, skipped.
        seconds: wall time.
    """

    path: Path
    users: int
    rows: int
    unknown_users: int
    fallback_users: int
    duplicate_users: int
    seconds: float

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds if self.seconds > 0 else float("inf")


def known_users(recommender: Recommender) -> list[str]:
    """Every user the bundle knows: its user vocabulary in order, then users with only a stored history."""
    vocab = [str(u) for u in recommender.bundle.user_vocab.ids]
    seen = set(vocab)
    extra = sorted({str(u) for u in recommender.bundle.user_history["user_id"]} - seen)
    return vocab + extra


def read_user_ids(path: str | Path) -> list[str]:
    """User ids from a file: a ``user_id`` column (``.parquet``/``.csv``) or one id per line (anything else).

    Blank lines are skipped; ids are stripped of surrounding whitespace.

    Raises:
        SchemaError: a missing file, or a Parquet/CSV file without a ``user_id`` column.
    """
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"users file {str(p)!r} does not exist; pass --users all or a file of user ids")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".csv"):
        from recfuse.data.readers import read_table

        df = read_table(p)
        if "user_id" not in df.columns:
            raise SchemaError(f"users file {str(p)!r} has no 'user_id' column; found columns {list(df.columns)}")
        return [str(u).strip() for u in df["user_id"].tolist() if u is not None and str(u).strip()]
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def recommend_all(
    recommender: Recommender,
    user_ids: Sequence[str],
    k: int,
    out_path: str | Path,
    *,
    batch_size: int = 256,
    exclude_seen: bool = True,
    exclude_item_ids: Sequence[str] = (),
    include_categories: Sequence[str] = (),
    exclude_categories: Sequence[str] = (),
    progress: Callable[[int], object] | None = None,
) -> BatchResult:
    """Top-``k`` for each user, written to ``out_path`` as Parquet, one row group per batch.

    Args:
        recommender: the loaded bundle's Recommender.
        user_ids: users to answer, in output order; repeats are answered once.
        k: items per user (``1..limits.max_k``); fewer when fewer candidates pass the filters.
        out_path: the Parquet file to write (replaced atomically).
        batch_size: users per ``recommend_batch`` call (``1..limits.max_batch``).
        exclude_seen: drop each user's stored history, as serving does with ``exclude_seen``.
        exclude_item_ids, include_categories, exclude_categories: as on :meth:`Recommender.recommend`.
        progress: called with the number of users done after each batch (e.g. ``tqdm.update``).

    Returns:
        :class:`BatchResult`.

    Raises:
        InvalidRequestError: no user ids, a bad ``batch_size``, or a field breaking a limit.

    Example:
        >>> recommend_all(rec, ["u1", "u2"], k=10, out_path="recs.parquet").rows  # doctest: +SKIP
        20
    """
    max_batch = recommender.limits.max_batch
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= max_batch:
        raise InvalidRequestError(f"`batch_size` must be in [1, {max_batch}], got {batch_size!r}")
    users = list(dict.fromkeys(str(u) for u in user_ids))
    if not users:
        raise InvalidRequestError("`user_ids` is empty; pass at least one user id")
    recommender.limits.check_k(k)
    t0 = time.perf_counter()
    known = set(known_users(recommender))
    unknown = sum(1 for u in users if u not in known)
    dest = Path(out_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    rows = fallback = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            with pq.ParquetWriter(fh, RECS_SCHEMA, compression="zstd") as writer:
                for start in range(0, len(users), batch_size):
                    chunk = users[start : start + batch_size]
                    queries = [
                        RecommendQuery(u, (), k, exclude_item_ids, exclude_seen, include_categories, exclude_categories)
                        for u in chunk
                    ]
                    cols: dict[str, list[object]] = {"user_id": [], "item_id": [], "rank": [], "score": []}
                    for user, rec in zip(chunk, recommender.recommend_batch(queries)):
                        fallback += rec.fallback == FALLBACK_POPULAR
                        n = len(rec.item_ids)
                        cols["user_id"].extend([user] * n)
                        cols["item_id"].extend(rec.item_ids)
                        cols["rank"].extend(range(1, n + 1))
                        cols["score"].extend(rec.scores)
                    writer.write_table(pa.table(cols, schema=RECS_SCHEMA))
                    rows += len(cols["user_id"])
                    if progress is not None:
                        progress(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    seconds = time.perf_counter() - t0
    logger.info("%d users, %d rows in %.1f s to %s", len(users), rows, seconds, dest)
    return BatchResult(dest, len(users), rows, unknown, fallback, len(user_ids) - len(users), seconds)
