"""What goes into a bundle, as plain numpy/pandas values (no TensorFlow).

:class:`BundleContents` is filled either by :func:`recfuse.bundle.export.export_model` (from a
trained model directory), by :func:`recfuse.bundle.incremental.add_items` (an existing bundle plus
new items) or directly by tests/benchmarks. :meth:`BundleContents.validate` checks every shape and
id relation before anything is written, so a bad export fails before it touches the bundles root.

Item rows are the single id space of a bundle: row ``i`` of ``item_vectors`` is ``item_ids[i]``, its
item-vocabulary index (``IdVocab(item_ids, num_oov=0)``), its FAISS id and its row in the query
tower's item matrix.

Example:
    >>> contents = BundleContents(variant="attention", model_id="m1", item_ids=ids,  # doctest: +SKIP
    ...     item_vectors=vecs, items=meta, query_tower=tower, user_vocab=users,
    ...     category_vocab=cats, popularity={"a": 3}, user_history={"u1": ["a"]})
    >>> write_bundle("bundles", contents)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfuse.config import IndexConfig
from recfuse.data.vocab import IdVocab, id_str
from recfuse.errors import ArtifactError
from recfuse.forward.query import NumpyQueryTower
from recfuse.itemitem import ItemHead
from recfuse.types import FloatArray

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(kind: str, value: str) -> None:
    """Variant and version names become directory names: letters, digits, ``_ . -``; no leading dot."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ArtifactError(
            f"`{kind}` must be 1-128 characters of letters, digits, '_', '.', '-' not starting with '.' or '-' "
            f"(it names a directory), got {value!r}"
        )


