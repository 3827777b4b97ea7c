"""``[item_head]``: the item-item head blended into the model's ranking (:mod:`recfuse.itemitem`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from recfuse.config.checks import check_choice, check_range
from recfuse.errors import ConfigError

ITEM_HEAD_METHODS = ("none", "ease", "itemknn", "sequential")
HEAD_SELECT_METRICS = ("ndcg@10", "recall@10", "hit@10", "ndcg@20", "recall@20", "hit@20")


@dataclass(frozen=True)
class ItemHeadConfig:
    """The item-item head: ``score = model score + beta * sum of W[history item, item]``.

    Fitted by ``recfuse train`` after the towers, on the training interactions; every choice below
    is made on the validation split (never on test), and ``beta`` = 0 is always a candidate, so the
    head is kept only where it ranks the validation users better. It is stored in the model
    directory and in each bundle, and the server applies it (a re-rank of the index's candidates
    and the history items' neighbours). On random per-user splits of real data it is what lifts
    recfuse above EASE; its interaction weights add nothing to items without training
    interactions (cold items), so measure the cold segment too (docs/decisions.md, "Item-item
    head"). The content term (``content_modality``) adds each item's nearest items by content.

    Attributes:
        method: ``"none"`` (no head), ``"ease"`` (EASE^R weights; one dense ``m x m`` float32 inverse
            per lambda, ``m`` = items with training interactions), ``"itemknn"`` (cosine
            neighbours; sparse, for catalogs too large for EASE) or ``"sequential"`` (which items
            followed which: for ordered, next-item data).
        ease_lambdas: EASE L2 weights tried; the best on validation (head alone) is kept.
        knn_neighbors: item-kNN neighbourhood sizes tried; the best on validation is kept.
        seq_windows: ``"sequential"`` (sequential rules: ``W[i, j]`` sums ``1 / gap`` over the times
            ``j`` followed ``i`` within the window in a user's training sequence) windows tried.
        history_decays: a history item weighs ``decay ** position`` (0 = most recent) in the head;
            each value is tried with each weight setting (1 weighs the whole profile alike).
        keep: weights kept per history item (the largest ones): bounds the head's size
            (``n * keep`` entries) and its serving cost.
        betas: multipliers tried for ``beta``, relative to the ratio of the model's score spread
            to the head's on validation users (so the grid fits any temperature); 0 is always tried.
        select_metric: the validation metric every choice maximises.
        max_val_users: validation users the choices are measured on (a seeded sample above it).
        candidates: served re-rank: the index's top ``k + candidates`` items and the history items'
            strongest ``candidates`` neighbours are scored exactly, the best ``k`` returned.
        ease_max_items: refuse EASE above this many items with interactions (memory ``4 m^2`` bytes).
        content_modality: name of a modality with a vector source (``kind = "vector"``, or text /
            image with ``source = "vector"``): each item's ``content_neighbors`` nearest items by
            cosine of its vectors join the head as a second term, ``content_beta * sum of C[history
            item, item]``, stored folded into ``W``. Empty: no content term. It needs no
            interaction, so items without training interactions get scores from it too.
        content_neighbors: neighbours kept per item in the content term.
        content_betas: multipliers tried for ``content_beta`` (relative to the model's score spread
            over the content term's, as ``betas``), with ``beta`` already chosen; 0 is always tried.
        content_max_items: refuse the content term above this many catalog items (its exact
            neighbour search costs ``n^2 * dim`` multiply-adds).
        ease_content_alphas: ``alpha`` values tried (with each lambda) for EASE with side
            information: the Gram matrix gains ``alpha`` times the items' cosines of
            ``content_modality`` (``X^T X + alpha U U^T``, ``U`` the unit vectors), so items with
            similar content share weights where co-occurrence is thin, and items with content but
            no interaction get weights. 0 is plain EASE; a value above 0 needs ``method = "ease"``
            and ``content_modality``, and each costs one more inverse.
    """

    method: str = "none"
    ease_lambdas: tuple[float, ...] = (100.0, 300.0)
    knn_neighbors: tuple[int, ...] = (20, 50, 100, 200)
    seq_windows: tuple[int, ...] = (1, 2, 5)
    history_decays: tuple[float, ...] = (1.0, 0.7, 0.4)
    keep: int = 200
    betas: tuple[float, ...] = (0.03, 0.06, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    select_metric: str = "ndcg@10"
    max_val_users: int = 5000
    candidates: int = 200
    ease_max_items: int = 50_000
    content_modality: str = ""
    content_neighbors: int = 100
    content_betas: tuple[float, ...] = (0.02, 0.04, 0.08, 0.16)
    content_max_items: int = 200_000
    ease_content_alphas: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        check_choice("item_head", "method", self.method, ITEM_HEAD_METHODS)
        check_choice("item_head", "select_metric", self.select_metric, HEAD_SELECT_METRICS)
        for name, values in (("ease_lambdas", self.ease_lambdas), ("betas", self.betas),
                             ("content_betas", self.content_betas)):  # fmt: skip
            if not values or any(not (math.isfinite(v) and v > 0) for v in values):
                raise ConfigError(f"`item_head.{name}` must be a non-empty list of finite numbers > 0, got {values}")
        for name, ints in (("knn_neighbors", self.knn_neighbors), ("seq_windows", self.seq_windows)):
            if not ints or any(int(v) != v or v < 1 for v in ints):
                raise ConfigError(f"`item_head.{name}` must be a non-empty list of integers >= 1, got {ints}")
        if not self.history_decays or any(not (math.isfinite(v) and 0 < v <= 1) for v in self.history_decays):
            raise ConfigError(
                f"`item_head.history_decays` must be a non-empty list of numbers in (0, 1], got {self.history_decays}"
            )
        alphas = self.ease_content_alphas
        if not alphas or any(not (math.isfinite(v) and v >= 0) for v in alphas):
            raise ConfigError(
                f"`item_head.ease_content_alphas` must be a non-empty list of finite numbers >= 0, got {alphas}"
            )
        if max(alphas) > 0 and (self.method != "ease" or not self.content_modality):
            raise ConfigError(
                f"`item_head.ease_content_alphas` = {alphas} puts content into EASE's Gram matrix, so it needs "
                f"method = 'ease' and a content_modality (got method {self.method!r}, content_modality "
                f"{self.content_modality!r}): set them, or ease_content_alphas = [0.0]"
            )
        for name in ("keep", "max_val_users", "candidates", "ease_max_items", "content_neighbors", "content_max_items"):
            check_range("item_head", name, getattr(self, name), lo=1)

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def choice_grids(self) -> dict[str, tuple[float, ...]]:
        """The grids validation chooses from for ``method``: ``{field name: values}``."""
        weights = {"ease": "ease_lambdas", "itemknn": "knn_neighbors", "sequential": "seq_windows"}.get(self.method)
        names = ([weights] if weights else []) + ["history_decays", "betas"]
        names += ["content_betas"] if self.content_modality else []
        names += ["ease_content_alphas"] if self.content_modality and self.method == "ease" else []
        return {name: tuple(float(v) for v in getattr(self, name)) for name in names}
