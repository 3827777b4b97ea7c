"""The two-tower retrieval model: towers compute, the model owns the loss (TFRS ``models/base.py``).

Candidate features are NOT streamed through the input pipeline: the model holds an in-memory item
feature table (the arrays of :func:`recfuse.data.item_features.build_item_features`, one row per
catalog item, images decoded once) and gathers the rows of each batch by ``item_idx``. A training
example is therefore only a handful of integers (user, history, positive item), so variants on raw
images and on cached feature vectors share the same fast pipeline.

History encoding (``history_encoding``):

* ``live`` (default): each training step runs the candidate tower once over the batch's unique items
  (positives, mixed negatives and every history item) and the query tower pools the history from
  those rows, so the retrieval loss back-propagates through the history into the item
  representations (content branches and id embeddings alike). Without this, items are shaped only
  as candidates and the history path is a fixed projection of stale vectors; models without a
  user-id embedding (anonymous users, bare histories) then barely learn.
* ``memory_bank``: the history is read from a non-trainable bank ``E`` of candidate-tower
  embeddings refreshed by :class:`recfuse.training.callbacks.MemoryBankRefresh` (cheaper per step
  on huge image towers; no gradient through the history).

Evaluation and serving always read the history from the full item matrix (the memory bank after
training, the bundle's embeddings when serving), which equals the live rows in inference mode.

Loss (:class:`tfrs.tasks.Retrieval`): in-batch softmax with temperature, logQ correction with each
candidate's expected count in the batch's candidate pool (``B·p(i)`` from training item
frequencies plus ``M/N`` for ``M`` uniformly sampled mixed negatives; passed to TFRS divided by the
pool's largest count, so its clipping to ``[1e-6, 1]`` never flattens the correction of popular
items, and only items a million times rarer than the pool's most frequent one), accidental-hit removal by
item index, plus the candidate tower's own ``add_loss`` terms (contrastive alignment), which
``tfrs.models.Model.train_step`` adds as regularisation losses.

Per-modality auxiliary loss (``modality_loss_weight`` > 0, towers with more than one token): the
same retrieval loss, with the same queries, negatives and logQ correction, is added once per
content modality with that modality's aligned token alone standing in for the fused item
embedding (weighted by the weight; positives lacking the modality weigh 0). In a fused tower the
branch that learns fastest (typically text, which can memorise items through rare tokens) carries
the loss and the slower one (a CNN learning style from pixels) gets little gradient; scoring each
branch on its own keeps every branch predictive, which is what new items and items lacking a
modality rely on.

Example:
    >>> model = TwoTowerModel(query_tower, candidate_tower, item_table, item_prob, temperature=0.1)  # doctest: +SKIP
    >>> model.compile(tf.keras.optimizers.Adam(3e-3)); model.fit(ds)                                # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recfuse.models.query_tower import QueryTower

EXAMPLE_KEYS = ("user_idx", "hist_idx", "hist_pos", "item_idx")
HISTORY_ENCODINGS = ("live", "memory_bank")
TARGETS = ("last", "all_positions")
SOFTMAXES = ("sampled", "full")


class TwoTowerModel(tfrs.models.Model):
    """Query tower + candidate tower + ``tfrs.tasks.Retrieval``.

    Args:
        query_tower: the :class:`QueryTower`.
        candidate_tower: a Keras model ``call(features: dict, training) -> [b, d]``.
        item_table: per-item feature arrays ``{name: [num_items, ...]}`` (row = item index).
        item_prob: ``[num_items]`` sampling probability of each item as a positive (training
            frequency); used for logQ correction.
        temperature: softmax temperature.
        logq_correction: subtract ``log q`` from the logits.
        remove_accidental_hits: ignore in-batch negatives equal to the positive item.
        mixed_negatives: number of uniformly sampled catalog items appended as extra negatives.
        seed: seed of the mixed-negative sampler.
        history_encoding: ``live`` (history through the candidate tower, with gradient) or
            ``memory_bank`` (history from the refreshed, non-trainable bank).
        live_history_items: with ``live``, the most history-only items encoded live per step
            (0: all of them); the others are read from the memory bank.
        modality_loss_weight: weight of the per-modality auxiliary retrieval losses (0: off;
            ignored for a candidate tower with a single token or without ``embed_with_tokens``).
        item_scale: ``[num_items]`` factor each candidate's embedding is multiplied by in the
            retrieval loss (the popularity prior, :func:`recfuse.ranking.popularity_scale`); None: 1.
    """

    def __init__(
        self,
        query_tower: QueryTower,
        candidate_tower: tf.keras.Model,
        item_table: Mapping[str, np.ndarray],
        item_prob: np.ndarray,
        temperature: float = 0.1,
        logq_correction: bool = True,
        remove_accidental_hits: bool = True,
        mixed_negatives: int = 0,
        seed: int = 0,
        history_encoding: str = "live",
        live_history_items: int = 0,
        modality_loss_weight: float = 0.0,
        item_scale: np.ndarray | None = None,
        targets: str = "last",
        softmax: str = "sampled",
    ) -> None:
        super().__init__()
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
        if softmax not in SOFTMAXES:
            raise ValueError(f"softmax must be one of {SOFTMAXES}, got {softmax!r}")
        if targets == "all_positions" and getattr(query_tower, "encoder", "") != "transformer":
            raise ValueError("targets = 'all_positions' needs a query tower with encoder = 'transformer'")
        self.targets, self.softmax = targets, softmax
        self.temperature = float(temperature)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.num_items = int(len(item_prob))
        # Constants, not variables: they are inputs, rebuilt from the catalog, never checkpointed.
        self._table = {k: tf.constant(v) for k, v in item_table.items()}
        self._item_prob = tf.constant(np.asarray(item_prob, np.float32))
        if item_scale is not None and np.asarray(item_scale).shape != (self.num_items,):
            raise ValueError(f"item_scale must have shape ({self.num_items},), got {np.asarray(item_scale).shape}")
        #: the candidates' factor in the loss (None: 1); validation ranks by the same
        self.item_scale = None if item_scale is None else np.asarray(item_scale, np.float32)
        self._item_scale = None if item_scale is None else tf.constant(self.item_scale)
        self.memory_bank = tf.Variable(tf.zeros((self.num_items, query_tower.dim)), trainable=False, name="memory_bank")
        self.logq_correction = bool(logq_correction)
        self.mixed_negatives = int(mixed_negatives)
        if history_encoding not in HISTORY_ENCODINGS:
            raise ValueError(f"history_encoding must be one of {HISTORY_ENCODINGS}, got {history_encoding!r}")
        self.history_encoding = history_encoding
        self.live_history_items = int(live_history_items)
        if modality_loss_weight < 0:
            raise ValueError(f"modality_loss_weight must be >= 0, got {modality_loss_weight!r}")
        tokens = len(getattr(candidate_tower, "token_names", ()))
        self.aux_modalities = (
            int(getattr(candidate_tower, "content_token_count", 0))
            if modality_loss_weight > 0 and tokens > 1 and hasattr(candidate_tower, "embed_with_tokens")
            else 0
        )
        self.modality_loss_weight = float(modality_loss_weight) if self.aux_modalities else 0.0
        self._rng = tf.random.Generator.from_seed(seed)
        self.task = tfrs.tasks.Retrieval(
            temperature=temperature, remove_accidental_hits=remove_accidental_hits, name="retrieval"
        )

    def item_features(self, item_idx: tf.Tensor) -> dict[str, tf.Tensor]:
        """Candidate-tower features of the given item rows (``[b]`` -> ``{name: [b, ...]}``)."""
        return {k: tf.gather(v, item_idx) for k, v in self._table.items()}

    def candidate_embeddings(self, item_idx: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``[b, d]`` candidate-tower embeddings of the given item rows."""
        return self.candidate_tower(self.item_features(item_idx), training=training)

    def _encode(self, item_idx: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
        """Embeddings of the rows, plus their content tokens ``[b, M, d]`` and mask when the auxiliary loss is on."""
        if not self.aux_modalities:
            return self.candidate_embeddings(item_idx, training=training), None, None
        z, tokens, mask = self.candidate_tower.embed_with_tokens(self.item_features(item_idx), training=training)
        m = self.aux_modalities
        return z, tokens[:, :m], mask[:, :m]

    def query_embeddings(
        self, features: Mapping[str, tf.Tensor], item_matrix: tf.Tensor | None = None, training: bool = False
    ) -> tf.Tensor:
        """``[b, d]`` query vectors; the history is read from ``item_matrix`` (default: memory bank)."""
        return self.query_tower(
            self.memory_bank if item_matrix is None else item_matrix,
            features["user_idx"],
            features["hist_idx"],
            features["hist_pos"],
            training=training,
        )

    def all_item_embeddings(self, batch_size: int = 1024) -> np.ndarray:
        """``[num_items, d]`` candidate embeddings of the whole catalog (inference mode)."""
        out = []
        for start in range(0, self.num_items, batch_size):
            idx = tf.range(start, min(start + batch_size, self.num_items), dtype=tf.int64)
            out.append(self._embed_rows(idx).numpy())
        return np.concatenate(out, axis=0).astype(np.float32)

    @tf.function(reduce_retracing=True)
    def _embed_rows(self, idx: tf.Tensor) -> tf.Tensor:
        return self.candidate_embeddings(idx, training=False)

    def refresh_memory_bank(self, batch_size: int = 1024) -> np.ndarray:
        """Recompute the memory bank from the current candidate tower; returns the matrix."""
        matrix = self.all_item_embeddings(batch_size)
        self.memory_bank.assign(matrix)
        return matrix

    def _positives(self, features: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor | None]:
        """``[Q]`` positive item indices and, with ``targets = "all_positions"``, the ``[b, L]`` mask of
        the history positions they belong to (None: one positive per example, its ``item_idx``).

        Position ``j`` of a history (most recent first) predicts the item just newer than it: the
        example's ``item_idx`` for ``j = 0``, ``hist_idx[:, j - 1]`` otherwise.
        """
        item_idx = tf.cast(features["item_idx"], tf.int64)
        if self.targets == "last":
            return item_idx, None
        hist = tf.cast(features["hist_idx"], tf.int64)
        targets = tf.concat([item_idx[:, None], hist[:, :-1]], axis=1)
        pick = hist >= 0
        return tf.boolean_mask(targets, pick), pick

    def _queries(
        self,
        item_matrix: tf.Tensor,
        features: Mapping[str, tf.Tensor],
        hist: tf.Tensor,
        pick: tf.Tensor | None,
        training: bool,
    ) -> tf.Tensor:
        """``[Q, d]`` training queries: one per example, or one per picked history position."""
        if pick is None:
            return self.query_tower(item_matrix, features["user_idx"], hist, features["hist_pos"], training=training)
        q, _ = self.query_tower.position_queries(
            item_matrix, features["user_idx"], hist, features["hist_pos"], training=training
        )
        return tf.boolean_mask(q, pick)

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        pos_idx, pick = self._positives(features)
        n_pos = tf.shape(pos_idx)[0]
        if self.softmax == "full":
            # every catalog item is a candidate, in index order: the positive's label is its index
            cand_idx = tf.range(self.num_items, dtype=tf.int64)
        else:
            cand_idx = pos_idx
            if self.mixed_negatives > 0:
                extra = self._rng.uniform((self.mixed_negatives,), 0, self.num_items, dtype=tf.int64)
                cand_idx = tf.concat([pos_idx, extra], axis=0)
        if self.history_encoding == "live":
            rows, cand_rows, local_hist, tokens, mask = self._live_rows(features, cand_idx, training)
            candidates = tf.gather(rows, cand_rows)
            query = self._queries(rows, features, local_hist, pick, training)
        else:
            query = self._queries(self.memory_bank, features, features["hist_idx"], pick, training)
            candidates, tokens, mask = self._encode(cand_idx, training)
        if self._item_scale is not None:
            # popularity prior: candidates are scored by q . v * (1 + γ·log(1 + count)); the
            # auxiliary losses below score the plain modality tokens
            candidates = candidates * tf.gather(self._item_scale, cand_idx)[:, None]
        prob = None
        if self.logq_correction and self.softmax == "sampled":
            # expected count of each candidate in the pool: positives (Q * p) + uniform (M / N) ...
            count = tf.cast(n_pos, tf.float32) * tf.gather(self._item_prob, cand_idx) + float(
                self.mixed_negatives
            ) / float(self.num_items)
            # ... divided by the pool's largest: TFRS clips the probability to [1e-6, 1], which would
            # flatten the correction of every item expected more than once per batch (on the sample,
            # the 17 most popular items at batch 256); a common factor cancels in the softmax.
            prob = count / tf.reduce_max(count)
        loss = self._retrieval_loss(query, candidates, prob, cand_idx, labels=pos_idx)
        if tokens is not None and mask is not None:
            normalize = bool(self.candidate_tower.cfg.model.normalize)  # a CandidateTower: it has tokens
            for m in range(self.aux_modalities):
                present = mask[:, m]
                token = tf.math.l2_normalize(tokens[:, m], axis=-1) if normalize else tokens[:, m]
                token = token * present[:, None]  # an absent modality scores 0, not its zero-input encoding
                # the positives' presence: the first Q candidates (sampled) or the positives' rows (full)
                weight = tf.gather(present, pos_idx) if self.softmax == "full" else present[:n_pos]
                loss += self.modality_loss_weight * self._retrieval_loss(
                    query, token, prob, cand_idx, sample_weight=weight, labels=pos_idx
                )
        return loss

    def _retrieval_loss(
        self,
        query: tf.Tensor,
        candidates: tf.Tensor,
        prob: tf.Tensor | None,
        cand_idx: tf.Tensor,
        sample_weight: tf.Tensor | None = None,
        labels: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Summed softmax cross-entropy of each query against the candidate pool.

        ``sampled``: TFRS's in-batch loss (query ``i``'s positive is candidate ``i``; logQ correction
        and accidental-hit removal). ``full``: the candidates are the whole catalog in index order and
        ``labels`` are the positives' indices (nothing is sampled, so nothing is corrected).
        """
        if self.softmax == "full":
            logits = tf.matmul(query, candidates, transpose_b=True) / self.temperature
            per_query = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            if sample_weight is not None:
                per_query = per_query * tf.cast(sample_weight, per_query.dtype)
            return tf.reduce_sum(per_query)
        return self.task(
            query,
            candidates,
            sample_weight=sample_weight,
            candidate_sampling_probability=prob,
            candidate_ids=cand_idx,
            compute_metrics=False,
            compute_batch_metrics=False,
        )

    def _live_rows(
        self, features: Mapping[str, tf.Tensor], cand_idx: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
        """ONE candidate-tower pass over the batch's unique items (candidates and history items).

        Returns the encoded rows, the candidates' row numbers, the history remapped to those rows
        (``-1`` padding kept), and the candidates' content tokens and mask when the auxiliary loss is
        on. The history is read from the same rows, so the query tower's pooling is differentiable
        with respect to the item representations. With ``live_history_items > 0`` at most that many
        history-only items (drawn at random each step) are encoded live; the rest of the history
        reads the memory bank (no gradient), which bounds the per-step cost of expensive item towers
        on large catalogs.
        """
        hist = tf.cast(features["hist_idx"], tf.int64)
        valid = hist >= 0
        n_cand = tf.shape(cand_idx)[0]
        uniq, inv = tf.unique(tf.concat([cand_idx, tf.boolean_mask(hist, valid)], axis=0), out_idx=tf.int64)
        if self.live_history_items > 0:
            # tf.unique keeps first occurrences in order: the candidates' unique items come first
            n_uc = tf.size(tf.unique(cand_idx)[0])
            extra = tf.size(uniq) - n_uc
            keep = tf.minimum(extra, self.live_history_items)
            picked = n_uc + tf.argsort(self._rng.uniform((extra,)))[:keep]  # a random `keep` of them
            live_pos = tf.concat([tf.range(n_uc), picked], axis=0)
            live_rows, tokens, mask = self._encode(_bucketed(tf.gather(uniq, live_pos)), training)
            bank_rows = tf.stop_gradient(tf.gather(self.memory_bank, uniq))
            rows = tf.tensor_scatter_nd_update(bank_rows, live_pos[:, None], live_rows[: tf.size(live_pos)])
        else:
            # the rows past the unique items (bucket padding) are encoded but never read
            rows, tokens, mask = self._encode(_bucketed(uniq), training)
        cand_rows = inv[:n_cand]
        if tokens is not None and mask is not None:
            # the candidates' unique items are the first rows of both the live and the all-live pass
            tokens, mask = tf.gather(tokens, cand_rows), tf.gather(mask, cand_rows)
        local_hist = tf.tensor_scatter_nd_update(
            tf.fill(tf.shape(hist), tf.constant(-1, tf.int64)), tf.where(valid), inv[n_cand:]
        )
        return rows, cand_rows, local_hist, tokens, mask

    def _live_towers(
        self, features: Mapping[str, tf.Tensor], cand_idx: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
        """One query per example and the candidates' embeddings (plus tokens and mask), from one live pass."""
        rows, cand_rows, local_hist, tokens, mask = self._live_rows(features, cand_idx, training)
        return self._queries(rows, features, local_hist, None, training), tf.gather(rows, cand_rows), tokens, mask

    def get_config(self) -> dict[str, Any]:  # pragma: no cover - not serialised as a whole
        raise NotImplementedError("TwoTowerModel is saved as a tf.train.Checkpoint of its towers")


def _bucketed(idx: tf.Tensor) -> tf.Tensor:
    """``idx`` ``[n]`` padded with index 0 to a bucketed length: the next multiple of 2**(floor(log2 n) - 3)
    (at least 8), at most 1/8 more rows.

    A batch's unique items are a different count every step; oneDNN (TensorFlow's CPU kernels) builds
    and caches a matmul primitive per input shape, up to 1,024 per thread, so over an epoch the candidate
    tower's varying shapes grew the process by hundreds of MB (bench/README.md, "The real commands at
    2M, 5M and 20M interactions"). Bucketed, a run sees at most eight shapes per doubling of ``n``.
    """
    n = tf.size(idx)
    octave = tf.cast(tf.math.floor(tf.math.log(tf.cast(tf.maximum(n, 1), tf.float32)) / math.log(2.0)), tf.int32)
    step = tf.bitwise.left_shift(1, tf.maximum(octave - 3, 3))
    padded = (n + step - 1) // step * step
    return tf.pad(idx, [[0, padded - n]])
