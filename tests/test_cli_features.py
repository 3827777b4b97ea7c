"""`recfuse features` end to end through the real CLI entry point, on a few generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from PIL import Image

from recfuse.cli.main import main
from recfuse.data.images import load_image
from recfuse.layers.image import BackboneEncoder


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(4):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(root / "images" / f"{i}.png")
    (root / "images" / "broken.png").write_bytes(b"definitely not a png")
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e", "f"],
            "title": ["t"] * 6,
            "image": ["images/0.png", "images/1.png", None, "images/2.png", "images/broken.png", "images/3.png"],
        }
    )
    items.to_parquet(root / "items.parquet")
    model = tf.keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg"
    )
    model.save_weights(str(root / "w.h5"))
    return root, root / "w.h5"


@pytest.mark.slow
def test_features_writes_vector_column_and_counts_missing(catalog, capsys: pytest.CaptureFixture[str]) -> None:
    root, weights = catalog
    out = root / "out" / "items_feat.parquet"
    code = main(
        [
            "features", "--items", str(root / "items.parquet"), "--out", str(out), "--backbone", "mobilenet_v3_small",
            "--weights", str(weights), "--image-size", "32", "--batch-size", "2", "--column", "img_vec",
        ]
    )  # fmt: skip
    assert code == 0
    printed, progress = capsys.readouterr()
    assert "4 vectors, 1 without image (null), 1 unreadable (null)" in printed and "unreadable: e:" in printed
    table = pq.read_table(out)
    assert table.column_names == ["item_id", "title", "image", "img_vec"]
    assert table.schema.field("img_vec").type == pa.list_(pa.float32(), 576)
    vecs = table.column("img_vec").to_pylist()
    assert [v is None for v in vecs] == [False, False, True, False, True, False]
    enc = BackboneEncoder("mobilenet_v3_small", 32, str(weights))
    px = np.stack([load_image(f"images/{i}.png", root, 32) for i in (0, 1, 2, 3)])
    expected = enc(px).numpy()
    got = np.array([vecs[i] for i in (0, 1, 3, 5)], np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file
    assert "loading backbone mobilenet_v3_small ..." in progress and "mobilenet_v3_small features: 6/6 (" in progress


def test_features_bad_arguments_exit_with_config_code(catalog, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = catalog
    args = ["features", "--items", str(root / "items.parquet"), "--image-size", "32"]
    assert main([*args, "--out", str(root / "x.parquet"), "--weights", str(root / "missing.h5")]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert main([*args, "--out", str(root / "x.parquet"), "--backbone", "vgg16", "--weights", ""]) == 3
    assert "unknown image backbone 'vgg16'" in capsys.readouterr().err
    assert main([*args, "--out", str(root / "x.csv"), "--weights", ""]) == 2
    assert "--out must be a .parquet file" in capsys.readouterr().err
    assert main([*args, "--out", str(root / "x.parquet"), "--weights", "", "--image-column", "pic"]) == 4
    assert "no image column 'pic'" in capsys.readouterr().err
    assert not (root / "x.parquet").exists()
