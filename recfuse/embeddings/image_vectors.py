"""Image backbone vectors for a catalog, computed once (the ``recfuse features`` job).

Variants that read the cached vectors (``source = "vector"``) then train without decoding or
convolving a single image. Images are decoded in a thread pool, one batch ahead of the backbone.
Items without an image, and items whose image cannot be read, get no vector (null) and are
counted, never silently dropped. :func:`add_image_vectors` returns the catalog with the vectors as a
new fixed-size list column; :func:`compute_backbone_features` is the loop underneath.

Example:
    >>> enc = backbone_encoder("mobilenet_v3_small", image_size=32)
    >>> table, res = add_image_vectors(catalog, enc, "image", "data")  # doctest: +SKIP
    >>> res.vectors.shape, res.n_missing                              # doctest: +SKIP
    ((1500, 576), 12)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import tensorflow as tf

from recfuse.data.images import load_image
from recfuse.errors import SchemaError
from recfuse.layers.image import BackboneEncoder
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)


@dataclass
class BackboneFeatures:
    """Result of :func:`compute_backbone_features`.

    Attributes:
        vectors: ``[n, F]`` float32 (zeros where ``present`` is False).
        present: ``[n]`` bool — a vector was computed.
        n_missing: items with no image value.
        unreadable: ``(item_id, message)`` of images that did not decode.
    """

    vectors: FloatArray
    present: np.ndarray
    n_missing: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _is_null(v: object) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v)


def compute_backbone_features(
    images: Sequence[object],
    item_ids: Sequence[object],
    images_dir: str | Path,
    encoder: BackboneEncoder,
    batch_size: int = 64,
    num_threads: int = 4,
    on_batch: Callable[[int], object] | None = None,
) -> BackboneFeatures:
    """Backbone vectors of every item's image.

    Args:
        images: image values (path or bytes or null) in catalog order.
        item_ids: ids in the same order (for messages).
        images_dir: base of relative paths.
        encoder: the backbone (inference mode).
        batch_size: images per forward pass.
        num_threads: decoding threads.
        on_batch: called with the number of items processed in each batch (progress bars).

    Returns:
        :class:`BackboneFeatures`.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    n = len(images)
    size = encoder.image_size
    vectors = np.zeros((n, encoder.output_dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    result = BackboneFeatures(vectors, present)

    def _decode(i: int) -> np.ndarray | None:
        try:
            return load_image(images[i], images_dir, size, item_id=item_ids[i])
        except SchemaError as err:
            result.unreadable.append((str(item_ids[i]), str(err)))
            return None

    forward = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)

    def _decode_batch(start: int) -> list[np.ndarray | None]:
        return [None if _is_null(images[i]) else _decode(i) for i in range(start, min(start + batch_size, n))]

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        starts = list(range(0, n, batch_size))
        # decode one batch ahead of the backbone (bounded memory)
        pending = {k: pool.submit(_decode_batch, s) for k, s in enumerate(starts[:2])}
        for k, start in enumerate(starts):
            decoded = pending.pop(k).result()
            if k + 2 < len(starts):
                pending[k + 2] = pool.submit(_decode_batch, starts[k + 2])
            rows = [start + j for j, px in enumerate(decoded) if px is not None]
            result.n_missing += sum(1 for i in range(start, start + len(decoded)) if _is_null(images[i]))
            if rows:
                batch = np.stack([px for px in decoded if px is not None]).astype(np.float32)
                vectors[rows] = forward(tf.constant(batch)).numpy()
                present[rows] = True
            if on_batch is not None:
                on_batch(len(decoded))
    logger.info(
        "backbone %s: %d vectors, %d items without image, %d unreadable",
        encoder.backbone,
        int(present.sum()),
        result.n_missing,
        len(result.unreadable),
    )
    return result


def backbone_encoder(backbone: str, image_size: int, weights: str = "") -> BackboneEncoder:
    """The headless ``tf.keras.applications`` backbone named ``backbone`` in inference mode
    (``weights``: a local weights file, never downloaded; ``""`` = random init)."""
    return BackboneEncoder(backbone, image_size, weights)


def check_image_column(table: pa.Table, image_column: str, source: str = "catalog") -> None:
    """Raise :class:`SchemaError` when ``table`` (named ``source`` in the message) has no ``image_column``."""
    if image_column not in table.column_names:
        raise SchemaError(
            f"catalog {source!r} has no image column {image_column!r} (columns: {table.column_names}); "
            "pass --image-column"
        )


def add_image_vectors(
    table: pa.Table,
    encoder: BackboneEncoder,
    image_column: str,
    images_dir: str | Path,
    column: str = "image_vec",
    batch_size: int = 64,
    on_batch: Callable[[int], object] | None = None,
    source: str = "catalog",
) -> tuple[pa.Table, BackboneFeatures]:
    """``table`` with a ``column`` of backbone vectors (``fixed_size_list<float32>[F]``, null where
    there is no readable image) replacing any column of that name, and the run's counts.

    Args:
        table: the catalog (``item_id`` names items in messages; row numbers when it has none).
        encoder: the backbone (:func:`backbone_encoder`).
        image_column: column holding image paths (relative to ``images_dir``) or bytes.
        images_dir: base of relative image paths.
        column: name of the new vector column.
        batch_size: images per forward pass.
        on_batch: called with the number of items processed in each batch (progress bars).
        source: how messages name the catalog (its path).

    Raises:
        SchemaError: ``table`` has no ``image_column``.
    """
    check_image_column(table, image_column, source)
    ids = table.column("item_id").to_pylist() if "item_id" in table.column_names else list(range(table.num_rows))
    res = compute_backbone_features(
        table.column(image_column).to_pylist(), ids, images_dir, encoder, batch_size, on_batch=on_batch
    )
    dim = res.vectors.shape[1]
    flat = pa.array(res.vectors.reshape(-1), type=pa.float32())
    vec = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~res.present))
    if column in table.column_names:
        table = table.drop_columns([column])
    return table.append_column(column, vec), res
