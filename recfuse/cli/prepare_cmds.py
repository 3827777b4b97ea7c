"""`recfuse prepare`: interactions → user-sorted Parquet shards + manifest for streamed training.

Example:
    recfuse prepare --interactions runs/train_interactions/ --out runs/prepared --rows-per-shard 1000000
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from recfuse.errors import InvalidRequestError


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "prepare",
        help="sort and shard interactions by user (bounded memory) for streamed training",
        description=(
            "Stream the interactions (a Parquet file or a folder of them) into hash buckets by user, sort each "
            "bucket by (user_id, timestamp) and write user-sorted shards, users.parquet, item_counts.parquet and "
            "manifest.json to --out (replaced atomically). Unusable rows are counted in the manifest."
        ),
    )
    p.add_argument("--interactions", required=True, metavar="FILE_OR_DIR", help="Parquet file or folder of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced atomically)")
    p.add_argument("--buckets", type=int, default=0, metavar="N",
                   help="hash buckets (default 0: total rows / --rows-per-shard)")  # fmt: skip
    p.add_argument("--rows-per-shard", type=int, default=1_000_000, metavar="N",
                   help="most rows per shard, cut between users (default 1000000)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from recfuse.data.prepare import prepare_interactions

    if args.buckets < 0:
        raise InvalidRequestError(f"`--buckets` must be >= 0 (0: automatic), got {args.buckets}")
    if args.rows_per_shard < 1:
        raise InvalidRequestError(f"`--rows-per-shard` must be >= 1, got {args.rows_per_shard}")
    t0 = time.perf_counter()
    m = prepare_interactions(args.interactions, args.out, buckets=args.buckets, rows_per_shard=args.rows_per_shard)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    bad = ", ".join(f"{n} {reason}" for reason, n in m["unusable_rows"].items() if n) or "none"
    print(
        f"prepared {m['rows']} interactions of {m['users']} users and {m['items']} items into "
        f"{len(m['shards'])} shards in {args.out} ({time.perf_counter() - t0:.1f} s); unusable rows left out: {bad}"
    )
    return 0
