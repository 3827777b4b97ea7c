"""Evaluation baselines against hand-worked scores, the validation selection and every refusal (no TensorFlow)."""

from __future__ import annotations

import logging
from math import sqrt

import numpy as np
import pytest
import scipy.sparse as sp

from recfuse.evaluation.baselines import (
    BASELINES,
    BaselineSettings,
    ease_memory_bytes,
    fit_baseline,
    metric_k,
)

# 4 users x 5 items; item 4 has no training interactions.
#        i0 i1 i2 i3 i4
# u0      1  1  .  .  .
# u1      1  1  1  .  .
# u2      .  1  1  1  .
# u3      .  .  .  1  .
X = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=np.float32)
TRAIN = sp.csr_matrix(X)
ONE_TARGET = [np.array([4])] * 4  # any valid split: these tests look at the fitted scores


def fit(name: str, **settings: object) -> object:
    return fit_baseline(name, TRAIN, TRAIN, ONE_TARGET, None, BaselineSettings(**settings))  # type: ignore[arg-type]


def test_popularity_scores_are_training_counts_for_everyone() -> None:
    dup = sp.csr_matrix((np.array([1.0, 1.0, 2.0]), (np.array([0, 0, 1]), np.array([2, 2, 2]))), shape=(2, 5))
    fitted = fit_baseline("popularity", dup, TRAIN[:1], [np.array([0])], None)
    # a repeated (user, item) pair and a count of 2 both count once: two users touched item 2
    assert fitted.score(TRAIN[:3]).tolist() == [[0, 0, 2, 0, 0]] * 3
    full = fit("popularity")
    assert full.params == {} and full.name == "popularity"
    scores = full.score(TRAIN)
    assert scores.dtype == np.float32 and scores.tolist() == [[2, 3, 2, 2, 0]] * 4


