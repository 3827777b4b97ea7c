"""What a Recommender reports about the bundle it serves (``Info`` RPCs, ``recfuse recommend --json``).

Example:
    >>> info = bundle_info(load_bundle("bundles/attention"), max_k=1000, category_count=12)  # doctest: +SKIP
    >>> info.search_params                                                                # doctest: +SKIP
    'efSearch=48 (tuned to 0.95)'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recfuse.bundle import LoadedBundle
from recfuse.index import ItemIndex
from recfuse.index.served import tunable_param
from recfuse.inference.types import BundleInfo


def bundle_info(bundle: LoadedBundle, max_k: int, category_count: int, new_item_slots: str = "") -> BundleInfo:
    """The :class:`BundleInfo` of a loaded bundle, served with request limit ``max_k`` (``new_item_slots``:
    the Recommender's :meth:`~recfuse.inference.new_items.NewItemSlots.describe`, "" when off)."""
    m = bundle.manifest
    served = m.get("served_recall") or {}
    head = _head(bundle)
    params = search_params_text(bundle.index, served, m.get("index_choice"))
    return BundleInfo(
        variant=bundle.variant,
        version=bundle.version,
        model_id=bundle.model_id,
        created_at=str(m["created_at"]),
        item_count=int(m["item_count"]),
        user_count=len(bundle.user_vocab),
        dim=bundle.dim,
        metric=str(m["metric"]),
        index_factory=str(m["index_factory"]),
        ann_recall=None if m["ann_recall"] is None else float(m["ann_recall"]),
        format_version=int(m["format_version"]),
        recfuse_version=str(m["recfuse_version"]),
        path=str(bundle.path),
        max_k=max_k,
        category_count=category_count,
        served_recall=None if served.get("recall") is None else float(served["recall"]),
        served_recall_queries=str(served.get("queries", "")),
        # the head is part of the ranking in force: Info shows it in search_params, as the factory choice
        search_params="; ".join(t for t in (params, head and f"item head {head}", new_item_slots) if t),
        item_head=head,
    )


def search_params_text(
    index: ItemIndex, served: Mapping[str, Any], choice: Mapping[str, Any] | None = None
) -> str:
    """``efSearch=48 (tuned to 0.95)``-style text of the search parameters in force ("" for exact),
    naming the factory choice when export made one."""
    param = tunable_param(index)
    if not param:
        return _chosen(choice).removeprefix("; ")
    ef, nprobe = index.config.search_params()
    text = f"efSearch={ef}" if param == "ef_search" else f"nprobe={nprobe}"
    return text + (f" (tuned to {served.get('target')})" if served.get("tuned") else "") + _chosen(choice)


def _head(bundle: LoadedBundle) -> str:
    """``itemknn beta=0.37 nnz=12000, re-rank of k+200`` for a bundle with an item-item head
    ("" without one; ``(inactive)`` when its beta or weights are 0, so it changes no ranking)."""
    head = bundle.item_head
    if head is None:
        return ""
    text = f"{head.method} beta={head.beta:.4g} nnz={head.weights.nnz}"
    decay = float(getattr(head, "decay", 1.0))  # history weights decay ** position (1: the whole profile alike)
    text += f" decay={decay:.4g}" if decay != 1.0 else ""
    return text + (f", re-rank of k+{bundle.item_head_candidates}" if head.active else " (inactive)")


def _chosen(choice: Mapping[str, Any] | None) -> str:
    """``; factory auto: chosen of 3 candidate(s)`` when export chose the factory by measurement."""
    return f"; factory auto: chosen of {len(choice['candidates'])} candidate(s)" if choice else ""