@dataclass
class BundleContents:
    """Everything a bundle version holds.

    Attributes:
        variant: fusion variant name (the bundle's directory under the root).
        model_id: id of the trained model (kept across incremental adds; the manifest's ``model_version``).
        item_ids: ``[n]`` catalog item ids (str), unique; row order of everything item-shaped.
        item_vectors: ``[n, d]`` float32 item embeddings, what the query tower reads a history from.
        item_scale: ``[n]`` positive factor each item is ranked by (the popularity prior's
            ``1 + γ·log(1 + count)``, ``model.new_item_scale`` for items never trained on); the
            index holds ``item_vectors × item_scale``. None: 1 for every item.
        items: display/filter metadata with columns ``item_id``, ``title`` and ``categories``
            (list of str); items without a row get title ``""`` and no categories.
        query_tower: numpy query tower with output dim ``d`` (its item matrix is ``item_vectors``).
        user_vocab: user id vocabulary (OOV buckets for unknown users).
        category_vocab: category vocabulary of the model (may be empty).
        popularity: item id -> interaction count, for cold-start fallbacks.
        user_history: user id -> item ids, most recent first (training interactions).
        config: training config dict (``RecfuseConfig.to_dict()``).
        index_config: FAISS index choice for this bundle.
        item_vocab: optional; when given it must equal ``IdVocab(item_ids, num_oov=0)``.
        model_dir: optional trained model directory copied to ``model/`` (for embedding new items).
        query_savedmodel_dir: optional TF SavedModel of the query tower copied to
            ``query_tower_savedmodel/``.
        parent_version: bundle version this one was derived from (incremental add), else ``""``.
        served_queries: ``[m, d]`` query vectors like the ones the index will serve (from the model's
            query tower); export measures the index's served recall on them and tunes efSearch /
            nprobe to ``index_config.target_recall``, and stores them for ``add-items``. None: only
            the item-vector recall is measured.
        served_queries_about: what ``served_queries`` are, for the manifest.
        item_head: the model's item-item head (:class:`recfuse.itemitem.ItemHead` over exactly
            these ``n`` items), written to ``item_head/`` and served as a re-rank; None: no head.
        item_head_candidates: index candidates beyond ``k`` the served re-rank scores exactly
            (the model config's ``[item_head] candidates``).
    """

    variant: str
    model_id: str
    item_ids: Sequence[str]
    item_vectors: FloatArray
    items: pd.DataFrame
    query_tower: NumpyQueryTower
    user_vocab: IdVocab
    category_vocab: IdVocab
    popularity: Mapping[str, int]
    user_history: Mapping[str, Sequence[str]]
    config: Mapping[str, Any] = field(default_factory=dict)
    index_config: IndexConfig = field(default_factory=IndexConfig)
    item_vocab: IdVocab | None = None
    model_dir: Path | None = None
    query_savedmodel_dir: Path | None = None
    parent_version: str = ""
    served_queries: FloatArray | None = None
    served_queries_about: str = ""
    item_scale: FloatArray | None = None
    item_head: ItemHead | None = None
    item_head_candidates: int = 200

    @property
    def ranked_vectors(self) -> FloatArray:
        """``[n, d]`` the vectors the index ranks by: ``item_vectors × item_scale``."""
        vectors = np.asarray(self.item_vectors, dtype=np.float32)
        if self.item_scale is None:
            return vectors
        return np.ascontiguousarray(vectors * np.asarray(self.item_scale, np.float32)[:, None])

    def validate(self) -> None:
        """Check shapes, dtypes and id relations; normalises ``item_ids``/``items`` in place.

        Raises:
            ArtifactError: naming the field, the value found and what is expected.
        """
        check_name("variant", self.variant)
        if not str(self.model_id):
            raise ArtifactError("`model_id` must be a non-empty string, got ''")
        self.item_ids = [id_str(x) for x in self.item_ids]
        vecs = np.asarray(self.item_vectors)
        if vecs.ndim != 2 or vecs.shape[0] == 0 or vecs.shape[1] == 0:
            raise ArtifactError(f"`item_vectors` must be a non-empty [num_items, dim] array, got shape {vecs.shape}")
        if vecs.shape[0] != len(self.item_ids):
            raise ArtifactError(
                f"`item_vectors` has {vecs.shape[0]} rows but `item_ids` has {len(self.item_ids)} ids; "
                "row i must be the vector of item_ids[i]"
            )
        if not np.isfinite(vecs).all():
            bad = int(np.flatnonzero(~np.isfinite(vecs).all(axis=1))[0])
            raise ArtifactError(f"`item_vectors` row {bad} (item {self.item_ids[bad]!r}) has NaN/inf values")
        self.item_vectors = np.ascontiguousarray(vecs, dtype=np.float32)
        if self.item_scale is not None:
            scale = np.asarray(self.item_scale, dtype=np.float32)
            if scale.shape != (len(self.item_ids),) or not (np.isfinite(scale) & (scale > 0)).all():
                raise ArtifactError(
                    f"`item_scale` must hold one positive finite factor per item ({len(self.item_ids)}), got shape "
                    f"{scale.shape} with min {float(scale.min()) if scale.size else 'n/a'}"
                )
            self.item_scale = scale
        if len(set(self.item_ids)) != len(self.item_ids):
            seen: set[str] = set()
            dup = next(x for x in self.item_ids if x in seen or seen.add(x))  # type: ignore[func-returns-value]
            raise ArtifactError(f"`item_ids` must be unique, got duplicate {dup!r}")
        dim = vecs.shape[1]
        if self.query_tower.dim != dim or self.query_tower.history_dim != dim:
            raise ArtifactError(
                f"query tower output dim {self.query_tower.dim} / history input dim {self.query_tower.history_dim} "
                f"must equal the item embedding dim {dim}"
            )
        ue = self.query_tower.user_embedding
        if ue is not None and ue.shape[0] != self.user_vocab.size:
            raise ArtifactError(
                f"query tower user_embedding has {ue.shape[0]} rows but the user vocabulary needs "
                f"{self.user_vocab.size} (num_oov={self.user_vocab.num_oov} + {len(self.user_vocab)} users)"
            )
        expected_vocab = IdVocab(tuple(self.item_ids), num_oov=0)
        if self.item_vocab is not None and (
            self.item_vocab.num_oov != 0 or tuple(self.item_vocab.ids) != expected_vocab.ids
        ):
            raise ArtifactError(
                "`item_vocab` must list exactly `item_ids` in row order with num_oov=0, got "
                f"{len(self.item_vocab)} ids with num_oov={self.item_vocab.num_oov}"
            )
        self.item_vocab = expected_vocab
        self.items = self._aligned_items()
        for uid, hist in self.user_history.items():
            if not isinstance(hist, (list, tuple, np.ndarray)):
                raise ArtifactError(f"`user_history[{uid!r}]` must be a list of item ids, got {type(hist).__name__}")
        for iid, count in self.popularity.items():
            if not (isinstance(count, (int, np.integer)) or (isinstance(count, float) and math.isfinite(count))):
                raise ArtifactError(f"`popularity[{iid!r}]` must be a count, got {count!r}")
        if self.item_head is not None:
            if self.item_head.n_items != len(self.item_ids):
                raise ArtifactError(
                    f"`item_head` covers {self.item_head.n_items} items but the bundle has {len(self.item_ids)}; "
                    "its rows and columns must be the bundle's item rows"
                )
            c = self.item_head_candidates
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
                raise ArtifactError(f"`item_head_candidates` must be an integer >= 1, got {c!r}")
        for path_field in ("model_dir", "query_savedmodel_dir"):
            p = getattr(self, path_field)
            if p is not None and not Path(p).is_dir():
                raise ArtifactError(f"`{path_field}` {str(p)!r} is not a directory; pass an existing one or None")

    def _aligned_items(self) -> pd.DataFrame:
        """Metadata with one row per item in row order (missing rows: empty title, no categories)."""
        df = self.items
        missing_cols = [c for c in ("item_id", "title") if c not in df.columns]
        if missing_cols:
            raise ArtifactError(f"`items` must have columns item_id, title[, categories]; missing {missing_cols}")
        ids = df["item_id"].map(id_str)
        unknown = sorted(set(ids) - set(self.item_ids))
        if unknown:
            raise ArtifactError(
                f"`items` has {len(unknown)} item id(s) with no vector, e.g. {unknown[:3]}; "
                "every metadata row must belong to `item_ids`"
            )
        titles = dict(zip(ids, df["title"].fillna("").astype(str)))
        cats_col = df["categories"] if "categories" in df.columns else pd.Series([[]] * len(df), index=df.index)
        cats = dict(zip(ids, cats_col))
        return pd.DataFrame(
            {
                "item_id": list(self.item_ids),
                "title": [titles.get(i, "") for i in self.item_ids],
                "categories": [_as_str_list(cats.get(i)) for i in self.item_ids],
            }
        )


def _as_str_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [c for c in value.split("|") if c]
    if isinstance(value, float) and math.isnan(value):
        return []
    return [str(c) for c in value]  # type: ignore[attr-defined]
