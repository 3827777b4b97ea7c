"""Pre-flight checks: bad input stops BEFORE any model is built, with a message naming the field.

Checked here (cheap, whole-table): every declared modality has its column(s) in the catalog, vector
columns have the declared width and no NaN/inf, the fusion name is registered, and the training split
is not empty. The data loader validates rows in depth; this guards the trainer against a config that
does not fit the data it is given.

Example:
    >>> check_training_inputs(cfg, dataset.items, split.train)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfuse.config import RecfuseConfig
from recfuse.data.prepared_split import TrainingRows
from recfuse.errors import ConfigError, DataError, SchemaError

logger = logging.getLogger(__name__)


def check_training_inputs(cfg: RecfuseConfig, items: pd.DataFrame, train: pd.DataFrame | TrainingRows) -> None:
    """Raise on a config/data mismatch; returns ``None`` when training can start.

    Raises:
        SchemaError: a modality column is missing, a vector has the wrong width or a NaN.
        DataError: the training split (or the catalog) is empty.
    """
    if len(items) == 0:
        raise DataError("the catalog (`data.items`) has no rows; nothing to train on")
    if len(train) == 0:
        raise DataError(
            "the training split is empty (0 interactions after validation and splitting); "
            "check `data.interactions` and `data.split`"
        )
    for m in cfg.modalities:
        for col in m.columns:
            if col not in items.columns:
                raise SchemaError(
                    f"modality {m.name!r} (`modalities.{m.name}.columns`) reads column {col!r}, which the catalog "
                    f"lacks; catalog columns: {sorted(map(str, items.columns))}; add the column or fix the config"
                )
        if m.source == "vector":
            _check_vector_column(items, m.name, m.column, m.dim)
    for note in [*modality_warnings(cfg, items), *sparsity_warnings(cfg, train)]:
        logger.warning("%s", note)


#: below this median of distinct training items per user, a user-id embedding is warned about
SPARSE_USERS_MEDIAN = 10


def median_user_items(train: pd.DataFrame | TrainingRows) -> float:
    """Median number of distinct training items per user (0 for an empty split).

    ``train`` is the training frame, or a prepared folder's :class:`TrainingRows` (counted by ``recfuse prepare``).
    """
    if isinstance(train, TrainingRows):
        return train.median_user_items()
    if train.empty:
        return 0.0
    return float(train.groupby("user_id")["item_id"].nunique().median())


def resolve_auto_settings(cfg: RecfuseConfig, train: pd.DataFrame | TrainingRows) -> RecfuseConfig:
    """``cfg`` with its data-dependent ``"auto"`` settings decided on the training split.

    ``model.user_id_embedding = "auto"`` becomes true when the median user has at least
    :data:`SPARSE_USERS_MEDIAN` distinct training items and false below (see
    :func:`sparsity_warnings` for why). The decision is logged; the returned config is the one the
    model is built from and stored with. Off, ``model.user_id_buckets`` becomes 0 as well (there is
    no user table to hash into).
    """
    if cfg.model.user_id_embedding != "auto":
        return cfg
    median = median_user_items(train)
    use = median >= SPARSE_USERS_MEDIAN
    logger.info(
        'model.user_id_embedding = "auto": %s (median %g distinct training items per user, threshold %d)',
        "on" if use else "off, the query is the history alone",
        median,
        SPARSE_USERS_MEDIAN,
    )
    buckets = cfg.model.user_id_buckets if use else 0
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, user_id_embedding=use, user_id_buckets=buckets)
    )


def sparsity_warnings(cfg: RecfuseConfig, train: pd.DataFrame | TrainingRows) -> list[str]:
    """What the config will likely overfit on this training split (nothing is changed).

    A user-id embedding row is trained on its user's training targets only; with a handful per user
    it learns to point at items that are masked at test time. On MicroLens-50k (median 4 training
    items per user) turning it off lifted validation HR@10 from 1.00x to 1.43x EASE under
    leave-one-out (bench/README.md, "What holds recfuse back on real data"). Only an explicit
    ``true`` is warned about: ``"auto"`` decides by the same threshold.
    """
    if cfg.model.user_id_embedding is not True or train.empty:
        return []
    median = median_user_items(train)
    if median >= SPARSE_USERS_MEDIAN:
        return []
    return [
        f"users have a median of {median:g} distinct training items (< {SPARSE_USERS_MEDIAN}) and "
        "`model.user_id_embedding` is true: on data this sparse the user-id row overfits its few targets "
        "(MicroLens-50k: HR@10 +43% without it); consider `model.user_id_embedding = false`, which builds the "
        'query from the history alone (or "auto", the default, which decides by this threshold)'
    ]


def modality_warnings(cfg: RecfuseConfig, items: pd.DataFrame) -> list[str]:
    """What the configured modalities will not do on this catalog (nothing is changed; training goes on).

    A modality none of whose items has a value (0% coverage) trains a branch that learns nothing, and
    a model with no content modality left is the item-id embedding alone, whatever fusion it names
    (said unless the config asks for exactly that: ``modalities = []`` with a variant name other than
    the fusion's).

    Args:
        items: the validated catalog (its ``has_<modality>`` flags give the coverage).

    Returns:
        One message per problem, naming the modality, its columns and the fix.
    """
    notes: list[str] = []
    with_data = []
    for m in cfg.modalities:
        flag = f"has_{m.name}"
        coverage = float(items[flag].mean()) if flag in items.columns and len(items) else 1.0
        if coverage == 0.0:
            notes.append(
                f"modality {m.name!r} ({m.kind}, columns {list(m.columns)}) has a value for 0% of the "
                f"{len(items)} catalog items: its branch learns nothing; fill the column(s) or remove the modality "
                "from [[modalities]]"
            )
        else:
            with_data.append(m.name)
    if not with_data and cfg.modalities:
        notes.append(
            f"no content modality has data: the item tower is the item-id embedding alone, so "
            f"`model.fusion = {cfg.model.fusion!r}` fuses nothing and new items cannot be embedded from content "
            f"(variant {cfg.variant!r}); declare a modality the catalog fills, or declare `modalities = []` for an "
            "item-id-only model"
        )
    return notes


def _check_vector_column(items: pd.DataFrame, modality: str, column: str, dim: int) -> None:
    values = items[column].tolist()
    present = [(i, v) for i, v in enumerate(values) if v is not None and not _is_na_scalar(v)]
    for row, vec in present:
        arr = np.asarray(vec, dtype=np.float64).reshape(-1)
        if arr.shape[0] != dim:
            raise SchemaError(
                f"column {column!r} of modality {modality!r} must hold vectors of width {dim} "
                f"(`modalities.{modality}.dim`), got width {arr.shape[0]} for item "
                f"{items['item_id'].iloc[row]!r} (row {row}); fix the column or the declared dim"
            )
        if not np.all(np.isfinite(arr)):
            raise SchemaError(
                f"column {column!r} of modality {modality!r} has a NaN/inf value for item "
                f"{items['item_id'].iloc[row]!r} (row {row}); clean the vector or drop the row"
            )


def _is_na_scalar(value: object) -> bool:
    return isinstance(value, float) and np.isnan(value)


def resumable_settings(cfg: RecfuseConfig, split: Any) -> dict[str, Any]:
    """What a run's checkpoints depend on: the whole config except ``train.epochs`` / ``train.out_dir``
    (raising the epoch cap or moving the directory is a legitimate resume) and the split's fingerprint."""
    raw = cfg.to_dict()
    raw["train"] = {k: v for k, v in raw["train"].items() if k not in ("epochs", "out_dir")}
    raw["split"] = split.fingerprint() if hasattr(split, "fingerprint") else None
    return raw


def check_resumable(saved: dict[str, Any] | None, current: dict[str, Any], out: Path) -> None:
    """Raise :class:`ConfigError` when ``out``'s checkpoints were made with other settings.

    Resuming them would continue a different model (another batch size, loss or split) and report
    it as this config's. ``saved`` is None for runs written before settings were recorded: accepted.
    """
    if saved is None:
        logger.warning("%s: the checkpoints record no settings; resuming them as they are", out)
        return
    changed = _diff(saved, current)
    if changed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(
            f"{out} holds checkpoints of a run with other settings ({shown}{more}); resuming would continue "
            f"that model. Train into another --out directory, or delete {out / 'checkpoints'} to start over"
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [(prefix, a, b)]
