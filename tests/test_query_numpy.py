"""The serving forward (precomputed per-item attention logits, QueryEncoder) equals the plain numpy forward."""

from __future__ import annotations

import numpy as np
import pytest

from recfuse.forward.query import NumpyQueryTower, QueryEncoder


def _tower(rng: np.random.Generator, d: int = 8, du: int = 4, users: int = 10, layers: int = 2) -> NumpyQueryTower:
    f = np.float32
    widths = [d + (du if du else 0) + 1, *([16] * (layers - 1)), d]
    mlp = tuple(
        (rng.normal(size=(a, b)).astype(f), rng.normal(size=b).astype(f)) for a, b in zip(widths[:-1], widths[1:])
    )
    return NumpyQueryTower(
        attn_w=rng.normal(size=(d, 5)).astype(f),
        attn_b=rng.normal(size=5).astype(f),
        attn_v=rng.normal(size=5).astype(f),
        recency=-0.3,
        mlp=mlp,
        user_embedding=rng.normal(size=(users, du)).astype(f) if du else None,
    )


def _batch(rng: np.random.Generator, n_items: int, b: int = 12, length: int = 7, users: int = 10):
    hist = rng.integers(0, n_items, size=(b, length)).astype(np.int64)
    lengths = rng.integers(0, length + 1, size=b)
    lengths[0], lengths[1] = 0, length  # an empty and a full history
    hist[np.arange(length)[None, :] >= lengths[:, None]] = -1
    return rng.integers(0, users, size=b).astype(np.int64), hist


@pytest.mark.parametrize(("du", "layers", "normalize"), [(4, 2, True), (0, 1, False), (4, 3, True)])
def test_precomputed_logits_equal_plain_forward(du: int, layers: int, normalize: bool) -> None:
    rng = np.random.default_rng(0)
    tower = _tower(rng, du=du, layers=layers)
    tower = NumpyQueryTower.from_arrays(tower.to_arrays(), normalize=normalize)
    items = rng.normal(size=(40, 8)).astype(np.float32)
    users, hist = _batch(rng, 40)
    plain = tower.encode(items, users, hist)
    logits = tower.attention_logits(items, chunk=7)  # several blocks
    assert logits.shape == (40,) and logits.dtype == np.float32
    # float32, computed in blocks vs in one matmul: rounding differs by ~1e-7 (atol for logits near 0)
    expected = np.tanh(items @ tower.attn_w + tower.attn_b) @ tower.attn_v
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tower.encode(items, users, hist, item_logits=logits), plain, rtol=1e-6, atol=1e-6)
    enc = QueryEncoder(tower, items)
    rows = [h[h >= 0] for h in hist]
    one = np.stack([enc.encode_one(int(u), r) for u, r in zip(users, rows)])
    np.testing.assert_allclose(one, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.encode_many(users[:3], rows[:3]), plain[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.encode_many(users, rows), plain, rtol=1e-5, atol=1e-6)  # padded path
    assert one.dtype == np.float32


def test_cold_items_appended_get_their_logits() -> None:
    rng = np.random.default_rng(1)
    tower = _tower(rng)
    items = rng.normal(size=(30, 8)).astype(np.float32)
    new = rng.normal(size=(5, 8)).astype(np.float32)
    grown = QueryEncoder(tower, items).with_items(new)
    full = np.concatenate([items, new])
    np.testing.assert_allclose(grown.item_logits, tower.attention_logits(full), rtol=1e-6)
    hist = np.array([33, 2, 31], np.int64)  # cold items inside a history
    want = tower.encode(full, np.array([3]), hist[None, :])[0]
    np.testing.assert_allclose(grown.encode_one(3, hist), want, rtol=1e-5, atol=1e-6)


def test_shape_errors_name_the_argument() -> None:
    rng = np.random.default_rng(2)
    tower = _tower(rng)
    with pytest.raises(ValueError, match=r"`item_matrix` must be \[num_items, 8\], got shape \(4, 3\)"):
        tower.attention_logits(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"`item_logits` must be \[4\] \(one per item row\), got shape \(3,\)"):
        QueryEncoder(tower, np.zeros((4, 8), np.float32), np.zeros(3, np.float32))
