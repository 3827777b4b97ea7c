"""`recfuse prepare`: interactions → (split and) user-sorted Parquet shards + manifest for streamed training.

Example:
    recfuse prepare --config cfg.toml --out runs/prepared          # the config's [data] split, made while streaming
    recfuse prepare --interactions runs/train_interactions/ --out runs/prepared --rows-per-shard 1000000
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from recfuse.cli.train_cmds import add_set_option
from recfuse.errors import InvalidRequestError, UsageError


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "prepare",
        help="split, sort and shard interactions by user (bounded memory) for streamed training",
        description=(
            "Stream the interactions (a Parquet file or a folder of them) into hash buckets by user, sort each "
            "bucket by (user_id, timestamp) and write user-sorted shards, users.parquet, item_counts.parquet and "
            "manifest.json to --out (replaced atomically). Unusable rows are counted in the manifest. With "
            "--config the config's [data] split (kind, seed, cold fraction) is made while streaming, the same "
            "split `recfuse train` makes in memory: the shards hold the training rows, val.parquet and "
            "test.parquet the held-out ones, and rows whose item is not in the validated catalog are left out "
            "(or fail, with data.on_bad_rows = 'fail'). `recfuse train --prepared` then loads only the catalog."
        ),
    )
    p.add_argument("--config", default=None, help="TOML config: its [data] interactions, catalog and split")
    add_set_option(p, "override a config value (as for `recfuse train`), e.g. data.split_seed=7")
    p.add_argument(
        "--interactions",
        default=None,
        metavar="FILE_OR_DIR",
        help="Parquet file or folder of them (default with --config: data.interactions)",
    )
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
    if args.config is None and args.overrides:
        raise UsageError("--set needs --config (it overrides the config's values)")
    if args.config is None and args.interactions is None:
        raise UsageError("give --interactions FILE_OR_DIR, or --config with [data] interactions (and its split)")
    t0 = time.perf_counter()
    options: dict[str, Any] = {}
    src = args.interactions
    if args.config is not None:
        from recfuse.cli.train_cmds import parse_overrides
        from recfuse.config import RecfuseConfig
        from recfuse.data.catalog import load_catalog

        cfg = RecfuseConfig.from_toml(args.config)
        overrides = parse_overrides(args.overrides)
        if overrides:
            cfg = cfg.with_overrides(overrides)
        src = src or cfg.data.interactions
        catalog = load_catalog(cfg.data, cfg.modalities)  # interactions of unknown items are left out, as in train
        options = {"split": cfg.data.split, "seed": cfg.data.split_seed,
                   "cold_item_fraction": cfg.data.cold_item_fraction, "on_bad_rows": cfg.data.on_bad_rows,
                   "item_ids": set(catalog.items["item_id"].astype(str))}  # fmt: skip
    m = prepare_interactions(src, args.out, buckets=args.buckets, rows_per_shard=args.rows_per_shard, **options)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    bad = ", ".join(f"{n} {reason}" for reason, n in m["unusable_rows"].items() if n) or "none"
    print(
        f"prepared {m['rows']} interactions of {m['users']} users and {m['items']} items into "
        f"{len(m['shards'])} shards in {args.out} ({time.perf_counter() - t0:.1f} s); unusable rows left out: {bad}"
    )
    if m.get("split"):
        s = m["split"]
        print(
            f"split {s['kind']} (seed {s['seed']}): {s['train']} train / {s['val']} val / {s['test']} test "
            f"interactions, fingerprint {s['fingerprint'][:12]}"
        )
    return 0
