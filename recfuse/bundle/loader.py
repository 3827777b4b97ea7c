"""Find, verify and load a bundle version (numpy + pandas + faiss; no TensorFlow, no pickle).

``load_bundle`` accepts a bundles root (with ``variant=`` or a root holding one variant), a variant
directory (follows ``CURRENT``) or a version directory. It checks the manifest's format version,
every file's size and sha256, and that the dims agree (item vectors vs query tower vs index vs
manifest), the metric, that every item-shaped file lists the same ids in the same order, and an
item-item head's arrays when the bundle has one (read only after the checksums passed). Any
mismatch raises :class:`~recfuse.errors.ArtifactError` naming the file and the mismatch.

Example:
    >>> b = load_bundle("bundles", variant="attention")    # doctest: +SKIP
    >>> b.item_vectors.shape, b.index.ntotal                # doctest: +SKIP
    ((10000, 64), 10000)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.bundle import manifest as mf
from recfuse.bundle.item_head import read_bundle_head
from recfuse.bundle.publish import CURRENT, list_variants, read_current
from recfuse.bundle.writer import index_config_from_dict
from recfuse.config import IndexConfig
from recfuse.data.vocab import IdVocab
from recfuse.errors import ArtifactError
from recfuse.forward.query import NumpyQueryTower
from recfuse.index import ItemIndex
from recfuse.itemitem import ItemHead
from recfuse.ranking import popularity_scale
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle version in memory.

    Attributes:
        path: the version directory.
        variant, version: names from the manifest; model_id: the trained model's id (the manifest's
            ``model_version`` key).
        manifest: the parsed ``manifest.json``.
        item_ids: ``[n]`` item ids in row order (row = vocab index = FAISS id).
        item_vectors: ``[n, d]`` float32 item embeddings, what the query tower reads a history from.
        item_scale: ``[n]`` each item's ranking factor (the popularity prior's; 1 without one): the
            index ranks by ``item_vectors × item_scale`` (:attr:`ranked_vectors`).
        items: ``item_id, title, categories`` (list of str), one row per item in row order.
        query_tower: numpy query tower (output dim ``d``).
        user_vocab, item_vocab, category_vocab: id vocabularies.
        popularity: ``item_id, count`` sorted by count descending.
        user_history: ``user_id, items`` (list of item ids, most recent first).
        config: training config dict.
        index_config: FAISS config the index was built/loaded with.
        index: the loaded FAISS index (ids are item rows).
        item_head: the item-item head (``item_head/``, :mod:`recfuse.bundle.item_head`), None when the
            bundle has none; item_head_candidates: index candidates beyond ``k`` its re-rank scores.
    """

    path: Path
    variant: str
    version: str
    model_id: str
    manifest: dict[str, Any]
    item_ids: list[str]
    item_vectors: FloatArray
    items: pd.DataFrame
    query_tower: NumpyQueryTower
    user_vocab: IdVocab
    item_vocab: IdVocab
    category_vocab: IdVocab
    popularity: pd.DataFrame
    user_history: pd.DataFrame
    config: dict[str, Any]
    index_config: IndexConfig
    index: ItemIndex
    item_scale: FloatArray | None = None
    item_head: ItemHead | None = None
    item_head_candidates: int = 0

    @property
    def ranked_vectors(self) -> FloatArray:
        """``[n, d]`` the vectors the index holds: :attr:`item_vectors` × :attr:`item_scale`."""
        if self.item_scale is None:
            return self.item_vectors
        return np.ascontiguousarray(self.item_vectors * self.item_scale[:, None])

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def model_dir(self) -> Path | None:
        """The copied training model directory (``model/``), when the bundle has one."""
        p = self.path / mf.MODEL_DIR
        return p if p.is_dir() else None

    @property
    def root(self) -> Path:
        """The bundles root (parent of the variant directory)."""
        return self.path.parent.parent


