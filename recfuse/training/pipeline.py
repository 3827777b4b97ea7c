"""tf.data pipeline over integer training examples (seeded shuffle, user-id dropout, batch, prefetch).

Candidate features are gathered inside the model from its item feature table, so the pipeline only
moves a few integers per example and never decodes images (they were decoded once, up front).

Example:
    >>> ds = make_dataset(examples, user_vocab, batch_size=256, seed=42, user_dropout=0.1)  # doctest: +SKIP
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf

from recfuse.data.vocab import IdVocab
from recfuse.training.examples import Examples


def oov_rows(user_idx: np.ndarray, user_vocab: IdVocab) -> np.ndarray:
    """``[n]`` the hashed OOV bucket each known user would get if it were unknown (its own row if none)."""
    if user_vocab.num_oov == 0:
        return user_idx.copy()
    buckets = np.array([zlib.crc32(u.encode("utf-8")) % user_vocab.num_oov for u in user_vocab.ids], dtype=np.int64)
    known = user_idx >= user_vocab.num_oov
    out = user_idx.copy()
    out[known] = buckets[user_idx[known] - user_vocab.num_oov]
    return out


def make_dataset(
    examples: Examples, user_vocab: IdVocab, batch_size: int, seed: int, user_dropout: float = 0.0
) -> tf.data.Dataset:
    """Shuffled (reshuffled each epoch, seeded), batched, prefetched dataset of example dicts.

    With ``user_dropout > 0`` a share of examples sees the user's OOV bucket instead of its own row,
    which trains the buckets that unknown users fall into at serving time.
    """
    data = examples.as_dict()
    data["user_oov"] = oov_rows(examples.user_idx, user_vocab)
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    return with_user_dropout(ds, user_dropout, seed).prefetch(tf.data.AUTOTUNE)


def with_user_dropout(ds: tf.data.Dataset, user_dropout: float, seed: int) -> tf.data.Dataset:
    """Batches where a ``user_dropout`` share of examples read their user's OOV bucket (``user_oov``)."""
    if user_dropout <= 0:
        return ds
    rate = float(user_dropout)

    def _drop(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        draw = tf.random.uniform(tf.shape(batch["user_idx"]), seed=seed)
        out = dict(batch)
        out["user_idx"] = tf.where(draw < rate, batch["user_oov"], batch["user_idx"])
        return out

    return ds.map(_drop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
