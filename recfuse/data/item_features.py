"""Per-item feature table for the candidate tower (one row per catalog item, images decoded once).

:func:`build_item_features` turns a validated catalog into plain numpy arrays keyed by feature name;
the two-tower model keeps them in memory and gathers the rows of each batch by item index, so a
training example is only a few integers. Keys:

* ``item_idx`` int64 ``[n]`` (index in the item vocabulary, -1 unknown) and ``item_id_mask``
  float32 ``[n]`` (1 for warm items — seen in training — so cold items rank from content alone);
* with ``model.item_id_buckets`` = ``B`` > 0, ``item_id_row`` int64 ``[n]``: the item-id table row
  each item reads, ``crc32(item_id) % B`` (:func:`recfuse.data.vocab.hash_buckets`), a function of
  the id alone, so training, ``embed`` and ``add-items`` give an item the same row;
* per modality ``m``: ``m.name`` -> image pixels ``[n, S, S, 3]`` float32 in [0, 1] (sources
  ``raw``/``backbone``), a float32 vector ``[n, dim]`` (source ``vector``), whitespace-joined
  tokens ``[n]`` object/str (text ``tokens``), or ``"a|b"`` category strings ``[n]`` (categorical);
  and ``f"{m.name}_mask"`` float32 ``[n]`` (1 present, 0 missing).

Example:
    >>> table = build_item_features(items, cfg, "data_samples", item_vocab)   # doctest: +SKIP
    >>> table["text"][0], table["text_mask"][0]                                # doctest: +SKIP
    ('red running shoes', 1.0)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.config import ModalityConfig, RecfuseConfig
from recfuse.data.images import load_image
from recfuse.data.text_tokens import tokenize_fields
from recfuse.data.vocab import IdVocab, hash_buckets, id_str
from recfuse.errors import ConfigError, SchemaError
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

CATEGORY_SEPARATOR = "|"
RESERVED_NAMES = ("item_idx", "item_id", "item_id_row")


def _is_null(v: object) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _require_columns(items: pd.DataFrame, m: ModalityConfig) -> None:
    missing = [c for c in m.columns if c not in items.columns]
    if missing:
        raise SchemaError(
            f"modality {m.name!r} reads column(s) {missing} which the catalog lacks (columns: {list(items.columns)}); "
            f"add the column or set `modalities.{m.name}.columns`"
        )


def check_modality_names(cfg: RecfuseConfig) -> None:
    """Modality names become feature keys: they must not collide with the item-id keys."""
    for m in cfg.modalities:
        if m.name in RESERVED_NAMES:
            raise ConfigError(f"`modalities.name` {m.name!r} is reserved ({list(RESERVED_NAMES)}); rename the modality")


def text_tokens(items: pd.DataFrame, m: ModalityConfig) -> np.ndarray:
    """``[n]`` object array of token strings of a text modality (its columns tokenised in order)."""
    _require_columns(items, m)
    cols = [items[c].tolist() for c in m.columns]
    out = np.empty(len(items), dtype=object)
    for i, fields in enumerate(zip(*cols)):
        out[i] = tokenize_fields([f if isinstance(f, str) else None for f in fields], m.char_ngrams)
    return out


def _category_values(v: object) -> list[str]:
    if _is_null(v):
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v if not _is_null(x) and str(x)]
    return [id_str(v)]


def category_strings(items: pd.DataFrame, m: ModalityConfig) -> np.ndarray:
    """``[n]`` object array of ``"a|b"`` category strings (``""`` = none).

    With several columns each value is prefixed ``column=`` so ``brand=x`` and ``categories=x`` stay
    distinct. A ``|`` inside a value becomes ``/``.
    """
    _require_columns(items, m)
    prefix = len(m.columns) > 1
    cols = [items[c].tolist() for c in m.columns]
    out = np.empty(len(items), dtype=object)
    for i, row in enumerate(zip(*cols)):
        vals: list[str] = []
        for c, v in zip(m.columns, row):
            for s in _category_values(v):
                s = s.replace(CATEGORY_SEPARATOR, "/")
                vals.append(f"{c}={s}" if prefix else s)
        out[i] = CATEGORY_SEPARATOR.join(dict.fromkeys(vals))
    return out


def vector_column(items: pd.DataFrame, m: ModalityConfig) -> tuple[FloatArray, FloatArray]:
    """``([n, dim] float32, mask [n])`` of a precomputed vector column (null rows: zeros, mask 0).

    Raises:
        SchemaError: a row has the wrong width or a non-finite value (names the item and column).
    """
    _require_columns(items, m)
    col = m.column
    out = np.zeros((len(items), m.dim), dtype=np.float32)
    mask = np.zeros(len(items), dtype=np.float32)
    ids = items["item_id"].tolist() if "item_id" in items.columns else list(range(len(items)))
    for i, v in enumerate(items[col].tolist()):
        if _is_null(v):
            continue
        try:
            arr = np.asarray(v, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise SchemaError(
                f"item {id_str(ids[i])!r}: column {col!r} must be a list of {m.dim} floats, got {v!r:.80}"
            ) from None
        if arr.shape[0] != m.dim:
            raise SchemaError(
                f"item {id_str(ids[i])!r}: column {col!r} has width {arr.shape[0]}, expected {m.dim} "
                f"(`modalities.{m.name}.dim`); fix the data or the configured dim"
            )
        if not np.all(np.isfinite(arr)):
            raise SchemaError(
                f"item {id_str(ids[i])!r}: column {col!r} contains NaN/inf ({arr[~np.isfinite(arr)][:3].tolist()}); "
                "fix or drop the vector (null marks a missing one)"
            )
        out[i] = arr
        mask[i] = 1.0
    return out, mask


def image_pixels(
    items: pd.DataFrame, m: ModalityConfig, images_dir: str | Path, num_threads: int = 0
) -> tuple[FloatArray, FloatArray]:
    """``([n, S, S, 3] float32 in [0,1], mask [n])``; decoded in a thread pool (PIL releases the GIL)."""
    _require_columns(items, m)
    size = m.image_size
    values = items[m.column].tolist()
    ids = items["item_id"].tolist() if "item_id" in items.columns else list(range(len(items)))
    out = np.zeros((len(items), size, size, 3), dtype=np.float32)
    mask = np.zeros(len(items), dtype=np.float32)
    todo = [i for i, v in enumerate(values) if not _is_null(v) and not (isinstance(v, str) and not v)]

    def _load(i: int) -> None:
        out[i] = load_image(values[i], images_dir, size, item_id=id_str(ids[i]))
        mask[i] = 1.0

    workers = num_threads or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(todo) < 64:
        for i in todo:
            _load(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_load, todo))
    logger.info("modality %s: decoded %d images, %d items without image", m.name, len(todo), len(items) - len(todo))
    return out, mask


def build_item_features(
    items: pd.DataFrame,
    cfg: RecfuseConfig,
    images_dir: str | Path,
    item_vocab: IdVocab,
    warm_items: Set[str] | None = None,
    num_threads: int = 0,
) -> dict[str, np.ndarray]:
    """Feature arrays of every catalog item, in catalog row order.

    Args:
        items: validated catalog (``item_id`` + the columns each modality reads).
        cfg: configuration (``cfg.modalities``).
        images_dir: base directory of relative image paths.
        item_vocab: item vocabulary (``item_idx`` = its index; unknown ids get -1 / OOV bucket).
        warm_items: ids whose item-id embedding may be used (seen in training); ``None`` = every
            id known to ``item_vocab``.
        num_threads: image decoding threads (0 = up to 8).

    Returns:
        ``{name: array}`` as described in the module docstring.

    Raises:
        SchemaError: a modality's column is missing, a vector has the wrong width or NaN, an image
            does not decode.
        ConfigError: a modality name collides with the item-id keys.
    """
    check_modality_names(cfg)
    if "item_id" not in items.columns:
        raise SchemaError(f"catalog has no `item_id` column (columns: {list(items.columns)}); add it")
    ids = [id_str(v) for v in items["item_id"].tolist()]
    idx = item_vocab.lookup(ids)
    known = idx >= 0 if item_vocab.num_oov == 0 else np.array([i in item_vocab for i in ids], dtype=bool)
    warm = known if warm_items is None else known & np.array([i in warm_items for i in ids], dtype=bool)
    table: dict[str, np.ndarray] = {"item_idx": idx.astype(np.int64), "item_id_mask": warm.astype(np.float32)}
    if cfg.model.item_id_buckets:
        table["item_id_row"] = hash_buckets(ids, cfg.model.item_id_buckets)
    for m in cfg.modalities:
        if m.kind == "image" and m.source in ("raw", "backbone"):
            table[m.name], table[f"{m.name}_mask"] = image_pixels(items, m, images_dir, num_threads)
        elif m.source == "vector":
            table[m.name], table[f"{m.name}_mask"] = vector_column(items, m)
        elif m.kind == "text":
            tokens = text_tokens(items, m)
            table[m.name] = tokens
            table[f"{m.name}_mask"] = np.array([1.0 if t else 0.0 for t in tokens], dtype=np.float32)
        else:
            cats = category_strings(items, m)
            table[m.name] = cats
            table[f"{m.name}_mask"] = np.array([1.0 if c else 0.0 for c in cats], dtype=np.float32)
        logger.info("modality %s: %d/%d items present", m.name, int(table[f"{m.name}_mask"].sum()), len(items))
    return table
