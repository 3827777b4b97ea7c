"""New-item slots as served: a share of each model ranking held for items the model never trained on.

A bundle's new items are the rows with no training interactions: absent from (or 0 in) its
popularity table: cold items of the training split and every item added with ``add-items``. The
share is ``model.new_item_share`` of the bundle's config (0: off), or the Recommender's override.

:class:`NewItemSlots` runs after the index search (and after the item-item head's re-rank): the
search answers each model query with its top ``k``; when the new items in it fall behind the quota
(:func:`recfuse.new_item_slots.quota`) at some position, the new items are scored exactly (``q . v``
over the new rows' ranked vectors, the query's exclusions and allow-list applied) and the two
streams are merged by :func:`recfuse.new_item_slots.merge_new_items`: the ranking evaluation
measures (:func:`recfuse.evaluation.fullrank.evaluate_model` with the same share). A query whose
list meets the quota on its own is returned unchanged, at the cost of one lookup per returned row.

Example:
    >>> slots = NewItemSlots.from_bundle(bundle, bundle.ranked_vectors)        # doctest: +SKIP
    >>> results = slots.apply(query_vectors, plans, searcher.search(query_vectors, plans))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recfuse.bundle import LoadedBundle
from recfuse.index import SearchResult
from recfuse.inference.plan import QueryPlan
from recfuse.inference.search import Found
from recfuse.new_item_slots import check_share, merge_new_items, quota
from recfuse.types import FloatArray


def bundle_new_items(bundle: LoadedBundle) -> npt.NDArray[np.bool_]:
    """``[n]`` True for the bundle's rows with no training interactions (0 or absent in its popularity)."""
    pop = bundle.popularity
    trained = set(pop.loc[pop["count"].to_numpy() > 0, "item_id"].astype(str))
    return np.fromiter((i not in trained for i in bundle.item_ids), dtype=bool, count=len(bundle.item_ids))


def bundle_share(bundle: LoadedBundle) -> float:
    """``model.new_item_share`` of the bundle's training config (0 for bundles written before it existed)."""
    model = bundle.config.get("model", {}) if isinstance(bundle.config, dict) else {}
    return check_share(float(model.get("new_item_share", 0.0) or 0.0))


class NewItemSlots:
    """Hold ``share`` of each model ranking for the best new items.

    Args:
        vectors: ``[n, d]`` the vectors the index ranks (ranked vectors: × each item's factor).
        is_new: ``[n]`` True for new items.
        share: the share of positions held (``0 < share < 1``).
        metric: the index metric, ``ip`` (scores: higher is better) or ``l2`` (squared distances,
            lower is better; new items are scored the same way).
    """

    def __init__(self, vectors: FloatArray, is_new: npt.NDArray[np.bool_], share: float, metric: str = "ip") -> None:
        share = check_share(share)
        if share == 0:
            raise ValueError("`share` must be > 0 for NewItemSlots (0 means no slots: build none)")
        is_new = np.asarray(is_new, dtype=bool)
        if is_new.shape != (len(vectors),):
            raise ValueError(f"`is_new` must have one flag per vector row ({len(vectors)}), got shape {is_new.shape}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"`metric` must be 'ip' or 'l2', got {metric!r}")
        self.share = share
        self.is_new = is_new
        self.rows = np.flatnonzero(is_new).astype(np.int64)
        self.vectors = np.ascontiguousarray(vectors[self.rows], dtype=np.float32)
        self.sq_norms = (self.vectors**2).sum(axis=1)
        self.sign = np.float32(1.0 if metric == "ip" else -1.0)  # merge on "higher is better"
        self.metric = metric

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle, vectors: FloatArray, share: float | None = None) -> NewItemSlots | None:
        """The bundle's slots (``share`` None: its ``model.new_item_share``); None when off or no item is new."""
        share = bundle_share(bundle) if share is None else check_share(share)
        if share == 0:
            return None
        is_new = bundle_new_items(bundle)
        if not is_new.any():
            return None
        return cls(vectors, is_new, share, bundle.index_config.metric)

    def describe(self) -> str:
        """``share 0.1 of each ranking held for 312 new items`` (``Info``'s search parameters)."""
        return f"new-item slots: share {self.share:g} of each ranking held for {len(self.rows)} new items"

    def apply(self, queries: FloatArray, plans: Sequence[QueryPlan], results: Sequence[Found]) -> list[Found]:
        """The results with new-item slots: one ``SearchResult`` per plan, best first, ``<= plan.k`` rows.

        Args:
            queries: ``[b, d]`` the model queries' vectors.
            plans: their plans (``k``, exclusions, allow-list).
            results: what the search (and the head's re-rank) answered, catalog rows.
        """
        return [self._one(queries[j], p, res) for j, (p, res) in enumerate(zip(plans, results))]

    def _one(self, query: FloatArray, plan: QueryPlan, res: Found) -> Found:
        need = quota(plan.k, self.share)
        if need[-1] == 0:
            return res
        ids = np.asarray(res.ids, np.int64)
        new_in = self.is_new[ids]
        have = np.cumsum(new_in)
        if len(ids) == plan.k and (have >= need[: len(ids)]).all():
            return res  # the list meets the quota on its own
        cand = self._new_candidates(query, plan)
        if not len(cand[0]):
            return res
        warm_ids, warm_sc = ids[~new_in], np.asarray(res.scores, np.float32)[~new_in] * self.sign
        new_ids, new_sc = cand
        out_ids, out_sc = merge_new_items(
            warm_ids[None], warm_sc[None], new_ids[None], new_sc[None], plan.k, self.share
        )
        keep = out_ids[0] >= 0
        return SearchResult((out_sc[0][keep] * self.sign).astype(np.float32), out_ids[0][keep])

    def _new_candidates(self, query: FloatArray, plan: QueryPlan) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """The best ``plan.k`` new rows passing the plan's filters and their scores (× sign), best first."""
        scores = self.vectors @ query
        if self.metric == "l2":
            scores = -(self.sq_norms - 2 * scores + float(query @ query))
        ok = np.ones(len(self.rows), bool)
        if plan.allow is not None:
            ok &= np.isin(self.rows, plan.allow)
        if len(plan.exclude):
            ok &= ~np.isin(self.rows, plan.exclude)
        pos = np.flatnonzero(ok)
        if len(pos) > plan.k:
            part = np.argpartition(-scores[pos], plan.k - 1)[: plan.k]
            pos = pos[part]
        order = np.lexsort((self.rows[pos], -scores[pos]))
        pos = pos[order]
        return self.rows[pos], scores[pos].astype(np.float32)
