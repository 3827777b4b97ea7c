"""`recfuse embed` through the real CLI: error exits, and (slow) a real trained model's candidate tower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.cli.main import main


def test_embed_rejects_missing_bundle_and_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["embed", "--bundle", str(tmp_path / "nope"), "--catalog", "x.parquet", "--out", str(tmp_path / "o")])
    assert code == 5
    assert "is neither a bundle version directory (with model/) nor a variant root" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "CURRENT").write_text("v1\n")
    (tmp_path / "b" / "v1").mkdir()
    assert main(["embed", "--bundle", str(tmp_path / "b"), "--catalog", "x", "--out", str(tmp_path / "o")]) == 5
    assert "has no model/ directory" in capsys.readouterr().err
    assert main(["embed", "--model", str(tmp_path / "m"), "--catalog", "x", "--out", str(tmp_path / "o")]) == 5
    assert "model directory" in capsys.readouterr().err
    code = main(["embed", "--model", str(tmp_path), "--catalog", "x", "--out", "o", "--batch-size", "0"])
    assert code == 2 and "--batch-size must be >= 1, got 0" in capsys.readouterr().err


CONFIG = """
[data]
items = "{root}/items.parquet"
interactions = "{root}/interactions.parquet"
max_history = 5

[[modalities]]
name = "text"
kind = "text"
columns = ["title", "description"]
vocab_size = 300
max_tokens = 12
embedding_dim = 8

[model]
dim = 8
query_hidden = [16]
fusion_hidden = [16]

[train]
epochs = 1
batch_size = 128
"""


@pytest.mark.slow
def test_embed_with_a_trained_model_matches_embed_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recfuse.data.synthetic import generate
    from recfuse.models.trained import TrainedModel

    generate(tmp_path, n_items=150, n_users=60, seed=2)
    (tmp_path / "cfg.toml").write_text(CONFIG.format(root=tmp_path))
    model = tmp_path / "model"
    assert main(["train", "--config", str(tmp_path / "cfg.toml"), "--out", str(model), "--no-progress"]) == 0
    out = tmp_path / "emb"
    argv = ["embed", "--model", str(model), "--catalog", str(tmp_path / "items.parquet"), "--out", str(out),
            "--batch-size", "32", "--batches-per-shard", "2"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "embedded 150 of 150 rows (0 rejected" in text and "3 shards (0 reused), dim 8" in text
    shards = sorted(out.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(s) for s in shards])
    got = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    trained = TrainedModel.load(model)
    items = pq.read_table(tmp_path / "items.parquet").to_pandas()
    want = trained.embed_items(items, tmp_path)
    assert table.column("item_id").to_pylist() == [str(i) for i in items["item_id"]]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert main(argv) == 0  # resume over a finished run reuses everything
    assert "3 shards (3 reused)" in capsys.readouterr().out
