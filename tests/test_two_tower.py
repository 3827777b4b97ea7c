"""TwoTowerModel: retrieval loss paths (logQ, accidental hits, mixed negatives), add_loss, memory bank."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow

from recfuse.models.query_tower import QueryTower  # noqa: E402
from recfuse.models.two_tower import TwoTowerModel  # noqa: E402


class _IdTower(tf.keras.Model):
    """Minimal candidate tower over the feature dict (item-id embedding), with an add_loss term."""

    def __init__(self, n: int, d: int, extra_loss: float = 0.0) -> None:
        super().__init__()
        self.emb = tf.keras.layers.Embedding(n, d)
        self.extra_loss = extra_loss

    def call(self, features, training=False):
        x = self.emb(features["item_idx"]) + 0.0 * features["feat"][:, :1]
        if training and self.extra_loss:
            self.add_loss(tf.constant(self.extra_loss))
        return tf.math.l2_normalize(x, axis=1)


def _model(n_items: int = 20, d: int = 8, **kw) -> TwoTowerModel:
    tf.keras.utils.set_random_seed(0)
    table = {
        "item_idx": np.arange(n_items, dtype=np.int64),
        "feat": np.random.default_rng(0).normal(size=(n_items, 3)).astype(np.float32),
    }
    prob = np.linspace(1.0, 2.0, n_items) / np.linspace(1.0, 2.0, n_items).sum()
    extra = kw.pop("extra_loss", 0.0)
    model = TwoTowerModel(QueryTower(d, user_rows=10, hidden=(16,)), _IdTower(n_items, d, extra), table, prob, **kw)
    model.compute_loss(_batch([0, 1]))  # build every variable
    model.refresh_memory_bank()
    return model


def _pair(a: dict, b: dict) -> tuple[TwoTowerModel, TwoTowerModel]:
    first, second = _model(**a), _model(**b)
    second.set_weights(first.get_weights())
    return first, second


def _batch(item_idx: list[int]) -> dict[str, tf.Tensor]:
    b = len(item_idx)
    hist = np.full((b, 3), -1, np.int64)
    hist[:, 0] = (np.asarray(item_idx) + 1) % 20
    return {
        "user_idx": tf.constant(np.arange(b) % 10, tf.int64),
        "hist_idx": tf.constant(hist),
        "hist_pos": tf.constant(np.tile(np.arange(3, dtype=np.float32), (b, 1))),
        "item_idx": tf.constant(item_idx, tf.int64),
    }


def test_loss_decreases_when_fitting_a_learnable_pattern() -> None:
    model = _model(temperature=0.2)
    model.refresh_memory_bank()
    rng = np.random.default_rng(0)
    items = rng.integers(0, 20, size=512)
    data = _batch(items.tolist())
    ds = tf.data.Dataset.from_tensor_slices({k: v.numpy() for k, v in data.items()}).batch(64)
    model.compile(tf.keras.optimizers.Adam(0.05))
    first = float(model.compute_loss(data))
    hist = model.fit(ds, epochs=6, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert float(model.compute_loss(data)) < first


def test_logq_correction_changes_the_loss() -> None:
    on, off = _pair({"logq_correction": True}, {"logq_correction": False})
    batch = _batch([0, 5, 9, 19])
    assert not np.isclose(float(on.compute_loss(batch)), float(off.compute_loss(batch)))


def test_logq_correction_is_exact_for_items_expected_more_than_once_per_batch() -> None:
    """The loss equals the in-batch softmax with logits - log(B * p) (a common factor cancels), also
    when B * p > 1 for popular items (TFRS clips what it is given to [1e-6, 1])."""
    n = 20
    prob = np.full(n, 0.5 / (n - 1))
    prob[0] = 0.5  # item 0: expected twice in a batch of 4
    model = _model(logq_correction=True)
    model._item_prob = tf.constant(prob.astype(np.float32))
    batch = _batch([0, 5, 9, 19])
    q = model.query_embeddings(batch).numpy()
    c = model.candidate_embeddings(batch["item_idx"]).numpy()
    logits = q @ c.T / 0.1 - np.log(4 * prob[[0, 5, 9, 19]])[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    expected = -np.diag(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).sum()
    model.history_encoding = "memory_bank"  # the bank was refreshed from the same tower: same vectors
    assert float(model.compute_loss(batch)) == pytest.approx(expected, rel=1e-4)


def test_item_scale_multiplies_each_candidate_in_the_main_loss() -> None:
    """The popularity prior: logits are q . (v * scale) / temperature; a scale of ones changes nothing."""
    n = 20
    scale = np.linspace(1.0, 2.0, n).astype(np.float32)
    plain, ones = _pair({"logq_correction": False}, {"logq_correction": False, "item_scale": np.ones(n, np.float32)})
    _, scaled = _pair({"logq_correction": False}, {"logq_correction": False, "item_scale": scale})
    batch = _batch([0, 5, 9, 19])
    for m in (plain, ones, scaled):
        m.history_encoding = "memory_bank"  # the bank holds the same vectors: exact expected values
    assert float(ones.compute_loss(batch)) == pytest.approx(float(plain.compute_loss(batch)), rel=1e-6)
    q = scaled.query_embeddings(batch).numpy()
    c = scaled.candidate_embeddings(batch["item_idx"]).numpy() * scale[[0, 5, 9, 19]][:, None]
    logits = q @ c.T / 0.1
    logits -= logits.max(axis=1, keepdims=True)
    expected = -np.diag(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).sum()
    assert float(scaled.compute_loss(batch)) == pytest.approx(expected, rel=1e-4)
    assert not np.isclose(expected, float(plain.compute_loss(batch)), rtol=1e-3)
    with pytest.raises(ValueError, match=r"item_scale must have shape \(20,\), got \(3,\)"):
        _model(item_scale=np.ones(3, np.float32))


def test_accidental_hits_are_removed() -> None:
    remove, keep = _pair({"remove_accidental_hits": True}, {"remove_accidental_hits": False})
    dup = _batch([3, 3, 7, 8])  # item 3 twice: a false negative for both rows when kept
    assert float(remove.compute_loss(dup)) < float(keep.compute_loss(dup))
    unique = _batch([1, 2, 7, 8])
    np.testing.assert_allclose(float(remove.compute_loss(unique)), float(keep.compute_loss(unique)), rtol=1e-6)


def test_mixed_negatives_add_candidates_and_raise_the_loss() -> None:
    batch = _batch([0, 1, 2, 3])
    # more negatives in the softmax denominator -> loss can only grow (logQ off to compare raw softmax)
    base_nolq, mixed_nolq = _pair({"logq_correction": False}, {"logq_correction": False, "mixed_negatives": 16})
    _, mixed = _pair({}, {"mixed_negatives": 16})
    assert float(mixed_nolq.compute_loss(batch)) > float(base_nolq.compute_loss(batch))
    assert np.isfinite(float(mixed.compute_loss(batch)))


def test_candidate_tower_add_loss_is_part_of_the_training_loss() -> None:
    plain, extra = _pair({}, {"extra_loss": 5.0})
    data = _batch([0, 1, 2, 3])
    ds = tf.data.Dataset.from_tensor_slices({k: v.numpy() for k, v in data.items()}).batch(4)
    for m in (plain, extra):
        m.compile(tf.keras.optimizers.SGD(0.0))
    lp = plain.evaluate(ds, verbose=0, return_dict=True)
    hp = plain.fit(ds, epochs=1, verbose=0).history
    he = extra.fit(ds, epochs=1, verbose=0).history
    assert he["total_loss"][0] == pytest.approx(hp["total_loss"][0] + 5.0, rel=1e-5)
    assert "loss" in lp


def test_memory_bank_refresh_holds_the_candidate_embeddings() -> None:
    model = _model()
    matrix = model.refresh_memory_bank(batch_size=7)
    assert matrix.shape == (20, 8)
    np.testing.assert_allclose(model.memory_bank.numpy(), matrix)
    direct = model.candidate_embeddings(tf.range(20, dtype=tf.int64)).numpy()
    np.testing.assert_allclose(matrix, direct, atol=1e-6)


def test_live_history_equals_the_memory_bank_forward_in_inference_mode() -> None:
    live, bank = _pair({"history_encoding": "live"}, {"history_encoding": "memory_bank"})
    bank.refresh_memory_bank()
    batch = _batch([0, 5, 9, 19, 5])
    hist = batch["hist_idx"].numpy()
    hist[1, 1], hist[2, 1], hist[2, 2] = 7, 0, 13  # repeats, a positive reused as history, padding elsewhere
    batch["hist_idx"] = tf.constant(hist)
    q_live, c_live, _, _ = live._live_towers(batch, tf.cast(batch["item_idx"], tf.int64), training=False)
    np.testing.assert_allclose(q_live.numpy(), bank.query_embeddings(batch).numpy(), atol=1e-6)
    np.testing.assert_allclose(c_live.numpy(), bank.candidate_embeddings(batch["item_idx"]).numpy(), atol=1e-6)
    np.testing.assert_allclose(float(live.compute_loss(batch)), float(bank.compute_loss(batch)), rtol=1e-5)


def test_live_history_sends_gradient_through_the_history_into_item_representations() -> None:
    live, bank = _pair({"history_encoding": "live"}, {"history_encoding": "memory_bank"})
    batch = _batch([0, 1, 2, 3])  # histories are items 1..4: item 4 is only ever a history item
    emb_live, emb_bank = live.candidate_tower.emb.embeddings, bank.candidate_tower.emb.embeddings
    with tf.GradientTape(persistent=True) as tape:
        loss_live = live.compute_loss(batch, training=True)
        loss_bank = bank.compute_loss(batch, training=True)
    g_live = tf.convert_to_tensor(tape.gradient(loss_live, emb_live)).numpy()
    g_bank = tf.convert_to_tensor(tape.gradient(loss_bank, emb_bank)).numpy()
    assert np.abs(g_live[4]).sum() > 0  # reached through the history only
    assert np.abs(g_bank[4]).sum() == 0  # the frozen bank carries no gradient
    assert np.abs(g_live[:4]).sum() > 0 and np.abs(g_live[5:]).sum() == 0


def test_unknown_history_encoding_is_rejected() -> None:
    with pytest.raises(ValueError, match="history_encoding"):
        _model(history_encoding="stale")


def test_live_history_cap_encodes_a_bounded_random_subset_and_reads_the_rest_from_the_bank() -> None:
    capped, bank = _pair({"live_history_items": 2}, {"history_encoding": "memory_bank"})
    capped.refresh_memory_bank()
    bank.refresh_memory_bank()
    batch = _batch([0, 1])
    batch["hist_idx"] = tf.constant([[5, 6, 7], [8, 9, -1]], tf.int64)  # five history-only items
    q_capped, *_ = capped._live_towers(batch, tf.constant([0, 1], tf.int64), training=False)
    np.testing.assert_allclose(q_capped.numpy(), bank.query_embeddings(batch).numpy(), atol=1e-6)
    emb = capped.candidate_tower.emb.embeddings
    with tf.GradientTape() as tape:
        loss = capped.compute_loss(batch, training=True)
    grad = np.abs(tf.convert_to_tensor(tape.gradient(loss, emb)).numpy()).sum(axis=1)
    assert grad[0] > 0 and grad[1] > 0  # candidates are always live
    assert int((grad[[5, 6, 7, 8, 9]] > 0).sum()) == 2  # exactly `live_history_items` history items


def test_live_pass_rows_are_bucketed_to_few_shapes() -> None:
    from recfuse.models.two_tower import _bucketed

    counts = [*range(1, 300), *range(300, 20_001, 37), 8193, 10_000, 20_000]
    sizes = {n: int(tf.size(_bucketed(tf.range(n, dtype=tf.int64)))) for n in counts}
    assert [sizes[n] for n in (1, 8, 9, 100, 8193, 10_000, 20_000)] == [8, 8, 16, 104, 9216, 10240, 20480]
    assert all(n <= s <= n + max(7, n // 8) for n, s in sizes.items())  # at most an eighth more rows
    assert len(set(sizes.values())) <= 8 * 12  # about eight per doubling, not one per count
    padded = _bucketed(tf.constant([4, 2, 7], tf.int64)).numpy().tolist()
    assert padded == [4, 2, 7, 0, 0, 0, 0, 0]  # the items first, then row 0 (encoded, never read)
