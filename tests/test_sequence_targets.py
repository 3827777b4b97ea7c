"""Next-item targets at every history position (``train.targets = "all_positions"``) and the
full-catalog softmax (``model.softmax = "full"``): windows, per-position queries, the exact losses
against hand computation, config errors, and a small real training run served through a bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from recfuse.config import RecfuseConfig  # noqa: E402
from recfuse.data.vocab import IdVocab  # noqa: E402
from recfuse.errors import ConfigError  # noqa: E402
from recfuse.models.query_tower import QueryTower  # noqa: E402
from recfuse.models.two_tower import TwoTowerModel  # noqa: E402
from recfuse.training.examples import build_examples  # noqa: E402

D, L, N = 8, 4, 12


def _interactions() -> pd.DataFrame:
    # user a: 9 items (two full windows and a short one), b: 2, c: 1 (never a target), d: 5
    seqs = {"a": [0, 1, 2, 3, 4, 5, 6, 7, 8], "b": [9, 3], "c": [4], "d": [5, 6, 5, 11, 10]}
    rows = [(u, f"i{i}", t) for u, s in seqs.items() for t, i in enumerate(s)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).sample(frac=1.0, random_state=0)


def _vocabs() -> tuple[IdVocab, IdVocab]:
    return IdVocab.build([f"i{i}" for i in range(N)], num_oov=0), IdVocab.build(list("abcd"), num_oov=0)


def test_windows_make_every_interaction_but_each_users_first_a_target_exactly_once() -> None:
    df = _interactions()
    items, users = _vocabs()
    ex = build_examples(df, items, users, L, "previous", "all_positions")
    # targets as the model reads them: the window's item at position 0, hist[:, j - 1] at position j
    targets = np.concatenate([ex.item_idx[:, None], ex.hist_idx[:, :-1]], axis=1)
    owners = np.repeat(ex.user_idx, L).reshape(-1, L)
    got = sorted(zip(owners[ex.hist_idx >= 0].tolist(), targets[ex.hist_idx >= 0].tolist(), strict=True))
    want = []
    for u, g in df.sort_values(["user_id", "timestamp"]).groupby("user_id"):
        want += [(int(users.lookup([u])[0]), int(items.lookup([i])[0])) for i in g["item_id"].tolist()[1:]]
    assert got == sorted(want) and ex.targets == len(want) == 13 and ex.interactions == 17
    # user a (9 items, L = 4): windows end at its 9th and 5th item and the one ending at its 1st has no history
    a = ex.user_idx == users.lookup(["a"])[0]
    assert sorted(ex.item_idx[a].tolist()) == [4, 8]
    np.testing.assert_array_equal(ex.hist_idx[a][np.argsort(ex.item_idx[a])], [[3, 2, 1, 0], [7, 6, 5, 4]])
    # popularity and warmth count every interaction, not only the windows' own items: item i0 (user a's
    # first) and i4 (user c's only item) are never a window's item but are trained on
    want_counts = np.bincount(items.lookup(df["item_id"].tolist()), minlength=N)
    np.testing.assert_array_equal(ex.item_counts, want_counts)
    assert ex.item_counts[0] == 1 and ex.item_counts[4] == 2 and 0 not in ex.item_idx
    # the per-interaction examples of `last` are unchanged: one per interaction, the same counts
    last = build_examples(df, items, users, L)
    assert len(last) == 17
    np.testing.assert_array_equal(last.item_counts, want_counts)


def test_bad_targets_are_rejected() -> None:
    items, users = _vocabs()
    with pytest.raises(ValueError, match="`targets` must be 'last' or 'all_positions', got 'every'"):
        build_examples(_interactions(), items, users, L, "previous", "every")
    with pytest.raises(ValueError, match="needs `history` = 'previous'"):
        build_examples(_interactions(), items, users, L, "profile", "all_positions")


def _tower(user_rows: int = 4) -> QueryTower:
    tf.keras.utils.set_random_seed(0)
    tower = QueryTower(D, user_rows=user_rows, hidden=(16,), encoder="transformer", encoder_layers=2,
                       encoder_heads=2, max_positions=L)  # fmt: skip
    tower.build_for(D)
    return tower


def _matrix() -> np.ndarray:
    e = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_position_queries_read_each_prefix_and_position_zero_is_the_served_query() -> None:
    tower = _tower()
    e = tf.constant(_matrix())
    hist = tf.constant([[3, 2, 1, 0], [5, 9, -1, -1], [7, -1, -1, -1]], tf.int64)
    pos = tf.constant(np.tile(np.arange(L, dtype=np.float32), (3, 1)))
    users = tf.constant([0, 1, 2], tf.int64)
    q, valid = tower.position_queries(e, users, hist, pos)
    np.testing.assert_array_equal(valid.numpy(), hist.numpy() >= 0)
    np.testing.assert_allclose(q.numpy()[:, 0], tower(e, users, hist, pos).numpy(), atol=1e-6)
    # position 2 of row 0 reads items 1, 0 (the history before item 2 was consumed), at positions 2, 3
    shifted = tower(e, users[:1], tf.constant([[1, 0, -1, -1]], tf.int64), pos[:1] + 2.0).numpy()
    np.testing.assert_allclose(q.numpy()[0, 2], shifted[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(q.numpy()[valid.numpy()], axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="position_queries needs encoder = 'transformer'"):
        QueryTower(D, hidden=(16,)).position_queries(e, users, hist, pos)


class _IdTower(tf.keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.emb = tf.keras.layers.Embedding(N, D)

    def call(self, features, training=False):  # type: ignore[no-untyped-def]
        return tf.math.l2_normalize(self.emb(features["item_idx"]), axis=1)


def _model(**kw: object) -> TwoTowerModel:
    tower = _tower()
    cand = _IdTower()
    prob = np.linspace(1.0, 3.0, N) / np.linspace(1.0, 3.0, N).sum()
    model = TwoTowerModel(tower, cand, {"item_idx": np.arange(N, dtype=np.int64)}, prob, temperature=0.2, **kw)
    model.compute_loss(_batch())
    return model


def _batch() -> dict[str, tf.Tensor]:
    hist = np.array([[3, 2, 1, 0], [5, 9, -1, -1], [7, -1, -1, -1]], np.int64)
    return {
        "user_idx": tf.constant([0, 1, 2], tf.int64),
        "hist_idx": tf.constant(hist),
        "hist_pos": tf.constant(np.tile(np.arange(L, dtype=np.float32), (3, 1))),
        "item_idx": tf.constant([4, 6, 8], tf.int64),
    }


def _ce(q: np.ndarray, c: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    logits = q @ c.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].sum())


def test_full_softmax_equals_the_hand_computed_cross_entropy_over_the_catalog() -> None:
    model = _model(softmax="full")
    batch = _batch()
    items = model.all_item_embeddings()
    q = model.query_tower(tf.constant(items), batch["user_idx"], batch["hist_idx"], batch["hist_pos"]).numpy()
    want = _ce(q, items, batch["item_idx"].numpy(), 0.2)
    assert float(model.compute_loss(batch)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("softmax", ["full", "sampled"])
def test_all_positions_loss_scores_every_position_against_its_next_item(softmax: str) -> None:
    model = _model(softmax=softmax, targets="all_positions", logq_correction=False, remove_accidental_hits=False)
    batch = _batch()
    items = model.all_item_embeddings()
    q3, valid = model.query_tower.position_queries(
        tf.constant(items), batch["user_idx"], batch["hist_idx"], batch["hist_pos"]
    )
    q = q3.numpy()[valid.numpy()]
    # row 0: 4 <- 3 <- 2 <- 1 (item 0 is only read); row 1: 6 <- 5 (9 is only read); row 2: 8
    labels = np.array([4, 3, 2, 1, 6, 5, 8])
    assert len(q) == len(labels)
    cands = items if softmax == "full" else items[labels]  # sampled: the positives are the pool
    want = _ce(q, cands, labels if softmax == "full" else np.arange(len(labels)), 0.2)
    assert float(model.compute_loss(batch)) == pytest.approx(want, rel=1e-5)


def test_all_positions_trains_through_the_history_into_item_rows() -> None:
    model = _model(softmax="full", targets="all_positions")
    with tf.GradientTape() as tape:
        loss = model.compute_loss(_batch(), training=True)
    grad = np.abs(tf.convert_to_tensor(tape.gradient(loss, model.candidate_tower.emb.embeddings)).numpy()).sum(1)
    assert (grad > 0).all()  # every catalog row is a candidate of the full softmax


def test_model_and_config_refuse_combinations_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="targets = 'all_positions' needs a query tower with encoder = 'transformer'"):
        TwoTowerModel(QueryTower(D, hidden=(16,)), _IdTower(), {"item_idx": np.arange(N)}, np.full(N, 1 / N),
                      targets="all_positions")  # fmt: skip
    with pytest.raises(ValueError, match="softmax must be one of"):
        _model(softmax="exact")
    cases = [
        ({"train": {"targets": "all_positions"}},
         r"`train.targets` = 'all_positions' needs `model.query_encoder` = 'transformer'.*got query_encoder = "
         r"'attention'"),
        ({"model": {"query_encoder": "transformer"},
          "train": {"targets": "all_positions", "example_history": "profile"}},
         r"`train.example_history` = 'profile' does not keep"),
        ({"train": {"targets": "next"}}, r"`train.targets` must be one of \['last', 'all_positions'\], got 'next'"),
        ({"model": {"softmax": "full", "mixed_negatives": 64}},
         r"`model.mixed_negatives` = 64 has no effect with `model.softmax` = 'full'"),
        ({"model": {"softmax": "catalog"}}, r"`model.softmax` must be one of \['sampled', 'full'\], got 'catalog'"),
    ]  # fmt: skip
    for raw, message in cases:
        with pytest.raises(ConfigError, match=message):
            RecfuseConfig.from_dict({"modalities": [], **raw})


@pytest.mark.slow
def test_trains_with_every_position_and_the_full_softmax_and_serves_the_same_queries(tmp_path: Path) -> None:
    from recfuse.bundle.export import export_model
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset
    from recfuse.inference import Recommender
    from recfuse.models.history import history_arrays
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    generate(tmp_path / "syn", n_items=120, n_users=60, seed=1)
    cfg = RecfuseConfig.from_dict(
        {
            "data": {"items": str(tmp_path / "syn" / "items.parquet"),
                     "interactions": str(tmp_path / "syn" / "interactions.parquet"), "max_history": 6},
            "modalities": [{"name": "categories", "kind": "categorical"}],
            "model": {"dim": 16, "query_hidden": [32], "fusion_hidden": [32], "query_encoder": "transformer",
                      "query_layers": 1, "query_heads": 2, "softmax": "full"},
            "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.01, "seed": 3, "targets": "all_positions"},
            "index": {"factory": "Flat", "recall_queries": 50},
        }
    )  # fmt: skip
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "temporal", 42)
    result = train(cfg, ds, split, tmp_path / "model", progress=False)
    # one example per window of 6 interactions (a few per user), one target per history position
    users_n = split.train["user_id"].nunique()
    assert users_n <= result.examples < len(split.train) / 3
    assert len(result.history) == 3 and all(np.isfinite(h["loss"]) for h in result.history)
    model = TrainedModel.load(tmp_path / "model")
    model._build_tf()  # noqa: SLF001
    tf_tower = model._tf_query_tower  # noqa: SLF001
    assert tf_tower is not None
    users = sorted(model.user_histories)[:4]
    hists = [model.user_histories[u] for u in users]
    np_q = model.query_embeddings(users, hists)
    h, p = history_arrays(hists, model.item_vocab, cfg.data.max_history)
    tf_q = tf_tower(model.item_embeddings, model.user_indices(users), h, p).numpy()
    assert np.max(np.abs(np_q - tf_q)) <= 1e-5
    rec = Recommender.from_bundle(export_model(tmp_path / "model", tmp_path / "bundles").parent)
    scores = model.ranking_embeddings @ tf_q[0]
    seen = set(hists[0])
    top = [model.item_ids[i] for i in np.argsort(-scores, kind="stable") if model.item_ids[i] not in seen][:5]
    assert [s.item_id for s in rec.recommend(user_id=users[0], k=5, exclude_seen=True).items] == top
