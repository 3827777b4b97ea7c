"""Foundation pieces: Keras 2 switch, error exit codes, id vocabularies, shared top-k, numpy query tower."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recfuse.data.vocab import IdVocab, id_str
from recfuse.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    NotFoundError,
    ResourceExhaustedError,
    SchemaError,
    UsageError,
    exit_code_for,
)
from recfuse.forward.query import NumpyQueryTower
from recfuse.ranking import TopK, masked_topk


def test_keras2_switch_is_set_by_importing_recfuse() -> None:
    code = "import recfuse, os; from recfuse._tfcheck import require_keras2; require_keras2(); print('ok')"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_keras3_fails_fast_naming_the_fix() -> None:
    code = (
        "import tensorflow as tf\n"
        "tf.keras.layers.Dense  # resolves the lazy tf.keras to Keras 3 before recfuse sets the switch\n"
        "import recfuse\n"
        "from recfuse._tfcheck import require_keras2\n"
        "require_keras2()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "recfuse needs Keras 2" in out.stderr and "TF_USE_LEGACY_KERAS=1" in out.stderr


def test_exit_codes() -> None:
    assert exit_code_for(UsageError("--k must be positive")) == 2
    assert exit_code_for(ConfigError("x")) == 3
    assert exit_code_for(SchemaError("x")) == 4
    assert exit_code_for(DataError("x")) == 4
    assert exit_code_for(NotFoundError("item 'x' not found")) == 6
    assert exit_code_for(ResourceExhaustedError("queue full")) == 7
    assert str(NotFoundError("item 'x' not found")) == "item 'x' not found"
    assert exit_code_for(ArtifactError("x")) == 5


def test_vocab_lookup_oov_and_round_trip(tmp_path: Path) -> None:
    v = IdVocab.build([3, "a", 3, np.int64(7)], num_oov=4)
    assert v.ids == ("3", "a", "7") and v.size == 7
    assert v.lookup(["3", 3, "a", 7.0]).tolist() == [4, 4, 5, 6]
    oov = v.lookup_one("never-seen")
    assert 0 <= oov < 4 and oov == v.lookup_one("never-seen")
    assert v.id_of(5) == "a"
    with pytest.raises(IndexError, match=r"index 1 is not a known id"):
        v.id_of(1)
    items = IdVocab.build(["x", "y"], num_oov=0)
    assert items.lookup(["y", "zz"]).tolist() == [1, -1]
    v.save(tmp_path / "v.json")
    assert IdVocab.load(tmp_path / "v.json") == v
    (tmp_path / "bad.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"has format 'other', expected 'recfuse.vocab/1'"):
        IdVocab.load(tmp_path / "bad.json")
    assert id_str(b"abc") == "abc" and id_str(12.0) == "12"


def test_masked_topk_matches_bruteforce() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    items = rng.normal(size=(200, 8)).astype(np.float32)
    exclude = [rng.choice(200, size=rng.integers(0, 30), replace=False) for _ in range(37)]
    top = masked_topk(q, items, k=10, exclude=exclude, block_size=16)
    idx, scores = top.rows, top.scores
    assert isinstance(top, TopK) and top == tuple(top)  # named, and still unpacks (rows, scores)
    assert idx.dtype == np.int64 and scores.dtype == np.float32 and idx.shape == scores.shape == (37, 10)
    full = q @ items.T
    for r in range(37):
        s = full[r].copy()
        s[exclude[r]] = -np.inf
        expected = np.argsort(-s, kind="stable")[:10]
        assert idx[r].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[r], s[expected], rtol=1e-6)
        assert not set(idx[r].tolist()) & set(exclude[r].tolist())
    with pytest.raises(ValueError, match=r"`exclude` must have one entry per query"):
        masked_topk(q, items, k=3, exclude=exclude[:3])
    with pytest.raises(ValueError, match=r"must be rank 2 with equal d"):
        masked_topk(q[:, :4], items, k=3)


def _random_tower(rng: np.random.Generator, d: int = 8, du: int = 4, users: int = 10) -> NumpyQueryTower:
    f = np.float32
    return NumpyQueryTower(
        attn_w=rng.normal(size=(d, 5)).astype(f),
        attn_b=rng.normal(size=5).astype(f),
        attn_v=rng.normal(size=5).astype(f),
        recency=-0.3,
        mlp=(
            (rng.normal(size=(d + du + 1, 16)).astype(f), rng.normal(size=16).astype(f)),
            (rng.normal(size=(16, d)).astype(f), rng.normal(size=d).astype(f)),
        ),
        user_embedding=rng.normal(size=(users, du)).astype(f),
    )


def test_numpy_query_tower_math_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tower = _random_tower(rng)
    items = rng.normal(size=(30, 8)).astype(np.float32)
    hist = np.array([[3, 5, -1], [-1, -1, -1]])
    out = tower.encode(items, np.array([1, 2]), hist)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # Hand computation for row 0.
    h = items[[3, 5]]
    s = np.tanh(h @ tower.attn_w + tower.attn_b) @ tower.attn_v + tower.recency * np.log1p([0.0, 1.0])
    a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    x = np.concatenate([a @ h, tower.user_embedding[1], [1.0]])
    x = np.maximum(x @ tower.mlp[0][0] + tower.mlp[0][1], 0) @ tower.mlp[1][0] + tower.mlp[1][1]
    np.testing.assert_allclose(out[0], x / np.linalg.norm(x), rtol=1e-4, atol=1e-5)
    # Empty history: pooled part is zero, has_history 0.
    x1 = np.concatenate([np.zeros(8), tower.user_embedding[2], [0.0]])
    x1 = np.maximum(x1 @ tower.mlp[0][0] + tower.mlp[0][1], 0) @ tower.mlp[1][0] + tower.mlp[1][1]
    np.testing.assert_allclose(out[1], x1 / np.linalg.norm(x1), rtol=1e-4, atol=1e-5)
    tower.save(tmp_path / "qt")
    again = NumpyQueryTower.load(tmp_path / "qt")
    np.testing.assert_array_equal(again.encode(items, np.array([1, 2]), hist), out)
    (tmp_path / "qt.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"cannot load query tower"):
        NumpyQueryTower.load(tmp_path / "qt")