def resolve_version_dir(path: str | Path, variant: str | None = None) -> Path:
    """The version directory meant by ``path`` (root, variant dir or version dir).

    Raises:
        ArtifactError: nothing published there, an unknown variant, or several variants without ``variant``.
    """
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"bundle path {str(p)!r} does not exist; pass a bundles root, variant or version directory")
    if (p / mf.MANIFEST).is_file():
        if p.name.startswith("."):
            raise ArtifactError(f"{str(p)!r} is an unpublished temporary bundle directory; load its variant directory")
        return p
    if (p / CURRENT).is_file():
        return p / read_current(p)
    if variant is not None:
        vdir = p / variant
        if not (vdir / CURRENT).is_file():
            raise ArtifactError(
                f"bundles root {str(p)!r} has no published variant {variant!r}; published: {list_variants(p)}"
            )
        return vdir / read_current(vdir)
    variants = list_variants(p)
    if len(variants) == 1:
        return p / variants[0] / read_current(p / variants[0])
    if not variants:
        raise ArtifactError(f"{str(p)!r} holds no published bundle (no */CURRENT); run `recfuse export` first")
    raise ArtifactError(f"bundles root {str(p)!r} holds several variants {variants}; pass variant=<one of them>")


def load_bundle(path: str | Path, variant: str | None = None, verify: bool = True) -> LoadedBundle:
    """Load and verify a bundle version.

    Args:
        path: bundles root, ``ROOT/<variant>`` or a version directory.
        variant: which variant of a root holding several.
        verify: check sha256 of every file (sizes, formats and dims are always checked).

    Returns:
        The :class:`LoadedBundle`.

    Raises:
        ArtifactError: naming the file and the mismatch.
    """
    vdir = resolve_version_dir(path, variant)
    manifest = mf.read_manifest(vdir)
    mf.verify_files(vdir, manifest["files"], checksums=verify)
    dim, n = int(manifest["embedding_dim"]), int(manifest["item_count"])

    tower = NumpyQueryTower.load(vdir / mf.QUERY_TOWER)
    if tower.dim != dim or tower.history_dim != dim:
        raise ArtifactError(
            f"{str(vdir / (mf.QUERY_TOWER + '.npz'))!r}: query tower dims (out {tower.dim}, history in "
            f"{tower.history_dim}) do not match the manifest embedding_dim {dim}"
        )
    item_ids, vectors, scale = _read_embeddings(vdir / mf.EMBEDDINGS, n, dim)
    item_vocab = IdVocab.load(vdir / mf.VOCAB_ITEMS)
    if item_vocab.num_oov != 0 or list(item_vocab.ids) != item_ids:
        raise ArtifactError(
            f"{str(vdir / mf.VOCAB_ITEMS)!r}: item vocabulary ({len(item_vocab)} ids, num_oov={item_vocab.num_oov}) "
            f"does not list the {len(item_ids)} ids of {mf.EMBEDDINGS} in row order with num_oov=0"
        )
    user_vocab = IdVocab.load(vdir / mf.VOCAB_USERS)
    if tower.user_embedding is not None and tower.user_embedding.shape[0] != user_vocab.size:
        raise ArtifactError(
            f"{str(vdir / mf.VOCAB_USERS)!r}: {user_vocab.size} user rows but the query tower's user_embedding "
            f"has {tower.user_embedding.shape[0]}"
        )
    items = _read_parquet(vdir / mf.ITEMS)
    if items["item_id"].tolist() != item_ids:
        raise ArtifactError(f"{str(vdir / mf.ITEMS)!r}: item_id column does not match {mf.EMBEDDINGS} row order")
    items["categories"] = [list(c) if c is not None else [] for c in items["categories"]]

    index_cfg = index_config_from_dict(manifest["index_config"])
    if manifest["metric"] != index_cfg.metric:
        raise ArtifactError(
            f"{str(vdir / mf.MANIFEST)!r}: metric {manifest['metric']!r} differs from index_config.metric "
            f"{index_cfg.metric!r}"
        )
    index = ItemIndex.load(vdir / mf.INDEX, index_cfg)
    if index.dim != dim or index.ntotal != n:
        raise ArtifactError(
            f"{str(vdir / mf.INDEX)!r}: index holds {index.ntotal} vectors of dim {index.dim}, manifest says "
            f"{n} items of dim {dim}"
        )
    index_metric = getattr(index, "metric", index_cfg.metric)
    if index_metric != index_cfg.metric:
        raise ArtifactError(
            f"{str(vdir / mf.INDEX)!r}: index metric {index_metric!r}, manifest says {index_cfg.metric!r}"
        )
    config = json.loads((vdir / mf.CONFIG).read_text(encoding="utf-8"))
    popularity = _read_parquet(vdir / mf.POPULARITY)
    if scale is None:  # written before rank_scale was stored: the vectors are the ranked ones
        vectors, scale = _legacy_plain(vectors, item_ids, popularity, config)
    head, head_candidates = read_bundle_head(vdir, manifest, n)  # after verify_files: checksummed
    bundle = LoadedBundle(
        path=vdir,
        variant=str(manifest["variant"]),
        version=str(manifest["version"]),
        model_id=str(manifest["model_version"]),
        manifest=manifest,
        item_ids=item_ids,
        item_vectors=vectors,
        items=items,
        query_tower=tower,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        category_vocab=IdVocab.load(vdir / mf.VOCAB_CATEGORIES),
        popularity=popularity,
        user_history=_read_parquet(vdir / mf.USER_HISTORY),
        config=config,
        index_config=index_cfg,
        index=index,
        item_scale=None if scale is None or bool((scale == 1.0).all()) else scale,
        item_head=head,
        item_head_candidates=head_candidates,
    )
    logger.info("loaded bundle %s (%d items, dim %d, %s)", vdir, n, dim, manifest["index_factory"])
    return bundle


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as err:
        raise ArtifactError(f"bundle file {str(path)!r} is not readable Parquet: {err}") from None


