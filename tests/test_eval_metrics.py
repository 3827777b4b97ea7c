"""Ranking metrics against hand-worked values (ties, empty slots, users with no test items)."""

from __future__ import annotations

from math import log2

import numpy as np
import pytest

from recfuse.evaluation.metrics import (
    coverage_at_k,
    gini,
    gini_at_k,
    hit_matrix,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    novelty_at_k,
    per_user_metrics,
    precision_at_k,
    recall_at_k,
    self_information,
)

# Three users, ranked lists of 4 items.
TOP = np.array([[5, 2, 7, 1], [4, 3, 0, 9], [8, 6, 1, 2]])
REL = [np.array([2, 1, 9]), np.array([4]), np.array([0, 5])]
N_REL = np.array([3, 1, 2])


def test_hit_matrix_marks_relevant_ranks() -> None:
    assert hit_matrix(TOP, REL).astype(int).tolist() == [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_recall_precision_hitrate_by_hand() -> None:
    hits = hit_matrix(TOP, REL)
    np.testing.assert_allclose(recall_at_k(hits, N_REL, 2), [1 / 3, 1.0, 0.0])
    np.testing.assert_allclose(recall_at_k(hits, N_REL, 4), [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(precision_at_k(hits, 2), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(precision_at_k(hits, 4), [0.5, 0.25, 0.0])
    np.testing.assert_allclose(hit_rate_at_k(hits, 1), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(hit_rate_at_k(hits, 2), [1.0, 1.0, 0.0])


def test_ndcg_by_hand() -> None:
    hits = hit_matrix(TOP, REL)
    # user 0: hits at ranks 2 and 4; ideal = 3 hits at ranks 1..3
    dcg0 = 1 / log2(3) + 1 / log2(5)
    idcg0 = 1 + 1 / log2(3) + 1 / log2(4)
    np.testing.assert_allclose(ndcg_at_k(hits, N_REL, 4), [dcg0 / idcg0, 1.0, 0.0])
    # at k=2 the ideal is capped at 2 hits
    np.testing.assert_allclose(ndcg_at_k(hits, N_REL, 2), [(1 / log2(3)) / (1 + 1 / log2(3)), 1.0, 0.0])


def test_mrr_by_hand() -> None:
    hits = hit_matrix(TOP, REL)
    np.testing.assert_allclose(mrr_at_k(hits, 4), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(mrr_at_k(hits, 1), [0.0, 1.0, 0.0])


def test_empty_slots_never_hit_but_keep_their_rank() -> None:
    top = np.array([[-1, 3, -1]])
    hits = hit_matrix(top, [np.array([3])])
    assert hits.tolist() == [[False, True, False]]
    np.testing.assert_allclose(precision_at_k(hits, 3), [1 / 3])
    np.testing.assert_allclose(novelty_at_k(top, [1, 1, 1, 1], 3), [2.0])  # only item 3 counts
    assert coverage_at_k(top, 4, 3) == 0.25


def test_novelty_self_information_with_add_one_smoothing() -> None:
    counts = [3, 1, 0, 0]  # p = (c + 1) / (4 + 4) = 1/2, 1/4, 1/8, 1/8
    np.testing.assert_allclose(self_information(counts), [1.0, 2.0, 3.0, 3.0])
    np.testing.assert_allclose(novelty_at_k([[0, 2], [1, 3]], counts, 2), [2.0, 2.5])
    np.testing.assert_allclose(novelty_at_k([[0, 2], [1, 3]], counts, 1), [1.0, 2.0])


def test_coverage_and_gini_by_hand() -> None:
    top = np.array([[0, 1], [1, 2]])
    assert coverage_at_k(top, 5, 1) == pytest.approx(2 / 5)
    assert coverage_at_k(top, 5, 2) == pytest.approx(3 / 5)
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert gini([3, 1, 2]) == pytest.approx(8 / (2 * 9 * 2))  # Σ|xi - xj| / (2 n² mean)
    # counts over 4 items at k=2: [1, 2, 1, 0]
    assert gini_at_k(top, 4, 2) == pytest.approx(gini([1, 2, 1, 0]))
    assert gini([0, 0]) == 0.0


def test_per_user_metrics_has_every_metric_and_k() -> None:
    out = per_user_metrics(TOP, REL, ks=(2, 4), item_counts=np.ones(10))
    assert sorted(out) == sorted(
        f"{m}@{k}" for m in ("recall", "ndcg", "hit", "precision", "mrr", "novelty") for k in (2, 4)
    )
    assert all(v.shape == (3,) and v.dtype == np.float64 for v in out.values())
    np.testing.assert_allclose(out["recall@4"], [2 / 3, 1.0, 0.0])


def test_duplicate_relevant_items_count_once() -> None:
    out = per_user_metrics([[1, 2]], [np.array([1, 1, 3])], ks=(2,))
    np.testing.assert_allclose(out["recall@2"], [0.5])


def test_bad_inputs_raise_naming_the_argument() -> None:
    hits = hit_matrix(TOP, REL)
    with pytest.raises(ValueError, match=r"`k` must be in \[1, 4\].*got 5"):
        recall_at_k(hits, N_REL, 5)
    with pytest.raises(ValueError, match="`n_relevant` must be >= 1"):
        recall_at_k(hits, [1, 0, 1], 2)
    with pytest.raises(ValueError, match="`n_relevant` must be >= 1"):
        ndcg_at_k(hits, [1, 0, 1], 2)
    with pytest.raises(ValueError, match=r"`relevant` must have one entry per user \(3\), got 2"):
        hit_matrix(TOP, REL[:2])
    with pytest.raises(ValueError, match="`topk` must be rank 2"):
        hit_matrix(np.array([1, 2]), [np.array([1])])
    with pytest.raises(ValueError, match="`counts` must be a non-empty array of non-negative"):
        gini([1, -1])
    with pytest.raises(ValueError, match="`item_counts` must be a 1-d array of non-negative counts"):
        self_information([[1, 2]])
    with pytest.raises(ValueError, match="`n_items` must be >= 1"):
        coverage_at_k(TOP, 0, 1)
