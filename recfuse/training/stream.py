"""Training examples streamed from a prepared folder (:mod:`recfuse.data.prepare`), shard by shard.

A prepared shard holds whole users sorted by ``(user_id, timestamp)``, so running
:func:`recfuse.training.examples.build_examples` on one shard's rows gives exactly the examples the
in-memory path builds for those users: the multiset of examples over all shards equals
``build_examples`` on the whole table (same ``user_idx``, ``hist_idx``, ``item_idx``). Memory holds
one shard (at most ``rows_per_shard`` rows, or one user's), whatever the number of interactions.

What ``fit`` reads (:func:`make_stream_dataset`): before training, each shard's examples are
built once and written as raw int32 columns (:func:`materialise`, one shard in memory at a time,
``4 * (max_history + 3)`` bytes per example on disk); every epoch then reads them back with
TensorFlow ops only (``read_file`` + ``decode_raw``): shards in a seeded random order, each shard's
examples permuted whole (a fresh seeded permutation per shard and epoch) and cut into batches. A
shard is a hash bucket of users, so a batch is a random sample of users as a full shuffle's would
be, and memory holds one shard whatever the number of shards.

Why no Python generator in the loop (``bench/train_stream.py``, 2 cores, 144k interactions): a
``tf.data.Dataset.from_generator`` input spent 0.8 s per epoch producing batches, yet it tripled
the median train step (44 ms in memory, 138 ms streamed) and the process's system time (5 s to
24 s): the generator's Python thread and the Keras step contended (the added time was mostly
system time, lock handoffs between the two threads), and training ran at about 0.5x the in-memory
examples/s. Read with TensorFlow ops, streamed training runs at the in-memory rate (bench/README.md
has the figures). :meth:`StreamedExamples.batches` is an epoch in numpy (seeded two-level shuffle
through a ``shuffle_buffer``), for checks and tools that want arrays without TensorFlow.

Vocabularies and popularity come from the prepared folder without a pass over the shards:
:func:`prepared_user_ids` (every user) and :func:`prepared_item_counts` (rows per catalog item).
When the folder records its split (``recfuse prepare --config``), the rest of what training needs
of the training rows is streamed from the shards too: :func:`stream_val_queries` (the validation
queries, only the held-out users' rows kept) and :func:`write_prepared_user_lists` (the model
directory's per-user lists), one shard at a time (:mod:`recfuse.training.stream_users`).
Under several workers each takes every ``workers``-th shard (:class:`StreamedExamples` ``part``); the
trainer gives all of them the steps of the smallest share.

Example:
    >>> src = StreamedExamples("runs/prepared", item_vocab, user_vocab, max_history=20)  # doctest: +SKIP
    >>> ds = make_stream_dataset(src, user_vocab, 1024, seed=42, cache_dir="runs/ex")     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recfuse.data.prepare import load_manifest
from recfuse.data.vocab import IdVocab
from recfuse.errors import ConfigError
from recfuse.training.examples import Examples, build_examples

logger = logging.getLogger(__name__)

__all__ = [
    "StreamedExamples",
    "make_stream_dataset",
    "materialise",
    "read_stream_dataset",
    "prepared_item_counts",
    "prepared_user_ids",
    "streamed_input",
]

KEYS = ("user_idx", "hist_idx", "hist_pos", "item_idx")


def prepared_user_ids(folder: str | Path) -> list[str]:
    """Every user of a prepared folder (sorted), for ``IdVocab.build``."""
    manifest = load_manifest(folder, verify=False)
    ids = pq.read_table(Path(folder) / manifest["users_file"]["file"]).column("user_id").to_pylist()
    return sorted(ids)


def prepared_item_counts(folder: str | Path, item_vocab: IdVocab) -> np.ndarray:
    """``[num_items]`` int64 rows per item of ``item_vocab`` (items outside the vocabulary are left out)."""
    manifest = load_manifest(folder, verify=False)
    table = pq.read_table(Path(folder) / manifest["item_counts_file"]["file"])
    idx = item_vocab.lookup(table.column("item_id").to_pylist())
    counts = table.column("count").to_numpy()
    keep = idx >= 0
    return np.bincount(idx[keep], weights=counts[keep], minlength=len(item_vocab)).astype(np.int64)


class StreamedExamples:
    """The training examples of a prepared folder, built one shard at a time.

    Args:
        folder: a folder written by :func:`recfuse.data.prepare.prepare_interactions`.
        item_vocab, user_vocab, max_history, history, targets: as for ``build_examples``.
        part: ``(index, count)``: this worker takes shards ``index, index + count, ...``.
        verify: check every file's sha256 against the manifest (reads each file once).

    Raises:
        ArtifactError: not a prepared folder, or a file missing / changed.
        ValueError: ``part`` out of range; the ``history`` / ``targets`` errors of ``build_examples``.
    """

    def __init__(
        self,
        folder: str | Path,
        item_vocab: IdVocab,
        user_vocab: IdVocab,
        max_history: int,
        history: str = "previous",
        targets: str = "last",
        part: tuple[int, int] = (0, 1),
        verify: bool = True,
    ) -> None:
        index, count = part
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"`part` must be (index, count) with 0 <= index < count, got {part}")
        build_examples(_empty(), item_vocab, user_vocab, max_history, history, targets)  # argument errors now
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder, verify=verify)
        self.shards = [self.folder / s["file"] for s in self.manifest["shards"]][index::count]
        self.item_vocab, self.user_vocab = item_vocab, user_vocab
        self.max_history, self.history, self.targets = max_history, history, targets
        self.epoch_examples = 0  # examples of the last complete epoch of batches() (0 before one)
        self.epoch_targets = 0  # next-item targets of it (one per history position with "all_positions")

    @property
    def rows(self) -> int:
        """Interactions in this part's shards (usable rows, catalog or not)."""
        names = {p.name for p in self.shards}
        return int(sum(s["rows"] for s in self.manifest["shards"] if s["file"] in names))

    def shard_examples(self, path: Path) -> Examples:
        """The examples of one shard (its users' complete histories)."""
        df = pq.read_table(path).to_pandas()
        return build_examples(df, self.item_vocab, self.user_vocab, self.max_history, self.history, self.targets)

    def first_examples(self, n: int) -> Examples:
        """The first ``n`` examples of the first shard (fewer if it has fewer), to build a model's variables.

        Only these are kept: a whole shard's examples (~250 MB at 800k rows, ``max_history = 20``)
        held by the caller would stay in memory through ``fit``.
        """
        ex = self.shard_examples(self.shards[0])
        return ex.take(np.arange(min(n, len(ex))))

    def __iter__(self) -> Iterator[Examples]:
        """Examples shard by shard, in manifest order."""
        for path in self.shards:
            yield self.shard_examples(path)

    def batches(
        self, batch_size: int, seed: int, epoch: int = 0, shuffle_buffer: int = 1_000_000
    ) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of shuffled batches (dicts of ``KEYS``), seeded by ``(seed, epoch)``.

        The last batch may be smaller; every example of the part appears exactly once.
        """
        if batch_size < 1 or shuffle_buffer < 1:
            raise ValueError(f"`batch_size` and `shuffle_buffer` must be >= 1, got {batch_size}, {shuffle_buffer}")
        rng = np.random.default_rng([seed, epoch])
        pending: list[dict[str, np.ndarray]] = []
        held = n_examples = n_targets = 0
        for i in rng.permutation(len(self.shards)):
            shard = self.shard_examples(self.shards[int(i)])
            n_examples, n_targets = n_examples + len(shard), n_targets + shard.targets
            pending.append(shard.as_dict())
            held += len(shard)
            if held >= shuffle_buffer:
                pending, held = yield from _drain(pending, rng, batch_size, final=False)
        yield from _drain(pending, rng, batch_size, final=True)
        self.epoch_examples, self.epoch_targets = n_examples, n_targets


def _drain(
    pending: list[dict[str, np.ndarray]], rng: np.random.Generator, batch_size: int, final: bool
) -> Generator[dict[str, np.ndarray], None, tuple[list[dict[str, np.ndarray]], int]]:
    """Shuffle the buffer, yield its full batches (all with ``final``); return the leftover rows."""
    if not pending:
        return [], 0
    buf = {k: np.concatenate([p[k] for p in pending]) for k in KEYS}
    n = len(buf["item_idx"])
    order = rng.permutation(n)
    full = n if final else n - n % batch_size
    for start in range(0, full, batch_size):
        rows = order[start : start + batch_size]
        yield {k: v[rows] for k, v in buf.items()}
    rest = order[full:]
    if not len(rest):
        return [], 0
    return [{k: v[rest] for k, v in buf.items()}], len(rest)


def streamed_input(
    folder: str | Path,
    train_rows: int,
    item_vocab: IdVocab,
    user_vocab: IdVocab,
    max_history: int,
    history: str = "previous",
    targets: str = "last",
    part: tuple[int, int] = (0, 1),
) -> tuple[StreamedExamples, np.ndarray, int]:
    """The trainer's streamed input: the source, ``[num_items]`` item counts, rows of unknown items.

    Item counts and unknown rows are the whole folder's; the source holds ``part``'s shards.

    Raises:
        ConfigError: the folder does not hold ``train_rows`` interactions (it was prepared from
            other data than the training split), or has fewer shards than ``part`` has workers.
        ArtifactError: not a prepared folder, or a file missing / changed.
    """
    src = StreamedExamples(folder, item_vocab, user_vocab, max_history, history, targets, part=part)
    shards = len(src.manifest["shards"])
    if shards < part[1]:
        raise ConfigError(
            f"`prepared` folder {str(folder)!r} has {shards} shard(s) for {part[1]} workers; each worker streams "
            f"its own shards: re-run `recfuse prepare` with --buckets {part[1]} or more (or fewer --rows-per-shard)"
        )
    rows = int(src.manifest["rows"])
    if rows != train_rows:
        raise ConfigError(
            f"`prepared` folder {str(folder)!r} holds {rows} usable interactions but the training split has "
            f"{train_rows}; run `recfuse prepare` on the training split's interactions"
        )
    counts = prepared_item_counts(folder, item_vocab)
    return src, counts, rows - int(counts.sum())


def _empty() -> Any:
    import pandas as pd

    return pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []})


def materialise(source: StreamedExamples, user_vocab: IdVocab, folder: str | Path) -> list[str]:
    """Write the examples of ``source``'s shards as raw int32 columns under ``folder`` (replaced).

    One shard at a time (memory: one shard's examples), so the training input reads them back with
    TensorFlow ops only. Each shard ``k`` becomes ``{k:05d}.{key}.bin`` for ``user_idx``,
    ``user_oov``, ``item_idx`` (``[n]``) and ``hist_idx`` (``[n, L]``, row-major); ``hist_pos`` is
    ``0..L-1`` on every row (as ``build_examples`` makes it) and is not stored. Sets
    ``source.epoch_examples`` / ``epoch_targets``.

    Returns:
        The file prefixes, one per shard, in ``source.shards`` order.

    Raises:
        ValueError: an index does not fit int32 (a vocabulary of 2**31 ids or more).
    """
    from recfuse.training.pipeline import oov_rows

    out = Path(folder)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    oov_table = oov_rows(np.arange(user_vocab.size, dtype=np.int64), user_vocab)
    prefixes, n_examples, n_targets = [], 0, 0
    for k, path in enumerate(source.shards):
        ex = source.shard_examples(path)
        cols = {"user_idx": ex.user_idx, "user_oov": oov_table[ex.user_idx], "item_idx": ex.item_idx,
                "hist_idx": ex.hist_idx}  # fmt: skip
        prefix = out / f"{k:05d}"
        for key, col in cols.items():
            if len(col) and int(col.max()) >= 2**31:
                raise ValueError(
                    f"`{key}` holds index {int(col.max())}, past int32; vocabularies must stay below 2**31"
                )
            np.ascontiguousarray(col, dtype=np.int32).tofile(f"{prefix}.{key}.bin")
        prefixes.append(str(prefix))
        n_examples, n_targets = n_examples + len(ex), n_targets + ex.targets
    source.epoch_examples, source.epoch_targets = n_examples, n_targets
    return prefixes


def make_stream_dataset(
    source: StreamedExamples,
    user_vocab: IdVocab,
    batch_size: int,
    seed: int,
    cache_dir: str | Path,
    user_dropout: float = 0.0,
) -> Any:
    """A ``tf.data`` dataset of example batches like ``make_dataset``'s (reshuffled each epoch).

    The examples are first written shard by shard to ``cache_dir`` (:func:`materialise`); each
    iteration (a Keras epoch) then reads them back (:func:`read_stream_dataset`). ``user_oov`` and
    user-id dropout are as in :func:`recfuse.training.pipeline.make_dataset`.
    """
    prefixes = materialise(source, user_vocab, cache_dir)
    return read_stream_dataset(prefixes, source.max_history, batch_size, seed, user_dropout)


def read_stream_dataset(
    prefixes: list[str], max_history: int, batch_size: int, seed: int, user_dropout: float = 0.0
) -> Any:
    """Batches of the shards :func:`materialise` wrote, read with TensorFlow ops only (no Python per batch).

    Each iteration takes the shards in a seeded random order and permutes each shard's examples
    whole before cutting it into batches (a shard's last batch may be smaller). A shard is a hash
    bucket of users, so its batches are random samples of users like a full shuffle's; memory holds
    one shard, whatever the number of shards.
    """
    import tensorflow as tf

    from recfuse.training.pipeline import with_user_dropout

    L = max_history

    def column(prefix: Any, key: str) -> Any:
        return tf.io.decode_raw(tf.io.read_file(tf.strings.join([prefix, f".{key}.bin"])), tf.int32)

    def shard(prefix: Any, key: Any) -> Any:
        cols = {k: column(prefix, k) for k in ("user_idx", "user_oov", "item_idx")}
        cols["hist_idx"] = tf.reshape(column(prefix, "hist_idx"), [-1, L])
        # a fresh permutation per shard and epoch: `key` comes from a generator re-seeded each iteration
        order = tf.argsort(
            tf.random.stateless_uniform(tf.shape(cols["item_idx"]), tf.stack([key, tf.constant(seed, tf.int64)]))
        )
        return tf.data.Dataset.from_tensor_slices({k: tf.gather(v, order) for k, v in cols.items()}).batch(batch_size)

    def widen(batch: dict[str, Any]) -> dict[str, Any]:
        out = {k: tf.cast(v, tf.int64) for k, v in batch.items()}
        out["hist_pos"] = tf.broadcast_to(tf.range(L, dtype=tf.float32), [tf.shape(out["item_idx"])[0], L])
        return out

    files = tf.data.Dataset.from_tensor_slices(tf.constant(prefixes, tf.string))
    files = files.shuffle(max(len(prefixes), 1), seed=seed, reshuffle_each_iteration=True)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((files, keys)).flat_map(shard)
    ds = ds.map(widen, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return with_user_dropout(ds, user_dropout, seed).prefetch(tf.data.AUTOTUNE)
