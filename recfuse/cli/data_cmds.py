"""`recfuse` data commands: ``sample-data`` (seeded synthetic dataset), ``validate`` (check + summary)
and ``convert`` (a public dataset's original files → the data contract, with a split column).

Example:
    recfuse sample-data --out data_samples --items 1500 --users 800 --seed 7
    recfuse validate --config data_samples/recfuse.toml --split cold_start
    recfuse convert microlens --src ../shared/datasets/microlens-50k --out runs/datasets/microlens-50k
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from recfuse.config import SPLITS
from recfuse.errors import InvalidRequestError


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
    v.add_argument("--items", default="", help="catalog file (default: the config's [data] items)")
    v.add_argument("--interactions", default="", help="interactions file (default: the config's [data] interactions)")
    v.add_argument("--images-dir", default="", help="base of relative image paths (default: the catalog's directory)")
    v.add_argument(
        "--quarantine", default="", metavar="DIR",
        help="set bad rows aside in DIR instead of failing (default: fail)",
    )
    v.add_argument("--split", default="", choices=["", *SPLITS],
                   help="split to report (default: the config's data.split)")
    v.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    v.set_defaults(handler=_validate)

    c = sub.add_parser(
        "convert",
        help="convert a public dataset's original files to items/interactions Parquet + recfuse.toml",
        description=(
            "Read the dataset's unmodified files from --src (sha256 checked), write items.parquet, "
            "interactions.parquet (with a split column), conversion.json and recfuse.toml to --out atomically. "
            "Never write --out inside a tracked folder: converted copies must not be committed."
        ),
    )
    c.add_argument("dataset", choices=["microlens"], help="microlens: MicroLens-50k (pairs TSV + titles CSV)")
    c.add_argument("--src", required=True, help="folder holding the original files")
    c.add_argument("--out", required=True, help="output folder (replaced atomically)")
    c.add_argument(
        "--protocol", choices=["loo", "random"], default="loo",
        help="loo: per user last item test, the one before valid (default); random: seeded per-user 8:1:1",
    )  # fmt: skip
    c.add_argument("--seed", type=int, default=42, help="seed of --protocol random (default 42)")
    c.add_argument(
        "--max-items-per-user", type=int, default=0, metavar="N", help="keep each user's last N items (0: all)"
    )
    c.add_argument("--strict", action="store_true", help="fail (instead of warning) when a source sha256 differs")
    c.add_argument("--json", action="store_true", help="print the conversion record as JSON")
    c.set_defaults(handler=_convert)


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


def _convert(args: argparse.Namespace) -> int:
    from recfuse.data.microlens_convert import convert_microlens

    if args.max_items_per_user < 0:
        raise InvalidRequestError(f"`--max-items-per-user` must be >= 0 (0: all items), got {args.max_items_per_user}")
    result = convert_microlens(
        args.src, args.out, protocol=args.protocol, seed=args.seed,
        max_items_per_user=args.max_items_per_user, strict=args.strict,
    )  # fmt: skip
    data = result.data
    if args.json:
        record = {"out": str(result.out), "seconds": round(result.seconds, 3), "counts": data.counts}
        record |= {
            "dropped": data.dropped,
            "source_sha256": data.sha256,
            "checksum_mismatches": data.checksum_mismatches,
        }
        print(json.dumps(record, indent=2))
        return 0
    c = data.counts
    for name in data.checksum_mismatches:
        print(f"warning: {name} differs from the original (sha256 {data.sha256[name]})", file=sys.stderr)
    print(
        f"converted MicroLens-50k ({data.protocol}, seed {data.seed}) to {result.out} in {result.seconds:.1f} s: "
        f"{c['users']} users, {c['items']} items ({c['items_with_hashtags']} with hashtags, "
        f"{c['distinct_hashtags']} distinct; {c['items_without_interactions']} without interactions), "
        f"{c['interactions']} interactions: train {c['train']}, valid {c['valid']}, test {c['test']} "
        f"({c['train_only_users']} users with < 3 items all train)"
    )
    drops = ", ".join(f"{n} {reason}" for reason, n in data.dropped.items() if n) or "none"
    print(f"dropped: {drops}")
    print(f"train with: recfuse train --config {result.out / 'recfuse.toml'} --out runs/microlens-model")
    return 0