def _read_embeddings(path: Path, n: int, dim: int) -> tuple[list[str], FloatArray, FloatArray | None]:
    """Item ids, vectors and ranking factors (None for a file written before they were stored)."""
    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=["item_id", "vector", *(["rank_scale"] if "rank_scale" in names else [])])
    except (OSError, pa.ArrowException) as err:
        raise ArtifactError(f"bundle file {str(path)!r} is not readable Parquet: {err}") from None
    col = table.column("vector").combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != dim:
        raise ArtifactError(
            f"{str(path)!r}: column 'vector' has type {col.type}, expected fixed_size_list<float>[{dim}]"
        )
    if table.num_rows != n:
        raise ArtifactError(f"{str(path)!r}: {table.num_rows} rows, manifest item_count says {n}")
    vectors = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, dim)
    scale = None
    if "rank_scale" in table.column_names:
        scale = np.asarray(table.column("rank_scale").to_numpy(zero_copy_only=False), dtype=np.float32)
        if not (np.isfinite(scale) & (scale > 0)).all():
            raise ArtifactError(f"{str(path)!r}: column 'rank_scale' holds a non-positive or non-finite factor")
    return [str(x) for x in table.column("item_id").to_pylist()], np.ascontiguousarray(vectors), scale


def _legacy_plain(
    ranked: FloatArray, item_ids: list[str], popularity: pd.DataFrame, config: dict[str, Any]
) -> tuple[FloatArray, FloatArray]:
    """Plain vectors and factors of a bundle that stored its vectors already multiplied by the
    popularity prior's factor (from its training config and popularity table)."""
    model_cfg = config.get("model", {}) if isinstance(config, dict) else {}
    prior = float(model_cfg.get("popularity_prior", 0.0) or 0.0)
    new_scale = float(model_cfg.get("new_item_scale", 1.0) or 1.0)
    counts_of = dict(zip(popularity["item_id"].astype(str), popularity["count"].astype(np.int64)))
    counts = np.array([counts_of.get(i, 0) for i in item_ids], np.float64)
    scale = popularity_scale(counts, prior, new_scale).astype(np.float32)
    return np.ascontiguousarray(ranked / scale[:, None]), scale