def test_ease_matches_the_hand_computed_closed_form() -> None:
    lam = 1.0
    # Gram X^T X over the items with interactions (0..3; item 4's row and column are zero):
    gram = np.array([[2, 2, 1, 0], [2, 3, 2, 1], [1, 2, 2, 1], [0, 1, 1, 2]], dtype=np.float64)
    np.testing.assert_array_equal(gram, (X.T @ X)[:4, :4])
    # P = (G + I)^-1, by Gauss-Jordan in exact fractions:
    p = np.array([[21, -11, -1, 4], [-11, 21, -9, -4], [-1, -9, 21, -4], [4, -4, -4, 16]]) / 40
    np.testing.assert_allclose((gram + lam * np.eye(4)) @ p, np.eye(4), atol=1e-12)
    # B = -P / diag(P) column-wise, diag 0:  columns -[21,-11,-1,4]/21, ..., -[4,-4,-4,16]/16
    b = np.array(
        [
            [0, 11 / 21, 1 / 21, -1 / 4],
            [11 / 21, 0, 9 / 21, 1 / 4],
            [1 / 21, 9 / 21, 0, 1 / 4],
            [-4 / 21, 4 / 21, 4 / 21, 0],
        ]
    )
    np.testing.assert_allclose(b, -p / np.diag(p)[None, :] * (1 - np.eye(4)))
    expected = np.zeros((4, 5))
    expected[:, :4] = X[:, :4] @ b  # item 4: no interactions, score 0
    np.testing.assert_allclose(expected[2], [8 / 21, 13 / 21, 13 / 21, 1 / 2, 0])  # u2 = rows 1 + 2 + 3 of B

    fitted = fit("ease", ease_lambdas=(lam,))
    scores = fitted.score(TRAIN)
    assert fitted.params == {"lambda": 1.0} and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_itemknn_matches_hand_computed_cosine_and_top_k_cut() -> None:
    # column norms sqrt(2), sqrt(3), sqrt(2), sqrt(2), 0; cosine = co-occurrence / (|x_i| |x_j|):
    a, h, q = 2 / sqrt(6), 1 / 2, 1 / sqrt(6)  # cos(0,1) = cos(1,2); cos(0,2) = cos(2,3); cos(1,3)
    cos = np.array([[0, a, h, 0, 0], [a, 0, a, q, 0], [h, a, 0, h, 0], [0, q, h, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(
        cos[:4, :4] + np.eye(4),
        (X.T @ X)[:4, :4]
        / np.outer([sqrt(2), sqrt(3), sqrt(2), sqrt(2)], [1] * 4)
        / np.array([sqrt(2), sqrt(3), sqrt(2), sqrt(2)])[None, :],
        rtol=1e-12,
    )
    # K = 2: each target item j keeps its 2 most similar items (ties by lower index):
    #   j=0: 1 (a), 2 (h)      j=1: 0, 2 (a, a; 3 cut)   j=2: 1 (a), 0 (h; tie with 3, lower index)
    #   j=3: 2 (h), 1 (q)      j=4: none.  W[i, j] = cos(i, j) for kept neighbour i of j.
    w2 = np.zeros((5, 5))
    for j, nbrs in {0: [1, 2], 1: [0, 2], 2: [1, 0], 3: [2, 1]}.items():
        w2[nbrs, j] = cos[nbrs, j]
    # K = 1: j=0: 1; j=1: 0 (tie with 2, lower index); j=2: 1; j=3: 2
    w1 = np.zeros((5, 5))
    for j, i in {0: 1, 1: 0, 2: 1, 3: 2}.items():
        w1[i, j] = cos[i, j]
    for k, w in ((1, w1), (2, w2)):
        fitted = fit("itemknn", itemknn_neighbors=(k,))
        assert fitted.params == {"neighbors": k, "shrink": 0.0}
        scores = fitted.score(TRAIN)
        assert scores.dtype == np.float32
        np.testing.assert_allclose(scores, X @ w, rtol=1e-6, atol=1e-7)
    k2 = fit("itemknn", itemknn_neighbors=(2,))
    item1 = sp.csr_matrix(np.array([[0, 1, 0, 0, 0]], dtype=np.float32))  # row 1 of W2: item 1 neighbours 0, 2, 3
    np.testing.assert_allclose(k2.score(item1)[0], [a, 0, a, q, 0], rtol=1e-6)
    # item 3 is nobody's top-2 neighbour (it lost item 2's tie to item 0), so profile {3} scores nothing
    assert k2.score(TRAIN[3]).tolist() == [[0, 0, 0, 0, 0]]


def test_itemknn_shrink_enters_the_denominator() -> None:
    fitted = fit("itemknn", itemknn_neighbors=(1,), itemknn_shrink=1.0)
    # profile {1}: item 0's top neighbour is 1 with 2 / (sqrt(6) + 1); item 2's too (tie with 0 broken by index)
    expected = [2 / (sqrt(6) + 1), 0, 2 / (sqrt(6) + 1), 0, 0]
    np.testing.assert_allclose(fitted.score(sp.csr_matrix(np.array([[0, 1, 0, 0, 0]])))[0], expected, rtol=1e-6)


@pytest.mark.parametrize(("target", "chosen"), [(1, 2), (3, 1)])
def test_selection_keeps_the_grid_value_with_the_best_valid_metric(target: int, chosen: int) -> None:
    # validation user holds item 2 and has `target` held out. Profile {2} scores j by W[2, j]:
    #   K=1: only j=3 has 2 as its neighbour -> top-1 is item 3
    #   K=2: j=0 (h), j=1 (a), j=3 (h) -> top-1 is item 1
    profile = sp.csr_matrix(np.array([[0, 0, 1, 0, 0]], dtype=np.float32))
    settings = BaselineSettings(itemknn_neighbors=(1, 2), select_metric="hit@1")
    fitted = fit_baseline("itemknn", TRAIN, profile, [np.array([target])], [np.array([2])], settings)
    assert fitted.params["neighbors"] == chosen
    assert [row["neighbors"] for row in fitted.selection] == [1, 2]
    assert [row["hit@1"] for row in fitted.selection] == ([0.0, 1.0] if chosen == 2 else [1.0, 0.0])
    assert all(row["seconds"] >= 0 for row in fitted.selection) and fitted.fit_seconds >= 0


def test_selection_ties_keep_the_first_value_and_warn_at_the_grid_edge(caplog: pytest.LogCaptureFixture) -> None:
    settings = BaselineSettings(ease_lambdas=(1.0, 10.0, 100.0), select_metric="recall@5")
    with caplog.at_level(logging.INFO, logger="recfuse.evaluation.baselines"):
        fitted = fit_baseline("ease", TRAIN, TRAIN, [np.array([4])] * 4, None, settings)
    assert [row["recall@5"] for row in fitted.selection] == [1.0, 1.0, 1.0]  # 5 items: everything is in the top 5
    assert fitted.params == {"lambda": 1.0}
    assert "ease {'lambda': 10.0}: recall@5 = 1.00000 (" in caplog.text
    assert "best lambda = 1.0 is at the edge of the grid" in caplog.text


def test_ease_keeps_the_best_weights_when_a_later_lambda_loses() -> None:
    # lambda 1 wins on this split, later values reuse one spare buffer; the kept B must be lambda 1's
    many = BaselineSettings(ease_lambdas=(1.0, 1e4, 1e5, 1e6), select_metric="ndcg@1")
    profile = sp.csr_matrix(np.array([[0, 1, 0, 0, 0]], dtype=np.float32))
    # u with item 1: lambda 1 ranks item 0 (11/21) over 2 (9/21) and 3 (1/4); large lambda -> co-counts, 0 and 2 tie
    fitted = fit_baseline("ease", TRAIN, profile, [np.array([0])], [np.array([1])], many)
    assert fitted.params == {"lambda": 1.0}
    np.testing.assert_allclose(fitted.score(profile)[0], [11 / 21, 0, 9 / 21, 1 / 4, 0], rtol=1e-5)


def test_ease_and_itemknn_match_dense_float64_references_across_blocks_and_tiles() -> None:
    # 300 items: several Gram row blocks (block_size 64) and several 256-item mirror tiles after the inverse
    rng = np.random.default_rng(7)
    train = sp.random(500, 300, density=0.03, random_state=rng, format="csr", dtype=np.float32)
    x = (train.toarray() > 0).astype(np.float64)
    active = np.flatnonzero(x.sum(axis=0) > 0)
    xa = x[:, active]
    p = np.linalg.inv(xa.T @ xa + 20.0 * np.eye(len(active)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    expected = np.zeros((500, 300))
    expected[:, active] = xa @ b
    targets = [np.array([0])] * 10
    ease = fit_baseline("ease", train, train[:10], targets, None, BaselineSettings(ease_lambdas=(20.0,), block_size=64))
    np.testing.assert_allclose(ease.score(train), expected, atol=2e-5)

    norms = np.sqrt(x.sum(axis=0))
    cos = (x.T @ x) / (np.outer(norms, norms) + 2.0)  # shrink 2; all 299 neighbours kept: no cut to tie-break
    np.fill_diagonal(cos, 0.0)
    settings = BaselineSettings(itemknn_neighbors=(299, 1000), itemknn_shrink=2.0, block_size=64)
    knn = fit_baseline("itemknn", train, train[:10], targets, None, settings)
    np.testing.assert_allclose(knn.score(train), x @ cos, rtol=1e-5, atol=1e-6)
    assert [row["neighbors"] for row in knn.selection] == [299, 1000]  # K past n - 1 keeps every neighbour


def clustered_split(seed: int = 3) -> tuple[sp.csr_matrix, list[np.ndarray], list[np.ndarray]]:
    """200 users in 4 taste groups over 40 items; users 0..99 hold out their last item for validation."""
    rng = np.random.default_rng(seed)
    taste, group = rng.integers(0, 4, 200), np.arange(40) % 4
    p = np.where(taste[:, None] == group[None, :], 0.25, 0.03) * (1 + 3 * (np.arange(40) < 6))
    full = (rng.random((200, 40)) < p).astype(np.float32)
    targets = [np.flatnonzero(full[u])[-1:] for u in range(100)]
    for u, t in enumerate(targets):
        full[u, t] = 0
    train = sp.csr_matrix(full)
    return train, targets, [train[u].indices for u in range(100)]


def test_ease_selection_keeps_a_middle_winner_while_buffers_swap() -> None:
    # on this split ndcg@10 peaks at lambda 10 (1000: 0.160, 10: 0.231, 100: 0.212 measured); the grid order makes
    # 1000 the first best, 10 take the spare buffer, and 100 overwrite 1000's
    train, targets, exclude = clustered_split()
    grid = fit_baseline(
        "ease", train, train[:100], targets, exclude, BaselineSettings(ease_lambdas=(1000.0, 10.0, 100.0))
    )
    alone = fit_baseline("ease", train, train[:100], targets, exclude, BaselineSettings(ease_lambdas=(10.0,)))
    values = [row["ndcg@10"] for row in grid.selection]
    assert grid.params == {"lambda": 10.0} and values[1] > max(values[0], values[2])
    assert values[1] == alone.selection[0]["ndcg@10"]
    np.testing.assert_array_equal(grid.score(train), alone.score(train))


def test_every_baseline_is_deterministic_float32() -> None:
    rng = np.random.default_rng(0)
    train = sp.random(60, 30, density=0.15, random_state=rng, format="csr", dtype=np.float32)
    targets = [np.array([i % 30]) for i in range(20)]
    exclude = [train[i].indices for i in range(20)]
    for name in BASELINES:
        a = fit_baseline(name, train, train[:20], targets, exclude)
        b = fit_baseline(name, train, train[:20], targets, exclude)
        assert a.params == b.params and a.score(train).dtype == np.float32
        np.testing.assert_array_equal(a.score(train), b.score(train))


def test_metric_k_and_memory_estimate() -> None:
    assert metric_k("ndcg@10") == ("ndcg", 10) and metric_k("hit@1") == ("hit", 1)
    assert ease_memory_bytes(19_220) == 2 * 19_220**2 * 4


def test_ease_refuses_more_items_than_the_limit_naming_memory_and_setting() -> None:
    with pytest.raises(
        ValueError,
        match=r"EASE over 4 items .* needs about 128 B: two dense 4 x 4 float32 .*`BaselineSettings.ease_max_items`",
    ):
        fit("ease", ease_lambdas=(1.0,), ease_max_items=3)
    with pytest.raises(ValueError, match=r"needs about 16.0 GB"):
        fit_baseline(
            "ease",
            sp.csr_matrix(np.ones((1, 44_722), np.float32)),
            sp.csr_matrix((1, 44_722)),
            [np.array([0])],
            None,
            BaselineSettings(ease_max_items=10),
        )


def test_ease_reports_a_singular_gram_matrix() -> None:
    twins = sp.csr_matrix(np.array([[1, 1]], dtype=np.float32))  # identical columns: X^T X is singular
    with pytest.raises(ValueError, match=r"not positive definite .* use larger `ease_lambdas`"):
        fit_baseline("ease", twins, twins, [np.array([0])], None, BaselineSettings(ease_lambdas=(1e-30,)))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"ease_lambdas": ()}, r"`ease_lambdas` must be a non-empty tuple of finite values > 0, got \(\)"),
        ({"ease_lambdas": (0.0,)}, r"`ease_lambdas` must be .* > 0, got \(0.0,\)"),
        ({"ease_lambdas": (float("nan"),)}, r"`ease_lambdas` must be .*finite"),
        ({"itemknn_neighbors": ()}, r"`itemknn_neighbors` must be a non-empty tuple of integers >= 1"),
        ({"itemknn_neighbors": (0,)}, r"`itemknn_neighbors` .* got \(0,\)"),
        ({"itemknn_neighbors": (2.5,)}, r"`itemknn_neighbors` .* got \(2.5,\)"),
        ({"itemknn_shrink": -1.0}, r"`itemknn_shrink` must be finite and >= 0, got -1.0"),
        ({"ease_max_items": 0}, r"`ease_max_items` and `block_size` must be >= 1, got 0 and 1024"),
        ({"block_size": 0}, r"`ease_max_items` and `block_size` must be >= 1, got 50000 and 0"),
        ({"select_metric": "map@10"}, r"`select_metric` must be one of \('ndcg', 'recall', 'hit'\) '@k'.*'map@10'"),
        ({"select_metric": "ndcg@0"}, r"`select_metric` .* got 'ndcg@0'"),
        ({"select_metric": "ndcg"}, r"`select_metric` .* got 'ndcg'"),
    ],
)
def test_settings_refuse_bad_values(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BaselineSettings(**settings)  # type: ignore[arg-type]


def test_fit_refuses_bad_inputs() -> None:
    targets, profiles = ONE_TARGET, TRAIN
    with pytest.raises(ValueError, match=r"unknown baseline `name` 'bpr'; known: popularity, itemknn, ease"):
        fit_baseline("bpr", TRAIN, profiles, targets, None)
    with pytest.raises(TypeError, match=r"`train` must be a scipy.sparse matrix \[rows, n_items\], got ndarray"):
        fit_baseline("popularity", X, profiles, targets, None)
    negative = TRAIN.copy()
    negative.data[0] = -1.0
    with pytest.raises(ValueError, match=r"`train` must hold finite interaction values >= 0, got min -1.0"):
        fit_baseline("popularity", negative, profiles, targets, None)
    nan = TRAIN.copy()
    nan.data[0] = np.nan
    with pytest.raises(ValueError, match=r"`train` must hold finite interaction values"):
        fit_baseline("popularity", nan, profiles, targets, None)
    with pytest.raises(ValueError, match=r"`valid_profiles` must be \[rows, 5\] \(train's item count\), got \(4, 4\)"):
        fit_baseline("popularity", TRAIN, TRAIN[:, :4], targets, None)
    with pytest.raises(ValueError, match=r"`valid_profiles` must hold finite interaction values >= 0"):
        fit_baseline("popularity", TRAIN, negative, targets, None)
    with pytest.raises(ValueError, match=r"`valid_targets` must have one entry per `valid_profiles` row \(4\), got 3"):
        fit_baseline("popularity", TRAIN, profiles, targets[:3], None)
    with pytest.raises(ValueError, match=r"`valid_exclude` must have one entry per `valid_profiles` row \(4\), got 1"):
        fit_baseline("popularity", TRAIN, profiles, targets, [np.array([0])])
    with pytest.raises(ValueError, match=r"`valid_targets` must be non-empty for every validation user; drop users"):
        fit_baseline("popularity", TRAIN, profiles, [*targets[:3], np.array([], np.int64)], None)
    with pytest.raises(ValueError, match=r"`valid_targets` must be non-empty"):
        fit_baseline("popularity", TRAIN, TRAIN[:0], [], None)
    with pytest.raises(ValueError, match=r"`valid_targets` item indices must be in \[0, 5\), got 4..5"):
        fit_baseline("popularity", TRAIN, profiles, [*targets[:3], np.array([5])], None)


def test_score_refuses_profiles_of_another_catalog() -> None:
    fitted = fit("popularity")
    with pytest.raises(ValueError, match=r"`profiles` must be \[rows, 5\] \(train's item count\), got \(1, 6\)"):
        fitted.score(sp.csr_matrix((1, 6)))
    with pytest.raises(TypeError, match=r"`profiles` must be a scipy.sparse matrix"):
        fitted.score(X)  # type: ignore[arg-type]
