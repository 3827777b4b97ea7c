"""What export's recall measurement and tuning add to export time.

For each size, one set of item vectors and served query vectors is written as a bundle twice, the way
export writes one (``recfuse.index.choose.auto_index`` then ``recfuse.bundle.write_bundle``):

- **default**: ``index.factory = "auto"`` and ``index.target_recall`` (0.95): the index type chosen
  by measurement (candidates tried on a ``choice_sample`` sample above 100k items), the chosen index
  built on every vector, its efSearch / nprobe tuned to the target on the served queries, the served
  recall and ``ann_recall`` measured, the bundle written;
- **plain**: the factory and search parameter that the default run chose, given explicitly, with no
  served queries, ``target_recall = 0`` and ``recall_queries = 0``: the same index built and the same
  bundle written, with no recall measured and nothing chosen or tuned.

``default ÷ plain - 1`` is what measuring and tuning add (goal at 1M items: ≤ 20%). Export also
runs the candidate tower over the catalog, which both runs would share; leaving it out makes the
ratio larger, not smaller.

Vectors: ``--from-model DIR`` (a trained recfuse model's item vectors scaled up and its own query
vectors, as ``bench/serve_load.py --from-model`` builds them; cached under ``runs/bench/``), else the
random-but-structured vectors of ``tests/bundle_factory.py`` with the users' pooled histories as queries.

Usage:
    python bench/export_overhead.py --from-model runs/bench/sample-model --items 100000 1000000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bundle_factory import make_contents  # noqa: E402
from serve_load import DIM, N_USERS, model_source, passthrough_tower  # noqa: E402

from recfuse.bundle import write_bundle  # noqa: E402
from recfuse.config import IndexConfig  # noqa: E402
from recfuse.forward.query import QueryEncoder  # noqa: E402
from recfuse.index.choose import auto_index  # noqa: E402


def contents_for(n: int, source: tuple[np.ndarray, np.ndarray] | None):  # type: ignore[no-untyped-def]
    """Bundle contents of ``n`` items with 2,000 served query vectors (the users' own)."""
    dim = DIM if source is None else source[0].shape[1]
    c = make_contents(n, dim, n_users=N_USERS)
    if source is not None:
        c.item_vectors = np.ascontiguousarray(source[0], np.float32)
        c.query_tower = passthrough_tower(dim, c.user_vocab.size, c.user_vocab.num_oov, source[1])
    users = [f"u{j}" for j in range(N_USERS)]
    hists = [np.array([int(i[1:]) for i in c.user_history[u]], np.int64) for u in users]
    enc = QueryEncoder(c.query_tower, c.item_vectors)
    c.served_queries = enc.encode_many([c.user_vocab.lookup_one(u) for u in users], hists)[:2000]
    c.served_queries_about = "2000 users' query vectors"
    return c


def timed_export(root: Path, contents, cfg: IndexConfig) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    index, cfg = auto_index(contents.ranked_vectors, contents.served_queries, cfg)
    path = write_bundle(root, contents, cfg, index=index)
    seconds = time.perf_counter() - start
    return seconds, json.loads((path / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000], help="catalog sizes")
    p.add_argument("--from-model", type=Path, default=None, help="trained model directory (default: random vectors)")
    p.add_argument("--target", type=float, default=0.95, help="index.target_recall of the default run")
    args = p.parse_args(argv)
    rows = []
    for n in args.items:
        source = None
        if args.from_model is not None:
            cache = HERE.parent / "runs" / "bench" / f"model-vectors-{args.from_model.name}"
            source = model_source(args.from_model, n, cache)
        c = contents_for(n, source)
        with tempfile.TemporaryDirectory(dir=HERE.parent / "runs") as tmp:
            auto_cfg = IndexConfig(factory="auto", target_recall=args.target)
            t_auto, m = timed_export(Path(tmp) / "default", c, auto_cfg)
            served = m["served_recall"]
            params = {key: v for key, v in (served.get("search_params") or {}).items() if v}
            plain_cfg = dataclasses.replace(auto_cfg, factory=m["index_factory"], target_recall=0.0, recall_queries=0,
                                            **params)  # fmt: skip
            queries = c.served_queries
            c.served_queries = None
            t_plain, _ = timed_export(Path(tmp) / "plain", c, plain_cfg)
            c.served_queries = queries
            shutil.rmtree(tmp, ignore_errors=True)
        choice = m.get("index_choice") or {}
        shown = served.get("tuned") or params  # the parameter export tuned (HNSW: ef_search, IVF: nprobe)
        rows.append((n, m["index_factory"], shown, served["recall"], choice.get("seconds", 0.0), t_auto, t_plain))
        print(f"{n:,} items: default {t_auto:.1f} s, plain {t_plain:.1f} s", flush=True)
    print("\n| items | chosen index | parameter | served recall@10 | choice s | default export s | plain export s "
          "| added |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for n, factory, params, recall, choice_s, t_auto, t_plain in rows:
        param = " ".join(f"{k} {v}" for k, v in params.items())
        print(f"| {n:,} | {factory} | {param} | {recall:.4f} | {choice_s:.1f} | {t_auto:.1f} | {t_plain:.1f} "
              f"| {t_auto / t_plain - 1:+.0%} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
