"""QueryTower (TF) equals NumpyQueryTower on random inputs, incl. padding and empty histories."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from recfuse.forward.query import NumpyQueryTower  # noqa: E402
from recfuse.models.query_tower import QueryTower  # noqa: E402


def _inputs(seed: int, n_items: int = 30, b: int = 16, length: int = 7, user_rows: int = 12):
    rng = np.random.default_rng(seed)
    item_matrix = rng.normal(size=(n_items, 8)).astype(np.float32)
    user_idx = rng.integers(0, max(user_rows, 1), size=b).astype(np.int64)
    hist_idx = rng.integers(0, n_items, size=(b, length)).astype(np.int64)
    lengths = rng.integers(0, length + 1, size=b)
    lengths[0] = 0  # an empty history
    lengths[1] = length  # a full one
    hist_idx[np.arange(length)[None, :] >= lengths[:, None]] = -1
    hist_pos = np.broadcast_to(np.arange(length, dtype=np.float32), (b, length)).copy()
    return item_matrix, user_idx, hist_idx, hist_pos


@pytest.mark.parametrize(("user_rows", "hidden", "normalize"), [(12, (16,), True), (0, (), False), (12, (16, 8), True)])
def test_tf_tower_matches_numpy_forward(user_rows: int, hidden: tuple[int, ...], normalize: bool) -> None:
    tf.keras.utils.set_random_seed(0)
    tower = QueryTower(dim=8, user_rows=user_rows, hidden=hidden, normalize=normalize)
    tower.build_for(8)
    tower.recency.assign([0.7])  # non-zero so the recency term is exercised
    e, u, h, p = _inputs(1, user_rows=user_rows)
    got_tf = tower(tf.constant(e), tf.constant(u), tf.constant(h), tf.constant(p)).numpy()
    np_tower = NumpyQueryTower.from_arrays(tower.export_arrays(), normalize=normalize)
    got_np = np_tower.encode(e, u, h, p)
    assert got_tf.shape == (16, 8)
    assert np.max(np.abs(got_tf - got_np)) <= 1e-5
    # empty history: pooled part is zero, so the output differs from a non-empty one
    assert not np.allclose(got_np[0], got_np[1])
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got_np, axis=1), 1.0, atol=1e-5)


def test_padding_values_do_not_matter_and_save_load_round_trip(tmp_path) -> None:
    tf.keras.utils.set_random_seed(1)
    tower = QueryTower(dim=8, user_rows=5, hidden=(16,))
    tower.build_for(8)
    e, u, h, p = _inputs(2, user_rows=5)
    a = tower(e, u, h, p).numpy()
    p2 = p + (h < 0) * 100.0  # positions of padded slots changed: masked, so no effect
    b = tower(e, u, h, p2).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    paths = tower.to_numpy().save(tmp_path / "qt")
    assert [x.name for x in paths] == ["qt.npz", "qt.json"]
    loaded = NumpyQueryTower.load(tmp_path / "qt")
    assert np.max(np.abs(loaded.encode(e, u, h, p) - a)) <= 1e-5


def test_get_config_round_trip_gives_identical_outputs() -> None:
    tf.keras.utils.set_random_seed(2)
    tower = QueryTower(dim=8, user_rows=5, hidden=(16,), normalize=True, name="qt")
    tower.build_for(8)
    clone = QueryTower.from_config(tower.get_config())
    clone.build_for(8)
    clone.set_weights(tower.get_weights())
    cfg = tower.get_config()
    assert {"dim", "user_rows", "user_dim", "attention_hidden", "hidden", "normalize"} <= set(cfg)
    e, u, h, p = _inputs(3, user_rows=5)
    np.testing.assert_array_equal(tower(e, u, h, p).numpy(), clone(e, u, h, p).numpy())
