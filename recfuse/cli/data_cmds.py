"""`recfuse` data commands: ``sample-data`` (seeded synthetic dataset) and ``validate`` (check + summary).

Example:
    recfuse sample-data --out data_samples --items 1500 --users 800 --seed 7
    recfuse validate --config data_samples/recfuse.toml --split cold_start
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "sample-data",
        help="generate the seeded multimodal synthetic dataset",
        description="Write items.parquet, interactions.parquet, images/, README.md and recfuse.toml to --out.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--items", type=int, default=1500, help="number of items (default 1500)")
    p.add_argument("--users", type=int, default=800, help="number of users (default 800)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.set_defaults(handler=_sample_data)

    v = sub.add_parser(
        "validate",
        help="validate the catalog and interactions, print a summary and split sizes",
        description="Exit 0 when the data is usable; table-level errors (and bad rows without --quarantine) exit 3.",
    )
    v.add_argument("--config", help="recfuse TOML config (default: built-in defaults, i.e. data_samples/)")
    v.add_argument("--items", default="", help="catalog file, overrides [data] items")
    v.add_argument("--interactions", default="", help="interactions file, overrides [data] interactions")
    v.add_argument("--images-dir", default="", help="base of relative image paths (default: the catalog's directory)")
    v.add_argument("--quarantine", default="", metavar="DIR", help="set bad rows aside in DIR instead of failing")
    v.add_argument("--split", default="", choices=["", "random", "temporal", "cold_start"], help="split to report")
    v.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    v.set_defaults(handler=_validate)


def _sample_data(args: argparse.Namespace) -> int:
    from recfuse.data.synthetic import generate

    info = generate(args.out, n_items=args.items, n_users=args.users, seed=args.seed)
    print(
        f"wrote {info.n_items} items ({info.n_without_image} without image, {info.n_without_text} without text, "
        f"{info.n_chinese} Chinese, {info.n_new_items} new), {info.n_users} users, "
        f"{info.n_interactions} interactions to {info.out_dir}"
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import split_interactions
    from recfuse.data.validate import load_dataset, with_paths

    cfg = RecfuseConfig.from_toml(args.config) if args.config else RecfuseConfig()
    data = with_paths(
        cfg.data, items=args.items, interactions=args.interactions, images_dir=args.images_dir,
        quarantine_dir=args.quarantine, on_bad_rows="quarantine" if args.quarantine else "",
    )  # fmt: skip
    ds = load_dataset(data, cfg.modalities)
    kind = args.split or data.split
    split = split_interactions(ds.interactions, kind, data.split_seed, data.cold_item_fraction)
    summary = split.summary()
    if args.json:
        print(json.dumps({"report": ds.report.to_dict(), "split": summary}, indent=2, ensure_ascii=False))
        return 0
    print(ds.report.to_text())
    print(
        f"split {kind} (seed {data.split_seed}): train {summary['train']}, val {summary['val']}, "
        f"test {summary['test']} interactions; users train/val/test "
        f"{summary['train_users']}/{summary['val_users']}/{summary['test_users']}; "
        f"cold items {summary['cold_items']}; users kept in train only (<3 items) {summary['train_only_users']}"
    )
    return 0
