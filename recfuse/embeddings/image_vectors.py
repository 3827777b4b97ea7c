"""Run an image backbone once over a catalog (the ``recfuse features`` command's engine).

Variants that read the cached vectors (``source = "vector"``) then train without decoding or
convolving a single image. Images are decoded in a thread pool, one batch ahead of the backbone.
Items without an image, and items whose image cannot be read, get no vector (``None``) and are
counted, never silently dropped.

Example:
    >>> enc = BackboneEncoder("mobilenet_v3_small", image_size=32)
    >>> res = compute_backbone_features(images, item_ids, "data", enc)  # doctest: +SKIP
    >>> res.vectors.shape, res.n_missing                               # doctest: +SKIP
    ((1500, 576), 12)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
