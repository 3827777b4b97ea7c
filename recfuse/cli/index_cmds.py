"""`recfuse index-shards`: publish a bundle from `recfuse embed` shards, its IVF index built streaming.

The shards are read batch by batch (scan, training sample, add) with a progress bar per pass on
stderr; then the bundle's files, served recall and manifest are written as `recfuse export` writes
them. The command prints the published version, the index line (factory, search parameters, served
recall) and any shard rows left out (``--skip-bad-vectors``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recfuse.errors import ConfigError, UsageError


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "index-shards",
        help="publish a bundle from `recfuse embed` shards (IVF index built without loading every vector)",
        description="Build an IVF index from embedding shards batch by batch and publish it as a bundle.",
    )
    p.add_argument("--embeddings", required=True, help="a finished `recfuse embed --out` directory")
    p.add_argument("--model", required=True, help="training output directory the shards were embedded with")
    p.add_argument("--out", required=True, help="bundles root; the bundle goes to OUT/<variant>/<version>")
    p.add_argument(
        "--factory",
        default=None,
        help="IVF faiss factory, e.g. IVF1024,Flat (default: the model config's index.factory; auto picks an IVF one)",
    )
    p.add_argument("--sample", type=int, default=None, help="rows the IVF quantizer is trained on (index.train_sample)")
    p.add_argument("--catalog", default=None, help="items file for titles/categories (default: the model's catalog)")
    p.add_argument(
        "--skip-bad-vectors",
        action="store_true",
        help="leave rows with null or NaN/inf vectors out of the bundle and list them (default: fail)",
    )
    p.add_argument("--keep-versions", type=int, default=None, help="delete all but the newest N versions")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(handler=_index_shards)


def _index_shards(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from recfuse.bundle.from_shards import export_from_shards
    from recfuse.cli.bundle_cmds import _index_line
    from recfuse.config import IndexConfig
    from recfuse.index.sharded import ShardProgress

    if args.sample is not None:
        try:  # checked before the shards are read and the model is loaded
            IndexConfig(train_sample=args.sample)
        except ConfigError as err:
            raise UsageError(f"--sample {args.sample}: {err}") from None
    bars: dict[str, Any] = {}

    def progress(p: ShardProgress) -> None:
        if args.no_progress:
            return
        bar = bars.get(p.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[p.stage] = tqdm(total=p.rows_total, unit="rows", desc=p.stage, file=sys.stderr)
        bar.n = p.rows_done
        bar.refresh()

    try:
        result = export_from_shards(
            args.model, args.embeddings, args.out, factory=args.factory, train_sample=args.sample,
            catalog=args.catalog, on_bad_vectors="skip" if args.skip_bad_vectors else "fail",
            keep_versions=args.keep_versions, progress=progress,
        )  # fmt: skip
    finally:
        for bar in bars.values():
            bar.close()
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    recall = "not measured" if result.ann_recall is None else f"{result.ann_recall:.4f}"
    print(f"published bundle {result.path}")
    print(f"  {result.items} items from shards; {result.factory} trained on {result.train_rows} rows ({stages}); "
          f"item-vector recall@10 {recall}")  # fmt: skip
    print(_index_line(result.path))
    if result.rejects:
        print(f"  left out {len(result.rejects)} shard row(s) with unusable vectors", file=sys.stderr)
        for item_id, reason in result.rejects[:20]:
            print(f"  rejected {item_id}: {reason}", file=sys.stderr)
    return 0
