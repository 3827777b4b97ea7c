"""``[model]``: the two-tower architecture, its fusion and its retrieval loss."""

from __future__ import annotations

from dataclasses import dataclass

from recfuse.config.checks import check_choice, check_range
from recfuse.errors import ConfigError

FUSIONS = ("concat", "weighted", "max", "gated", "attention")
ALIGNMENTS = ("linear", "mlp", "scale")
#: Upper bound of ``model.item_id_buckets`` / ``model.user_id_buckets`` (a table of 2^31 rows is a typo).
MAX_ID_BUCKETS = 2**31 - 1


def default_attention_heads(dim: int) -> int:
    """Heads of the attention fusion when ``model.attention_heads`` is unset: ``dim // 16`` in [2, 4]."""
    return max(2, min(4, int(dim) // 16))


def check_buckets(name: str, value: object, table: bool | str, table_key: str) -> None:
    """``model.<name>``: a hashed id table's row count, an int >= 0 (0: off), and only with its table on."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID_BUCKETS:
        raise ConfigError(
            f"`model.{name}` must be an integer in [0, {MAX_ID_BUCKETS}] (rows of the hashed id table; 0: one "
            f"row per id), got {value!r}"
        )
    if value and table is False:
        raise ConfigError(
            f"`model.{name}` = {value} has no effect with `model.{table_key}` = false (there is no id table "
            f"to hash into); set it to 0, or enable `model.{table_key}`"
        )


@dataclass(frozen=True)
class ModelConfig:
    """Two-tower architecture: alignment, fusion and the retrieval loss.

    Attributes:
        dim: shared embedding dimension ``d`` of both towers.
        fusion: fusion variant name (see :data:`FUSIONS`).
        alignment: projection of each modality into the shared space.
        normalize: L2-normalise both towers' output embeddings (the inner product is then the cosine).
        normalize_tokens: L2-normalise each aligned modality token before fusion (keeps modalities on one scale).
        weighted_lambda: λ of the ``weighted`` fusion, Z = (1−λ)·image + λ·others.
        learn_lambda: ``weighted`` fusion: learn λ (initialised at ``weighted_lambda``) or keep it fixed.
        modality_dropout: probability of masking each present modality per item while training.
        item_id_embedding: give each catalog item a learned id embedding, one more token of the item
            tower (present for items with training interactions only, so cold items are embedded from
            content).
        item_id_dropout: probability of hiding the item-id embedding while training (cold-start robustness).
        item_id_buckets: ``B`` > 0 hashes item ids into a ``B``-row item-id table, item ``i``
            reading row ``crc32(i) % B``; 0 (the default) keeps one row per catalog item. With
            buckets (:func:`recfuse.data.vocab.hash_buckets`) the table no longer grows with the
            catalog; items in one bucket share its row (their content tokens still tell them apart).
            Only warm items read it, as without buckets: an item added after training has a bucket
            but, having no training interactions, is embedded from content. See docs/model.md.
        user_id_embedding: give each training user an embedding row in the query tower (``true``), or
            build the query from the history alone (``false``). ``"auto"`` (the default) decides at
            training from the training split: on when the median user has at least
            :data:`recfuse.training.checks.SPARSE_USERS_MEDIAN` (10) distinct training items, off
            below. A user-id row learns only from its own user's targets, so with a handful of them it
            overfits. The model directory stores the resolved value.
        user_oov_buckets: hashed query-tower rows shared by users outside the training vocabulary
            (anonymous and new users), trained through ``train.user_dropout``. Unused when
            ``user_id_buckets`` > 0.
        user_id_buckets: ``B`` > 0 hashes every user id into a ``B``-row user-id table, row
            ``crc32(user_id) % B``, with no per-user rows; 0 (the default) keeps one row per training
            user plus ``user_oov_buckets`` rows for the others. With buckets a user seen in training
            and one never seen map alike, in training and in serving (the user vocabulary is stored
            as ``B`` hash buckets and no ids). A user's stored history is still read at serving; the
            user-id row it adds is its bucket's, shared with the other users hashed there. Needs a
            user-id table (``user_id_embedding`` true, or ``"auto"``, which drops the buckets when
            it turns the table off).
        query_hidden: widths of the query tower's ReLU hidden layers after the history summary.
        fusion_hidden: hidden widths of the ``concat`` fusion's MLP and of the ``attention`` fusion's
            feed-forward net.
        contrastive_weight: weight of the InfoNCE image–text alignment loss (0 disables it).
        modality_loss_weight: weight of the per-modality auxiliary retrieval losses (0 disables
            them): each content modality's aligned token is also scored alone against the query
            with the main loss, so that a fast-learning branch cannot leave the others untrained
            (see :mod:`recfuse.models.two_tower`). Ignored for a tower with a single token.
            Default 0.1.
        attention_heads: heads of the ``attention`` fusion. Each head pools the modality tokens with
            its own softmax, so with fewer heads than tokens the fused embedding is a blend of at
            most that many weightings. Unset, it resolves to ``dim // 16`` clamped to [2, 4] (and
            is stored resolved): 4 at the default ``dim = 64``, so image, text, categories and one
            more modality can each keep a head, and 2 for ``dim < 48``, where four heads would be
            under 16 dimensions each.
        attention_dropout: dropout on the ``attention`` fusion's attention weights while training
            (:class:`recfuse.layers.fusion.AttentionFusion`'s ``dropout``; default 0: off).
            Inference is unchanged.
        gated_hidden: width of the ``gated`` fusion's token scorer ``v·tanh(W t)``
            (:class:`recfuse.layers.fusion.GatedFusion`'s ``hidden``); 0 (the default) means ``dim``.
        alignment_hidden: hidden width of the ``mlp`` alignment, Dense(ReLU) -> Dense(``dim``)
            (:class:`recfuse.layers.alignment.ModalityProjection`'s ``hidden``); 0 (the default)
            means ``2 * dim``. Ignored by the ``linear`` and ``scale`` alignments.
        attention_layers: Transformer blocks of masked self-attention over the modality tokens before
            the ``attention`` fusion pools them (each modality's token then carries what the others
            say about the item); 0 pools the aligned tokens directly.
        temperature: softmax temperature of the retrieval loss.
        logq_correction: ``sampled`` softmax: subtract each candidate's log sampling probability from its
            logit (corrects the popularity bias of in-batch negatives).
        remove_accidental_hits: ignore in-batch negatives that are the positive item itself.
        mixed_negatives: extra uniformly sampled catalog items per batch (0 disables).
        popularity_prior: γ of a popularity prior trained into the model (0 disables): each item's
            vector is ranked multiplied by ``1 + γ·log(1 + training count)``
            (:func:`recfuse.ranking.popularity_scale`), in the retrieval loss, in validation, in
            evaluation and in the exported index. The query tower still reads history items
            unscaled (unit-norm embeddings cannot hold popularity and taste at once; the prior
            carries popularity). Items with no training interactions (cold items) get
            ``new_item_scale``.
        new_item_scale: the ranking factor of items with no training interactions (cold items and
            items added later with ``add-items``), applied wherever the popularity prior is (the
            evaluation's and the exported index's item vectors; not the loss). Their vectors come
            from content alone and score below warm items' content + id vectors, so among all
            items new items rarely reach a top k; a factor above 1 lifts them. Training is
            unchanged, so it can be set at evaluation or export time.
        new_item_share: the share of every ranking's positions held for new items (no training
            interactions: cold items, items added with ``add-items``): ``floor(p * share)`` of the
            first ``p`` positions go to the best-scoring new items that pass the query's filters,
            when fewer reach them on their own (:mod:`recfuse.new_item_slots`; 0.1 puts a new item
            at position 10 and 20 at the latest). 0 (the default) is off. Applied by evaluation,
            the Recommender and the server (read from the bundle's config); training is unchanged,
            so it can be set at evaluation or export time. Must be in [0, 1).
        query_encoder: how the query tower reads the history (through the item tower's
            embeddings): ``attention`` (additive-attention pooling with a learned recency term,
            order-blind apart from it) or ``transformer`` (a SASRec-style causal self-attention
            encoder with learned position embeddings whose output at the most recent item is the
            history summary; :mod:`recfuse.models.sequence_encoder`). Either way the summary then
            goes through the user-id embedding / MLP / normalisation path.
        query_layers: Transformer blocks of the ``transformer`` query encoder (1-4).
        query_heads: attention heads of the ``transformer`` query encoder; must divide ``dim``.
        query_dropout: dropout of the ``transformer`` query encoder while training (inputs,
            attention and feed-forward outputs).
        softmax: the retrieval loss's candidate pool. ``sampled``: the batch's positives plus
            ``mixed_negatives`` uniform catalog items, logQ-corrected (scales to any catalog).
            ``full``: every catalog item is a candidate in every step (exact softmax, no sampling
            bias and no correction; each step runs the item tower over the whole catalog and holds
            a ``queries × items`` logit matrix, so it suits catalogs up to some 10⁵ items;
            ``mixed_negatives`` must be 0).
    """

    dim: int = 64
    fusion: str = "attention"
    alignment: str = "mlp"
    normalize: bool = True
    normalize_tokens: bool = True
    weighted_lambda: float = 0.5
    learn_lambda: bool = True
    attention_heads: int | None = None
    attention_layers: int = 0
    attention_dropout: float = 0.0
    gated_hidden: int = 0
    alignment_hidden: int = 0
    modality_dropout: float = 0.1
    item_id_embedding: bool = True
    item_id_dropout: float = 0.5
    item_id_buckets: int = 0
    user_id_embedding: bool | str = "auto"
    user_oov_buckets: int = 64
    user_id_buckets: int = 0
    query_hidden: tuple[int, ...] = (128,)
    query_encoder: str = "attention"
    query_layers: int = 2
    query_heads: int = 2
    query_dropout: float = 0.2
    fusion_hidden: tuple[int, ...] = (128,)
    contrastive_weight: float = 0.1
    modality_loss_weight: float = 0.1
    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    mixed_negatives: int = 0
    popularity_prior: float = 0.0
    new_item_scale: float = 1.0
    new_item_share: float = 0.0
    softmax: str = "sampled"

    def __post_init__(self) -> None:
        check_range("model", "popularity_prior", self.popularity_prior, 0.0, 10.0)
        if not (isinstance(self.user_id_embedding, bool) or self.user_id_embedding == "auto"):
            raise ConfigError(
                f'`model.user_id_embedding` must be true, false or "auto", got {self.user_id_embedding!r}'
            )
        check_range("model", "new_item_scale", self.new_item_scale, 0.1, 10.0)
        share = self.new_item_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ConfigError(
                f"`model.new_item_share` must be a number in [0, 1) (the share of ranking positions held for new "
                f"items), got {share!r}; e.g. 0.1 holds 2 of 20 positions, 0 turns it off"
            )
        check_choice("model", "fusion", self.fusion, FUSIONS)
        check_choice("model", "alignment", self.alignment, ALIGNMENTS)
        check_range("model", "dim", self.dim, 2, 4096)
        check_range("model", "weighted_lambda", self.weighted_lambda, 0.0, 1.0)
        check_range("model", "modality_dropout", self.modality_dropout, 0.0, 0.9)
        check_range("model", "item_id_dropout", self.item_id_dropout, 0.0, 1.0)
        check_buckets("item_id_buckets", self.item_id_buckets, self.item_id_embedding, "item_id_embedding")
        check_buckets("user_id_buckets", self.user_id_buckets, self.user_id_embedding, "user_id_embedding")
        check_range("model", "temperature", self.temperature, 1e-4, 10.0)
        check_range("model", "contrastive_weight", self.contrastive_weight, 0.0, 100.0)
        check_range("model", "modality_loss_weight", self.modality_loss_weight, 0.0, 100.0)
        heads = default_attention_heads(self.dim) if self.attention_heads is None else self.attention_heads
        object.__setattr__(self, "attention_heads", heads)
        check_range("model", "attention_heads", heads, 1, 64)
        check_range("model", "attention_layers", self.attention_layers, 0, 8)
        check_range("model", "attention_dropout", self.attention_dropout, 0.0, 0.9)
        check_range("model", "gated_hidden", self.gated_hidden, 0, 65536)
        check_range("model", "alignment_hidden", self.alignment_hidden, 0, 65536)
        check_range("model", "mixed_negatives", self.mixed_negatives, 0, 1_000_000)
        check_choice("model", "query_encoder", self.query_encoder, ("attention", "transformer"))
        check_range("model", "query_layers", self.query_layers, 1, 4)
        check_range("model", "query_heads", self.query_heads, 1, 64)
        check_range("model", "query_dropout", self.query_dropout, 0.0, 0.9)
        check_choice("model", "softmax", self.softmax, ("sampled", "full"))
        if self.softmax == "full" and self.mixed_negatives:
            raise ConfigError(
                f"`model.mixed_negatives` = {self.mixed_negatives} has no effect with `model.softmax` = 'full' "
                "(every catalog item is already a candidate); set it to 0, or use softmax = 'sampled'"
            )
        if self.query_encoder == "transformer" and self.dim % self.query_heads:
            raise ConfigError(
                f"`model.query_heads` = {self.query_heads} must divide `model.dim` = {self.dim} (each head reads "
                f"dim / heads dimensions); choose a divisor of {self.dim}, e.g. "
                f"{max(h for h in range(1, self.query_heads) if self.dim % h == 0)}"
            )
