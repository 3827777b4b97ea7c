"""`recfuse export`, `recfuse add-items`, `recfuse recommend`, `recfuse bundle-info`.

``recommend --users all|FILE --out recs.parquet`` answers many users in batches through
:func:`recfuse.inference.batch.recommend_all` (seen items excluded, as serving with ``exclude_seen``),
with a progress bar on stderr and a summary line. ``export`` and ``add-items`` print a progress line
per stage on stderr (:mod:`recfuse.cli.progress`); stdout keeps their result lines.

Handlers import their heavy modules lazily: ``recommend`` and ``bundle-info`` never import
TensorFlow (numpy query tower + faiss); ``export`` and ``add-items`` need the trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from recfuse.errors import InvalidRequestError


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser("export", help="export a trained model directory as a new bundle version")
    p.add_argument("--model", required=True, help="training output directory (recfuse train --out)")
    p.add_argument("--out", required=True, help="bundles root; the bundle goes to OUT/<variant>/<version>")
    p.add_argument("--factory", default=None, help="faiss factory string (default: the model config's index.factory)")
    p.add_argument(
        "--catalog", default=None, help="items file for titles/categories (default: the config's data.items)"
    )
    p.add_argument("--keep-versions", type=int, default=None, help="delete all but the newest N versions")
    p.set_defaults(handler=_export)

    p = sub.add_parser("add-items", help="embed new catalog items and publish them as a new bundle version")
    p.add_argument("--bundle", required=True, help="ROOT/<variant> (or a version directory) of an exported bundle")
    p.add_argument("--catalog", required=True, help="new items (Parquet/CSV/JSONL with the catalog columns)")
    p.add_argument("--images-dir", default=None, help="base of relative image paths (default: catalog's directory)")
    p.add_argument(
        "--on-existing", choices=("skip", "error"), default="skip", help="items already in the bundle: skip or fail"
    )
    p.set_defaults(handler=_add_items)

    p = sub.add_parser("recommend", help="recommend from a bundle locally (no server)")
    p.add_argument("--bundle", required=True, help="bundles root, ROOT/<variant> or a version directory")
    p.add_argument("--variant", default=None, help="variant of a root holding several")
    p.add_argument("--user", default=None, help="user id (stored history + user embedding when known)")
    p.add_argument("--history", default="", help="comma-separated item ids, most recent first (default: none)")
    p.add_argument("--similar-to", default=None, help="item id: nearest neighbours instead of user recommendations")
    p.add_argument("--k", type=int, default=10, help="items to return (default: 10)")
    p.add_argument("--exclude", default="", help="comma-separated item ids never to return (default: none)")
    p.add_argument("--exclude-seen", action="store_true", help="drop items in the user's (and request) history")
    p.add_argument(
        "--category", action="append", default=[],
        help="only items in this category (repeatable; default: any)",
    )
    p.add_argument(
        "--exclude-category", action="append", default=[],
        help="never items in this category (repeatable; default: none)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--users", default=None, metavar="all|FILE",
        help="batch mode: every user the bundle knows (all), or a file of ids (parquet/csv user_id column, "
        "else one per line); writes --out; seen items are excluded unless --keep-seen",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="batch mode: Parquet file of user_id, item_id, rank, score")
    p.add_argument("--batch-size", type=int, default=256, help="batch mode: users per batched call (default 256)")
    p.add_argument("--keep-seen", action="store_true", help="batch mode: do not exclude the users' seen items")
    p.set_defaults(handler=_recommend)

    p = sub.add_parser("bundle-info", help="verify a bundle and print its manifest summary")
    p.add_argument("--bundle", required=True, help="bundles root, ROOT/<variant> or a version directory")
    p.add_argument("--variant", default=None, help="variant of a root holding several")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=_bundle_info)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _export(args: argparse.Namespace) -> int:
    from recfuse.bundle.export import export_model
    from recfuse.cli.progress import ProgressPrinter

    path = export_model(
        args.model, args.out, factory=args.factory, catalog=args.catalog, keep_versions=args.keep_versions,
        progress=ProgressPrinter(),
    )  # fmt: skip
    print(f"exported bundle {path}")
    print(_index_line(path))
    return 0


def _index_line(path: Path) -> str:
    """One line on the published index: its factory, the search parameters and the served recall."""
    from recfuse.bundle.manifest import read_manifest

    m = read_manifest(path)
    served = m.get("served_recall") or {}
    if not served:
        return f"  index {m['index_factory']}: served recall not measured (no query vectors)"
    params = ", ".join(f"{k}={v}" for k, v in served.get("search_params", {}).items())
    tuned = served.get("tuned")
    how = f"tuned {', '.join(f'{k}={v}' for k, v in tuned.items())} to {served['target']}" if tuned else "not tuned"
    met = "" if served.get("met") is None else ("; target met" if served["met"] else "; TARGET NOT MET")
    choice = m.get("index_choice")
    chosen = ""
    if choice:
        tried = ", ".join(f"{r['factory']} {r['recall']:.3f} @ {r['latency_ms']:.3f} ms" for r in choice["candidates"])
        chosen = (f"\n  factory auto chose {choice['chosen']} (served recall @ batch-1 latency, "
                  f"{choice['tried_on']}): {tried}")  # fmt: skip
    return (f"  index {m['index_factory']} ({params or 'exact'}; {how}): served recall@{served['k']} "
            f"{served['recall']:.4f} on {served['queries']}{met}{chosen}")  # fmt: skip


def _add_items(args: argparse.Namespace) -> int:
    from recfuse.bundle.incremental import add_items
    from recfuse.cli.progress import ProgressPrinter

    result = add_items(
        args.bundle, args.catalog, images_dir=args.images_dir, on_existing=args.on_existing, progress=ProgressPrinter()
    )
    print(
        f"added {result.added} item(s), skipped {result.skipped_existing} already present, "
        f"rejected {result.rejected}; published {result.path}"
    )
    print(_index_line(Path(result.path)))
    for item_id, reason in result.rejects[:20]:
        print(f"  rejected {item_id}: {reason}", file=sys.stderr)
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from recfuse.inference import Recommender

    if args.users is not None or args.out is not None:
        return _recommend_users(args)
    if args.keep_seen:
        raise InvalidRequestError("`--keep-seen` applies to batch mode only (`--users`); use `--exclude-seen` here")
    rec = Recommender.from_bundle(args.bundle, variant=args.variant)
    filters = {"include_categories": args.category, "exclude_categories": args.exclude_category}
    if args.similar_to is not None:
        if args.user or args.history:
            raise InvalidRequestError("`--similar-to` cannot be combined with `--user`/`--history`; pass one of them")
        result = rec.similar_items(args.similar_to, k=args.k, exclude_item_ids=_split(args.exclude), **filters)
    else:
        result = rec.recommend(
            user_id=args.user,
            history=_split(args.history),
            k=args.k,
            exclude_item_ids=_split(args.exclude),
            exclude_seen=args.exclude_seen,
            **filters,
        )
    rows = [
        {"rank": i + 1, "item_id": it.item_id, "title": rec.item_title(it.item_id), "score": it.score}
        for i, it in enumerate(result.items)
    ]
    if args.json:
        out = {
            "items": rows,
            "fallback": result.fallback,
            "variant": result.variant,
            "bundle_version": result.bundle_version,
            "query_ms": result.query_ms,
            "search_ms": result.search_ms,
            "skipped_history": result.skipped_history,
            "skipped_exclusions": result.skipped_exclusions,
        }
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(
        f"bundle {result.variant}/{result.bundle_version}  fallback: {result.fallback or 'none (model)'}  "
        f"query {result.query_ms:.2f} ms  search {result.search_ms:.2f} ms"
    )
    if result.skipped_history:
        print(f"skipped {result.skipped_history} unknown history item id(s)")
    width = max([len(it.item_id) for it in result.items] + [7])
    print(f"{'rank':>4}  {'item_id':<{width}}  {'score':>10}  title")
    for r in rows:
        print(f"{r['rank']:>4}  {r['item_id']:<{width}}  {r['score']:>10.4f}  {r['title']}")
    return 0


def _recommend_users(args: argparse.Namespace) -> int:
    if args.users is None or args.out is None:
        raise InvalidRequestError("batch mode needs both `--users all|FILE` and `--out recs.parquet`")
    if args.user or args.history or args.similar_to is not None or args.exclude_seen:
        raise InvalidRequestError(
            "`--users` cannot be combined with `--user`/`--history`/`--similar-to`/`--exclude-seen` "
            "(batch mode excludes seen items unless --keep-seen)"
        )
    from tqdm import tqdm

    from recfuse.inference import Recommender
    from recfuse.inference.batch import known_users, read_user_ids, recommend_all

    # user vectors precomputed at load. One search thread: with seen items excluded every query is its
    # own filtered search, too small to share, and waking OpenMP threads for each one costs more than
    # it saves (20k items, 64-d, k=100 on a busy 2-core machine: 132 users/s with all cores, 1046 with one)
    rec = Recommender.from_bundle(args.bundle, variant=args.variant, search_threads=1, user_vectors_mb=256)
    users = known_users(rec) if args.users == "all" else read_user_ids(args.users)
    with tqdm(total=len(dict.fromkeys(users)), unit="user", desc="recommend", file=sys.stderr) as bar:
        result = recommend_all(
            rec, users, args.k, args.out, batch_size=args.batch_size, exclude_seen=not args.keep_seen,
            exclude_item_ids=_split(args.exclude), include_categories=args.category,
            exclude_categories=args.exclude_category, progress=bar.update,
        )  # fmt: skip
    print(
        f"wrote {result.rows} rows for {result.users} users to {result.path} in {result.seconds:.2f} s "
        f"({result.users_per_second:.0f} users/s); unknown users {result.unknown_users}, "
        f"popularity fallback {result.fallback_users}, duplicate ids skipped {result.duplicate_users}"
    )
    return 0


def _bundle_info(args: argparse.Namespace) -> int:
    from recfuse.inference import Recommender

    info = Recommender.from_bundle(args.bundle, variant=args.variant).info()
    if args.json:
        print(json.dumps(dataclasses.asdict(info)))
        return 0
    for key, value in dataclasses.asdict(info).items():
        print(f"{key:>16}: {value}")
    print(f"{'verified':>16}: sha256 of every file in {Path(info.path).name} matches the manifest")
    return 0
