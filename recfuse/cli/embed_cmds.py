"""`recfuse embed`: stream a catalog through a trained candidate tower into Parquet shards."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from recfuse.errors import ArtifactError, UsageError


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "embed",
        help="embed a catalog with a trained model (resumable Parquet shards)",
        description="Stream a catalog through the candidate tower; rerun the same command to resume.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle version dir or bundles root (ROOT/<variant>, via CURRENT)")
    src.add_argument("--model", help="training output directory")
    p.add_argument("--catalog", required=True, help="catalog Parquet file (item_id + content columns)")
    p.add_argument("--out", required=True, help="output directory of part-*.parquet shards")
    p.add_argument("--images-dir", default="", help="base of relative image paths (default: the catalog's dir)")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: batches over a Ray cluster (`ray` extra) (default: local)",
    )
    p.add_argument("--batch-size", type=int, default=512, help="items embedded per batch (default: 512)")
    p.add_argument(
        "--batches-per-shard",
        type=int,
        default=16,
        help="batches per part-*.parquet shard; a resumed job skips finished shards (default: 16)",
    )
    p.set_defaults(handler=run_embed)


def resolve_model_dir(bundle: str) -> Path:
    """The ``model/`` directory of a bundle version dir, or of ``ROOT/<variant>``'s CURRENT version."""
    root = Path(bundle)
    if (root / "model").is_dir():
        return root / "model"
    current = root / "CURRENT"
    if current.is_file():
        version = root / current.read_text().strip()
        if (version / "model").is_dir():
            return version / "model"
        raise ArtifactError(f"bundle version {str(version)!r} (from {str(current)!r}) has no model/ directory")
    raise ArtifactError(
        f"--bundle {bundle!r} is neither a bundle version directory (with model/) nor a variant root with CURRENT"
    )


def run_embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from recfuse.embeddings import Progress, run_embedding_job
    from recfuse.embeddings.model_encoder import ModelEncoder

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    model_dir = resolve_model_dir(args.bundle) if args.bundle else Path(args.model)
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {str(model_dir)!r} does not exist; train one with `recfuse train`")
    images_dir = args.images_dir or str(Path(args.catalog).parent)
    bar = tqdm(unit="items", desc="embed", file=sys.stderr, dynamic_ncols=True)

    def progress(p: Progress) -> None:
        if p.rows_total > 0:
            bar.total = p.rows_total
        bar.n = p.rows_done
        bar.set_postfix_str(f"{p.items_per_s:,.0f} items/s", refresh=False)
        bar.refresh()

    try:
        report = run_embedding_job(
            args.catalog,
            args.out,
            partial(ModelEncoder, model_dir, images_dir),
            batch_size=args.batch_size,
            batches_per_shard=args.batches_per_shard,
            engine=args.engine,
            progress=progress,
        )
    finally:
        bar.close()
    print(
        f"embedded {report.embedded} of {report.rows} rows ({report.rejects} rejected -> "
        f"{report.out_dir / 'rejects.parquet'}), {len(report.shards)} shards "
        f"({report.skipped_shards} reused), dim {report.dim}, {report.seconds:.1f} s "
        f"({report.items_per_s:,.0f} items/s)"
    )
    return 0
