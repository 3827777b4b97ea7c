"""Recommender.recommend latency (batch 1) split into query tower and search; query-tower engines compared.

Usage::

    OPENBLAS_NUM_THREADS=1 python bench/recommend_bench.py            # 100k items, d=64, Flat + HNSW32
    python bench/recommend_bench.py --quick                           # 20k items
    python bench/recommend_bench.py --bundle bundles/default        # also a real exported bundle
    python bench/recommend_bench.py --query-encoder transformer       # bundles with the transformer tower
    python bench/recommend_bench.py --encoders-only --history 50      # part 3 only
    python bench/recommend_bench.py --quick --item-head               # part 4 only: the item-item head's cost

Part 1 builds (once, cached under ``runs/bench/``) random-but-structured bundles whose query tower is
a real ``recfuse.models.query_tower.QueryTower`` exported to numpy, and times ``Recommender.recommend``
per request kind: p50/p99 of the whole call, and of its ``query_ms`` / ``search_ms`` parts.

Part 2 runs the same query tower, batch 1, five ways — the numpy serving forward
(``QueryEncoder.encode_one``: per-item attention logits precomputed at load), the plain numpy
forward, a ``tf.function`` with an input signature, the TF SavedModel ``serving_default`` signature
(what ``recfuse export`` writes) and the eager Keras layer — checks they agree to 1e-5 and prints
p50/p99 and the ratio to the serving forward.

Part 3 compares the history encoders (``model.query_encoder``) on the serving forward, batch 1, one
history of ``--history`` items (default 50): attention pooling vs the causal ``transformer`` at 1
and 2 blocks, each against its TF ``tf.function`` (p50/p99 and the max abs difference).

Part 4 (``--item-head``) serves the same bundle with and without an item-item head (a synthetic
head: ``--head-keep`` positive weights per history item, within the item's category, as
``[item_head] keep`` bounds a real one; ``--head-candidates`` index candidates beyond ``k``), both
Recommenders over the same loaded index, calls interleaved, and prints p50/p99 per request kind and
the ratio with/without.

Prints tables; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # bundle_factory: the same random bundles the tests use

import numpy as np  # noqa: E402

import recfuse  # noqa: E402,F401  (Keras 2 switch before TensorFlow)
from recfuse.bundle import load_bundle, write_bundle  # noqa: E402
from recfuse.config import IndexConfig  # noqa: E402
from recfuse.inference import Recommender  # noqa: E402


def pct(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_calls(fn: Callable[[int], object], n: int, warmup: int = 20) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def tf_query_tower(dim: int, user_rows: int, seed: int = 0, **encoder: object):  # type: ignore[no-untyped-def]
    """A built TF QueryTower with random weights (``encoder``: QueryTower's encoder arguments)."""
    import tensorflow as tf

    from recfuse.models.query_tower import QueryTower

    tf.keras.utils.set_random_seed(seed)
    tower = QueryTower(dim=dim, user_rows=user_rows, hidden=(128,), **encoder)  # type: ignore[arg-type]
    tower.build_for(dim)
    if tower.encoder == "transformer":  # LayerNorms start at 1/0: perturb them as training would
        rng = np.random.default_rng(seed)
        for v in tower.sequence.weights:
            if "ln" in v.name:
                v.assign(v.numpy() + rng.normal(scale=0.1, size=v.shape).astype(np.float32))
    return tower


def encoder_args(encoder: str, max_positions: int, layers: int = 2) -> dict[str, object]:
    if encoder == "attention":
        return {}
    return {"encoder": encoder, "encoder_layers": layers, "encoder_heads": 2, "max_positions": max_positions}


def build_bundle(root: Path, n_items: int, dim: int, factory: str, encoder: str = "attention") -> Path:
    from bundle_factory import make_contents

    suffix = "" if encoder == "attention" else f"-{encoder}"
    variant = f"bench-{n_items}-{dim}-{factory.replace(',', '_')}{suffix}"
    vdir = root / variant
    if (vdir / "CURRENT").is_file():
        return vdir
    contents = make_contents(
        n_items=n_items,
        dim=dim,
        variant=variant,
        n_users=min(20_000, n_items // 5),
        n_categories=50,
        index_cfg=IndexConfig(factory=factory, recall_queries=200, ef_search=128),
    )
    tower = tf_query_tower(dim, contents.user_vocab.size, **encoder_args(encoder, max_positions=20))
    contents.query_tower = tower.to_numpy()
    t0 = time.perf_counter()
    write_bundle(root, contents)
    print(f"  built {variant} in {time.perf_counter() - t0:.1f} s", flush=True)
    return vdir


def bench_recommender(path: Path, n: int, label: str = "") -> list[tuple[str, ...]]:
    t0 = time.perf_counter()
    rec = Recommender.from_bundle(path)
    load_s = time.perf_counter() - t0
    info = rec.info()
    users = rec.bundle.user_history["user_id"].tolist()
    items = rec.bundle.item_ids
    rng = np.random.default_rng(0)
    uq = [users[i] for i in rng.integers(0, len(users), n + 50)]
    hq = [[items[j] for j in rng.integers(0, len(items), 5)] for _ in range(n + 50)]
    cats = sorted(rec._tables.category_rows)  # noqa: SLF001  (bench only: pick a real category)
    kinds: dict[str, Callable[[int], object]] = {
        "known user": lambda i: rec.recommend(user_id=uq[i], k=10),
        "known user, exclude_seen": lambda i: rec.recommend(user_id=uq[i], k=10, exclude_seen=True),
        "anonymous, 5-item history": lambda i: rec.recommend(history=hq[i], k=10),
        "user + category filter": lambda i: rec.recommend(user_id=uq[i], k=10, include_categories=[cats[i % 3]]),
        "popular fallback": lambda i: rec.recommend(k=10),
    }
    rows = []
    for name, fn in kinds.items():
        parts: list[tuple[float, float]] = []

        def call(i: int, fn: Callable[[int], object] = fn, parts: list[tuple[float, float]] = parts) -> None:
            r = fn(i)
            parts.append((r.query_ms, r.search_ms))  # type: ignore[attr-defined]

        total = time_calls(call, n)
        q = [p[0] for p in parts[-n:]]
        s = [p[1] for p in parts[-n:]]
        t50, t99 = pct(total)
        q50, q99 = pct(q)
        s50, s99 = pct(s)
        rows.append(
            (
                f"{info.item_count:,} {info.index_factory}{label}",
                name,
                f"{t50:.3f}",
                f"{t99:.3f}",
                f"{q50:.3f}",
                f"{q99:.3f}",
                f"{s50:.3f}",
                f"{s99:.3f}",
                f"{q50 / t50:.0%}" if t50 else "-",
            )
        )
    print(f"  {info.index_factory}: load+verify {load_s:.2f} s, ANN recall@10 {info.ann_recall}")
    return rows


def bench_query_engines(path: Path, n: int, savedmodel_dir: Path | None = None) -> list[tuple[str, ...]]:
    import tensorflow as tf

    from recfuse.models.query_tower import QueryTower
    from recfuse.models.trained import QueryServingModule

    b = load_bundle(path, verify=False)
    np_tower = b.query_tower
    dim, length = b.dim, int(b.manifest.get("max_history", 20))
    user_rows = 0 if np_tower.user_embedding is None else int(np_tower.user_embedding.shape[0])
    rng = np.random.default_rng(1)
    n_in = n + 50
    users = rng.integers(0, max(user_rows, 1), (n_in, 1)).astype(np.int64)
    hist = rng.integers(0, len(b.item_ids), (n_in, 1, length)).astype(np.int64)
    hist[:, :, 12:] = -1
    pos = np.broadcast_to(np.arange(length, dtype=np.float32), (1, length)).copy()

    if savedmodel_dir is None:
        seq = np_tower.sequence
        tower = QueryTower(
            dim=dim,
            user_rows=user_rows,
            user_dim=0 if np_tower.user_embedding is None else int(np_tower.user_embedding.shape[1]),
            attention_hidden=int(np_tower.attn_w.shape[1]),
            hidden=tuple(int(w.shape[1]) for w, _ in np_tower.mlp[:-1]),
            normalize=np_tower.normalize,
            **({} if seq is None else encoder_args("transformer", seq.max_positions, len(seq.blocks))),  # type: ignore[arg-type]
        )
        tower.build_for(dim)
        tower.load_arrays(np_tower.to_arrays())

        module = QueryServingModule(tower, b.item_vectors)
        tmp = Path(tempfile.mkdtemp(prefix="recbench-sm-"))
        tf.saved_model.save(module, str(tmp / "sm"), signatures={"serving_default": module.serve})
        savedmodel_dir = tmp / "sm"
        compiled = module.serve
        eager_matrix = module.item_matrix

        def eager(i: int) -> np.ndarray:
            return tower(eager_matrix, users[i], hist[i], pos).numpy()
    else:
        compiled, eager = None, None  # a real bundle: its SavedModel is the only TF artefact to compare
    sig = tf.saved_model.load(str(savedmodel_dir)).signatures["serving_default"]

    from recfuse.forward.query import QueryEncoder

    encoder = QueryEncoder(np_tower, b.item_vectors)  # what Recommender builds at load
    hist_rows = [h[0][h[0] >= 0] for h in hist]
    engines: dict[str, Callable[[int], np.ndarray]] = {
        "numpy forward (serving path)": lambda i: encoder.encode_one(int(users[i][0]), hist_rows[i])[None, :],
        "numpy forward, plain (no precompute)": lambda i: np_tower.encode(b.item_vectors, users[i], hist[i], pos),
        "TF SavedModel signature": lambda i: sig(
            user_idx=tf.constant(users[i]), hist_idx=tf.constant(hist[i]), hist_pos=tf.constant(pos)
        )["query"].numpy(),
    }
    if compiled is not None:
        engines["tf.function (input signature)"] = lambda i: compiled(
            tf.constant(users[i]), tf.constant(hist[i]), tf.constant(pos)
        )["query"].numpy()
    if eager is not None:
        engines["Keras layer, eager"] = eager
    ref = np.concatenate([engines["numpy forward (serving path)"](i) for i in range(20)])
    rows = []
    base = None
    for name, fn in engines.items():
        got = np.concatenate([fn(i) for i in range(20)])
        diff = float(np.abs(got - ref).max())
        p50, p99 = pct(time_calls(fn, n))
        base = base or p50
        ok = "yes" if diff <= 1e-5 else "NO"
        rows.append((name, f"{p50:.3f}", f"{p99:.3f}", f"{p50 / base:.1f}x", f"{diff:.1e}", ok))
    return rows


def bench_history_encoders(n_items: int, dim: int, length: int, n: int) -> list[tuple[str, ...]]:
    """Serving forward (``QueryEncoder.encode_one``) and ``tf.function`` of each history encoder, batch 1."""
    import tensorflow as tf

    from recfuse.forward.query import QueryEncoder

    rng = np.random.default_rng(2)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    user_rows = 1000
    users = rng.integers(0, user_rows, n + 50)
    hists = [rng.integers(0, n_items, length) for _ in range(n + 50)]
    pos = np.arange(length, dtype=np.float32)[None, :]
    matrix = tf.constant(items)
    rows, base = [], None
    for label, kw in [
        ("attention (pooling + recency)", encoder_args("attention", length)),
        ("transformer, 1 block, 2 heads", encoder_args("transformer", length, layers=1)),
        ("transformer, 2 blocks, 2 heads", encoder_args("transformer", length, layers=2)),
    ]:
        tower = tf_query_tower(dim, user_rows, **kw)
        encoder = QueryEncoder(tower.to_numpy(), items)
        fn = tf.function(lambda u, h, t=tower: t(matrix, u, h, tf.constant(pos)))  # type: ignore[misc]
        ref = np.stack([tower(matrix, users[i : i + 1], hists[i][None, :], pos).numpy()[0] for i in range(20)])
        got = np.stack([encoder.encode_one(int(users[i]), hists[i]) for i in range(20)])
        p50, p99 = pct(time_calls(lambda i, e=encoder: e.encode_one(int(users[i]), hists[i]), n))
        t50, t99 = pct(time_calls(lambda i, f=fn: f(users[i : i + 1], hists[i][None, :]).numpy(), n))
        base = base or p50
        diff = float(np.abs(got - ref).max())
        rows.append(
            (label, f"{p50:.3f}", f"{p99:.3f}", f"{p50 / base:.1f}x", f"{t50:.3f}", f"{t99:.3f}", f"{diff:.1e}")
        )
    return rows


def synthetic_head(bundle, keep: int, beta: float, seed: int = 3):  # type: ignore[no-untyped-def]
    """An item-item head of the bundle's size with ``keep`` positive weights per row, drawn from the row
    item's category (factory bundles: item ``i`` is in category ``i % C``): the serving cost of a real
    head with ``[item_head] keep`` = ``keep``, not its quality."""
    import scipy.sparse as sp

    from recfuse.itemitem import ItemHead

    n = len(bundle.item_ids)
    c = max(1, len(bundle.category_vocab) - sum(1 for x in bundle.category_vocab.ids if str(x).startswith("t")))
    rng = np.random.default_rng(seed)
    per_cat = -(-n // c)
    k = min(keep, per_cat - 1)
    rows = np.repeat(np.arange(n), k)
    cols = (rows % c) + c * rng.integers(0, per_cat, n * k)
    cols = np.where(cols < n, cols, rows)
    vals = rng.random(n * k).astype(np.float32) / k
    w = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float32)
    w.setdiag(0)
    w.eliminate_zeros()
    return ItemHead(w, beta, "itemknn", {"neighbors": keep, "keep": keep})


def bench_item_head(path: Path, n: int, keep: int, candidates: int, beta: float) -> list[tuple[str, ...]]:
    """The same bundle served without and with an item-item head: p50/p99 per request kind, interleaved."""
    import dataclasses

    loaded = load_bundle(path, verify=False)
    head = synthetic_head(loaded, keep, beta)
    plain = Recommender(loaded)
    headed = Recommender(dataclasses.replace(loaded, item_head=head, item_head_candidates=candidates))
    assert headed.head_rerank is not None and plain.head_rerank is None
    users = loaded.user_history["user_id"].tolist()
    items = loaded.item_ids
    rng = np.random.default_rng(0)
    uq = [users[i] for i in rng.integers(0, len(users), n + 50)]
    hq = [[items[j] for j in rng.integers(0, len(items), 5)] for _ in range(n + 50)]
    hq20 = [[items[j] for j in rng.integers(0, len(items), 20)] for _ in range(n + 50)]
    cats = sorted(plain._tables.category_rows)  # noqa: SLF001  (bench only: pick a real category)
    kinds: dict[str, Callable[[Recommender, int], object]] = {
        "known user": lambda r, i: r.recommend(user_id=uq[i], k=10),
        "known user, exclude_seen": lambda r, i: r.recommend(user_id=uq[i], k=10, exclude_seen=True),
        "anonymous, 5-item history": lambda r, i: r.recommend(history=hq[i], k=10),
        "anonymous, 20-item history": lambda r, i: r.recommend(history=hq20[i], k=10),
        "user + category filter": lambda r, i: r.recommend(user_id=uq[i], k=10, include_categories=[cats[i % 3]]),
        "popular fallback": lambda r, i: r.recommend(k=10),
    }
    rows = []
    label = f"{len(items):,} {loaded.manifest['index_factory']}"
    for name, fn in kinds.items():
        for i in range(20):
            fn(plain, i), fn(headed, i)
        a: list[float] = []
        b: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(plain, i)
            t1 = time.perf_counter()
            fn(headed, i)
            t2 = time.perf_counter()
            a.append((t1 - t0) * 1e3)
            b.append((t2 - t1) * 1e3)
        a50, a99 = pct(a)
        b50, b99 = pct(b)
        rows.append((label, name, f"{a50:.3f}", f"{a99:.3f}", f"{b50:.3f}", f"{b99:.3f}", f"{b50 / a50:.2f}x",
                     f"{b99 / a99:.2f}x"))  # fmt: skip
    print(f"  {label}: head nnz {head.weights.nnz:,} ({keep} per item), beta {beta}, re-rank of k+{candidates}")
    return rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="20k items, fewer calls")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--factories", default="Flat,HNSW32")
    ap.add_argument("--bundle", default=None, help="also benchmark this (real, exported) bundle")
    ap.add_argument(
        "--query-encoder",
        choices=("attention", "transformer"),
        default="attention",
        help="query tower of the random bundles (parts 1 and 2)",
    )
    ap.add_argument("--history", type=int, default=50, help="history length of part 3")
    ap.add_argument("--encoders-only", action="store_true", help="run part 3 only")
    ap.add_argument("--item-head", action="store_true", help="run part 4 only: each bundle with/without a head")
    ap.add_argument("--head-keep", type=int, default=200, help="part 4: head weights per item ([item_head] keep)")
    ap.add_argument("--head-candidates", type=int, default=200, help="part 4: [item_head] candidates")
    ap.add_argument("--head-beta", type=float, default=0.5, help="part 4: the head's beta")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "bench" / "bundles"))
    args = ap.parse_args()
    n_items = 20_000 if args.quick else args.items
    calls = min(args.calls, 300) if args.quick else args.calls
    cache = Path(args.cache)
    print(f"recommend bench: {n_items} items, d={args.dim}, {calls} calls per row, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}")  # fmt: skip
    enc_hdr = ("history encoder", "serving p50", "serving p99", "p50 vs attention", "tf.function p50",
               "tf.function p99", "max abs diff")  # fmt: skip
    enc_title = f"\nQuery tower serving forward (QueryEncoder.encode_one), batch 1, history of {args.history} (ms)"
    if args.encoders_only:
        print(enc_title)
        print(table(enc_hdr, bench_history_encoders(n_items, args.dim, args.history, calls)))
        return 0
    paths = [build_bundle(cache, n_items, args.dim, f, args.query_encoder) for f in args.factories.split(",")]
    if args.item_head:
        head_rows = []
        for p in paths:
            head_rows += bench_item_head(p, calls, args.head_keep, args.head_candidates, args.head_beta)
        print(f"\nRecommender, batch 1, k=10, without vs with an item-item head (keep {args.head_keep}, "
              f"candidates {args.head_candidates}), same bundle and index, calls interleaved (ms)")  # fmt: skip
        print(table(("bundle", "request", "plain p50", "plain p99", "head p50", "head p99", "p50 ratio",
                     "p99 ratio"), head_rows))  # fmt: skip
        return 0
    rows = []
    for p in paths:
        rows += bench_recommender(p, calls)
    real = Path(args.bundle) if args.bundle else None
    if real is not None:
        rows += bench_recommender(real, calls, label=" (trained)")
    print("\nRecommender.recommend, batch 1, k=10 (ms; query = query tower, search = index + filters)")
    print(
        table(
            ("bundle", "request", "total p50", "total p99", "query p50", "query p99", "search p50", "search p99",
             "query share"),
            rows,
        )
    )  # fmt: skip
    print(f"\nQuery tower ({args.query_encoder}), batch 1, history of 12 (ms), random bundle, vs the numpy forward")
    hdr = ("engine", "p50", "p99", "p50 vs numpy", "max abs diff", "<= 1e-5")
    print(table(hdr, bench_query_engines(paths[0], calls)))
    if real is not None:
        sm = load_bundle(real, verify=False).path / "query_tower_savedmodel"
        if sm.is_dir():
            print(f"\nQuery tower of the real bundle {real} (its exported SavedModel vs numpy)")
            print(table(hdr, bench_query_engines(real, calls, savedmodel_dir=sm)))
    print(enc_title)
    print(table(enc_hdr, bench_history_encoders(n_items, args.dim, args.history, calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
