"""`recfuse features`: run an image backbone once over a catalog and store the vectors as a column.

Example:
    recfuse features --config cfg.toml --items data_samples/items.parquet --out items_feat.parquet \\
        --backbone mobilenet_v3_small --weights ~/weights/mobilenet_v3_small_notop.h5 --image-size 96

The output is the input catalog plus a fixed-size float list column (default ``image_vec``); items
without a usable image get a null vector and are counted in the printed summary. Then declare
``{name = "image", kind = "image", source = "vector", columns = ["image_vec"], dim = F}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "features",
        help="compute image backbone vectors for a catalog (cached features for fast training)",
        description="Run a tf.keras.applications backbone (local weights file, never downloaded) over every "
        "item image and write the catalog with a new vector column to --out (Parquet, atomic write).",
    )
    p.add_argument("--config", default="", help="recfuse TOML config (image modality and [data] defaults)")
    p.add_argument("--items", default="", help="catalog file (default: [data] items)")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument(
        "--images-dir",
        default="",
        help="base of relative image paths (default: [data] images_dir or the catalog's directory)",
    )
    p.add_argument(
        "--backbone", default="", help="mobilenet_v3_small | mobilenet_v3_large | efficientnet_b0 | resnet50"
    )
    p.add_argument("--weights", default=None, help="local weights file of the headless backbone ('' = random init)")
    p.add_argument("--image-size", type=int, default=0, help="input side in pixels (default: the image modality's)")
    p.add_argument("--column", default="image_vec", help="name of the new vector column (default image_vec)")
    p.add_argument(
        "--image-column", default="", help="catalog column holding the images (default: the image modality's)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.set_defaults(handler=_features)


def _features(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from recfuse.config import ModalityConfig, RecfuseConfig
    from recfuse.data.readers import read_table
    from recfuse.errors import ConfigError, SchemaError
    from recfuse.fsio import atomic_write_parquet
    from recfuse.layers.backbone_features import compute_backbone_features
    from recfuse.layers.image import BackboneEncoder

    cfg = RecfuseConfig.from_toml(args.config) if args.config else RecfuseConfig()
    images = [m for m in cfg.modalities if m.kind == "image"]
    m = images[0] if images else ModalityConfig(name="image", kind="image")
    items_path = Path(args.items or cfg.data.items)
    images_dir = Path(args.images_dir or cfg.data.images_dir or items_path.parent)
    image_size = args.image_size or m.image_size
    if image_size < 16:
        raise ConfigError(f"--image-size must be >= 16, got {image_size}")
    image_col = args.image_column or ("image" if m.source == "vector" else m.column)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"--out must be a .parquet file, got {str(out)!r}")

    if items_path.suffix.lower() == ".parquet" and items_path.is_file():
        table = pq.read_table(items_path)
    else:
        table = pa.Table.from_pandas(read_table(items_path), preserve_index=False)
    if image_col not in table.column_names:
        raise SchemaError(
            f"catalog {str(items_path)!r} has no image column {image_col!r} (columns: {table.column_names}); "
            "pass --image-column"
        )
    ids = table.column("item_id").to_pylist() if "item_id" in table.column_names else list(range(table.num_rows))
    encoder = BackboneEncoder(
        args.backbone or m.backbone, image_size, m.backbone_weights if args.weights is None else args.weights
    )
    with tqdm(total=table.num_rows, desc=f"{encoder.backbone} features", unit="item") as bar:
        res = compute_backbone_features(
            table.column(image_col).to_pylist(),
            ids,
            images_dir,
            encoder,
            args.batch_size,
            on_batch=bar.update,
        )
    dim = res.vectors.shape[1]
    flat = pa.array(res.vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~res.present))
    if args.column in table.column_names:
        table = table.drop_columns([args.column])
    atomic_write_parquet(out, table.append_column(args.column, column))
    print(
        f"wrote {table.num_rows} items to {out} with column {args.column!r} ({dim} floats, backbone "
        f"{encoder.backbone}, image size {image_size}): {int(res.present.sum())} vectors, "
        f"{res.n_missing} without image (null), {len(res.unreadable)} unreadable (null)"
    )
    for item_id, message in res.unreadable[:5]:
        print(f"  unreadable: {item_id}: {message}")
    return 0
