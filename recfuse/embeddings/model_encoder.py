"""Encoder over a trained model directory: the candidate tower embeds each Arrow batch.

Rows that fail (unreadable image, wrong vector width, bad types) are isolated: the batch is retried
row by row to find them, they are rejected with the error message, and the rest is embedded together.

Example:
    >>> from functools import partial
    >>> factory = partial(ModelEncoder, "runs/model", "data_samples")  # doctest: +SKIP
    >>> run_embedding_job("items.parquet", "out/emb", factory)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from recfuse.embeddings.encoder import EncodeResult
from recfuse.errors import RecfuseError

logger = logging.getLogger(__name__)

ROW_ERRORS = (RecfuseError, ValueError, TypeError, KeyError, OSError)


class ModelEncoder:
    """Embed catalog batches with ``TrainedModel.load(model_dir).embed_items`` (TensorFlow candidate tower).

    Args:
        model_dir: training output directory (``recfuse train``) or a bundle's ``model/`` copy.
        images_dir: base directory of relative image paths in the catalog.
    """

    def __init__(self, model_dir: str | Path, images_dir: str | Path) -> None:
        from recfuse.models.trained import TrainedModel  # TensorFlow: only when a model is used

        self.model = TrainedModel.load(model_dir)
        self.images_dir = Path(images_dir)
        self.dim = int(self.model.query_tower.dim)

    def _embed(self, df) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.asarray(self.model.embed_items(df, self.images_dir), dtype=np.float32)

    def encode(self, batch: pa.RecordBatch) -> EncodeResult:
        df = batch.to_pandas()
        ids = [str(x) for x in df["item_id"]]
        try:
            return EncodeResult(ids, self._embed(df))
        except ROW_ERRORS as err:
            logger.info("batch of %d failed (%s); isolating bad rows", len(df), err)
        good: list[int] = []
        rejects: list[tuple[str, str]] = []
        for i in range(len(df)):
            try:
                self._embed(df.iloc[i : i + 1])
                good.append(i)
            except ROW_ERRORS as err:
                rejects.append((ids[i], f"{type(err).__name__}: {err}"[:500]))
        vecs = self._embed(df.iloc[good]) if good else np.zeros((0, self.dim), np.float32)
        return EncodeResult([ids[i] for i in good], vecs, rejects)
