"""Real bundles from random-but-structured arrays, for tests and benchmarks of every area.

Items belong to clusters ("categories" ``c0..c{C-1}``; item ``i`` is in ``c{i % C}``, about a third
also carry a tag ``t{j}``); item vectors are unit vectors near their category's centre. Users ``u{j}``
each like one category and have a history (most recent first) drawn from it; popularity counts
come from those histories. The query tower is a real :class:`NumpyQueryTower` whose MLP passes the
attention-pooled history through almost unchanged, so a history inside category ``c`` yields
recommendations from ``c`` — tests can assert on meaning, not just on shapes.

Everything is written through :func:`recfuse.bundle.write_bundle` (FAISS index, manifest,
checksums, ``CURRENT``), so the result is exactly what ``recfuse export`` produces, minus ``model/``.

Example:
    >>> path = make_bundle(tmp_path / "bundles", n_items=300, dim=16)     # doctest: +SKIP
    >>> Recommender.from_bundle(path).recommend(user_id="u1", k=5)         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.bundle import BundleContents, write_bundle
from recfuse.config import FUSIONS, BundleConfig, IndexConfig, ModelConfig, RecfuseConfig
from recfuse.data.vocab import IdVocab
from recfuse.forward.query import NumpyQueryTower


def item_category(i: int, n_categories: int = 8) -> str:
    """The main category of item row ``i`` in a factory bundle."""
    return f"c{i % n_categories}"


def make_tower(dim: int, n_user_rows: int | None, seed: int = 0, user_dim: int = 8) -> NumpyQueryTower:
    """A real numpy query tower: attention pooling + one linear layer ≈ identity on the pooled history."""
    rng = np.random.default_rng(seed)
    hidden = 16
    f32 = np.float32
    in_dim = dim + (user_dim if n_user_rows else 0) + 1
    w = np.zeros((in_dim, dim), f32)
    w[:dim] = np.eye(dim, dtype=f32)
    if n_user_rows:
        w[dim : dim + user_dim] = 0.03 * rng.standard_normal((user_dim, dim)).astype(f32)
    return NumpyQueryTower(
        attn_w=(0.1 * rng.standard_normal((dim, hidden))).astype(f32),
        attn_b=np.zeros(hidden, f32),
        attn_v=(0.1 * rng.standard_normal(hidden)).astype(f32),
        recency=-0.1,
        mlp=((w, np.zeros(dim, f32)),),
        user_embedding=None if not n_user_rows else rng.standard_normal((n_user_rows, user_dim)).astype(f32),
        normalize=True,
    )


def make_contents(
    n_items: int = 500,
    dim: int = 16,
    variant: str = "attention",
    seed: int = 0,
    *,
    n_users: int | None = None,
    n_categories: int = 8,
    factory: str = "Flat",
    user_embedding: bool = True,
    max_history: int = 20,
    index_cfg: IndexConfig | None = None,
    model_id: str | None = None,
) -> BundleContents:
    """The :class:`BundleContents` that :func:`make_bundle` writes (for tests that tweak it first)."""
    rng = np.random.default_rng(seed)
    n_users = n_users if n_users is not None else max(20, n_items // 5)
    centres = rng.standard_normal((n_categories, dim)).astype(np.float32)
    cat_of = np.arange(n_items) % n_categories
    vecs = centres[cat_of] + 0.35 * rng.standard_normal((n_items, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    item_ids = [f"i{i}" for i in range(n_items)]
    tags = rng.integers(0, 4, n_items)
    has_tag = rng.random(n_items) < 0.33
    categories = [[f"c{c}", f"t{t}"] if h else [f"c{c}"] for c, t, h in zip(cat_of, tags, has_tag)]
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": [f"Item {i} ({item_category(i, n_categories)})" for i in range(n_items)],
            "categories": categories,
        }
    )
    users = [f"u{j}" for j in range(n_users)]
    likes = rng.integers(0, n_categories, n_users)
    per_cat = [np.flatnonzero(cat_of == c) for c in range(n_categories)]
    lengths = rng.integers(3, 16, n_users)
    history: dict[str, list[str]] = {}
    counts = np.zeros(n_items, np.int64)
    for u, c, n_h in zip(users, likes, lengths):
        pool = per_cat[c]
        rows = rng.choice(pool, size=min(int(n_h), len(pool)), replace=False) if len(pool) else np.zeros(0, int)
        history[u] = [item_ids[r] for r in rows]
        counts[rows] += 1
    popularity = {item_ids[r]: int(counts[r]) for r in np.flatnonzero(counts)}
    user_vocab = IdVocab(tuple(users), num_oov=4)
    fusion = variant if variant in FUSIONS else "attention"
    cfg = RecfuseConfig(model=ModelConfig(dim=dim, fusion=fusion), bundle=BundleConfig(variant=variant))
    cfg = cfg.with_overrides({"data.max_history": max_history})
    all_cats = sorted({c for cs in categories for c in cs})
    return BundleContents(
        variant=variant,
        model_id=model_id or f"random-seed{seed}",
        item_ids=item_ids,
        item_vectors=vecs,
        items=items,
        query_tower=make_tower(dim, user_vocab.size if user_embedding else None, seed=seed + 1),
        user_vocab=user_vocab,
        category_vocab=IdVocab(tuple(all_cats), num_oov=1),
        popularity=popularity,
        user_history=history,
        config=cfg.to_dict(),
        index_config=index_cfg or IndexConfig(factory=factory, recall_queries=min(50, n_items)),
    )


def make_bundle(
    root: str | Path,
    n_items: int = 500,
    dim: int = 16,
    variant: str = "attention",
    seed: int = 0,
    version: str | None = None,
    **kwargs: object,
) -> Path:
    """Write a real random-but-structured bundle under ``root`` and publish it.

    Args:
        root: bundles root; the bundle goes to ``root/<variant>/<version>`` and ``CURRENT`` points to it.
        n_items: catalog size (items ``i0..i{n-1}``).
        dim: embedding dim.
        variant: variant directory name.
        seed: everything is a function of the seed.
        version: version directory name (default: time-based, sortable).
        **kwargs: forwarded to :func:`make_contents` (``n_users``, ``n_categories``, ``factory``,
            ``user_embedding``, ``max_history``, ``index_cfg``, ``model_id``) plus
            ``keep_versions`` for :func:`write_bundle`.

    Returns:
        The published version directory.
    """
    keep = kwargs.pop("keep_versions", None)
    contents = make_contents(n_items, dim, variant, seed, **kwargs)  # type: ignore[arg-type]
    return write_bundle(root, contents, version=version, keep_versions=keep)  # type: ignore[arg-type]


def oracle_scores(bundle, user: str | None, history: list[str]) -> tuple[list[int], np.ndarray]:  # type: ignore[no-untyped-def]
    """By hand, what a served query scores: the history rows (request ids first, then the stored
    history, repeats dropped, cut to the manifest's ``max_history``) and ``ranked_v . q`` of every
    item, ``q`` from the numpy tower (the head and filters are the caller's)."""
    b = bundle
    stored = dict(zip(b.user_history["user_id"], b.user_history["items"])).get(user, []) if user else []
    merged: list[str] = []
    for i in [h for h in history if h in b.item_ids] + list(stored):
        if i not in merged:
            merged.append(i)
    hist = [b.item_ids.index(i) for i in merged[: int(b.manifest["max_history"])]]
    rows = np.full((1, 20), -1, np.int64)
    rows[0, : len(hist)] = hist
    user_idx = np.array([b.user_vocab.lookup_one(user) if user else 0])
    q = b.query_tower.encode(b.item_vectors, user_idx, rows)[0]
    return hist, (b.ranked_vectors @ q).astype(np.float32)
