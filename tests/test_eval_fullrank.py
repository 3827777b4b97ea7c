"""Full-ranking evaluation: masking, tie order, segments, skipped users, the model-level entry point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfuse.config import EvalConfig
from recfuse.errors import ArtifactError
from recfuse.evaluation.fullrank import evaluate_embeddings, evaluate_model, ranked_topk
from recfuse.evaluation.result import EvalResult
from recfuse.ranking import popularity_scale

# query [1, 0]: items 0 and 1 tie at 1.0, item 2 scores 0.5, item 3 scores 0.
ITEMS = np.array([[1, 0], [1, 0], [0.5, 0], [0, 1]], dtype=np.float32)
Q = np.array([[1, 0]], dtype=np.float32)


def test_ties_are_ordered_by_item_index_and_masked_items_vanish() -> None:
    assert ranked_topk(Q, ITEMS, 4).tolist() == [[0, 1, 2, 3]]
    assert ranked_topk(Q, ITEMS[::-1].copy(), 4).tolist() == [[2, 3, 1, 0]]
    assert ranked_topk(Q, ITEMS, 4, exclude=[np.array([0, 2])]).tolist() == [[1, 3, -1, -1]]


def test_tied_relevant_item_ranks_after_lower_index() -> None:
    res = evaluate_embeddings(Q, ITEMS, ["u"], train_items=[[]], test_items=[[1]], ks=(1, 2))
    m = res.means()
    assert (m["hit@1"], m["hit@2"], m["mrr@2"]) == (0.0, 1.0, 0.5)
    masked = evaluate_embeddings(Q, ITEMS, ["u"], train_items=[[0]], test_items=[[1]], ks=(1,))
    assert masked.means()["hit@1"] == 1.0


def test_a_test_item_that_was_also_seen_in_training_stays_rankable() -> None:
    res = evaluate_embeddings(Q, ITEMS, ["u"], train_items=[[0, 1]], test_items=[[1]], ks=(1,))
    assert res.means()["hit@1"] == 1.0


def test_users_without_test_items_are_skipped_and_counted_and_users_sorted() -> None:
    qs = np.array([[0, 1], [1, 0], [1, 0]], dtype=np.float32)
    res = evaluate_embeddings(qs, ITEMS, ["c", "b", "a"], [[], [], []], [[3], [], [2]], ks=(1, 3))
    seg = res.segment("all")
    assert seg.users == ["a", "c"] and seg.skipped_users == 1
    np.testing.assert_allclose(seg.per_user["hit@1"], [0.0, 1.0])
    np.testing.assert_allclose(seg.per_user["recall@3"], [1.0, 1.0])
    # coverage over evaluated users: a -> [0,1,2], c -> [3,...]
    assert seg.aggregate["coverage@1"] == pytest.approx(2 / 4)


def test_warm_and_cold_segments_restrict_the_relevant_items() -> None:
    cold = np.array([False, False, False, True])
    qs = np.array([[1, 0], [1, 0]], dtype=np.float32)
    res = evaluate_embeddings(qs, ITEMS, ["u1", "u2"], [[], []], [[0, 3], [2]], ks=(2, 4), cold_mask=cold)
    assert res.segment("all").users == ["u1", "u2"]
    assert res.segment("warm").users == ["u1", "u2"]
    assert res.segment("cold").users == ["u1"] and res.segment("cold").skipped_users == 1
    np.testing.assert_allclose(res.segment("all").per_user["recall@2"], [0.5, 0.0])
    np.testing.assert_allclose(res.segment("warm").per_user["recall@2"], [1.0, 0.0])
    np.testing.assert_allclose(res.segment("cold").per_user["recall@4"], [1.0])
    np.testing.assert_allclose(res.segment("cold").per_user["mrr@4"], [0.25])


def test_result_round_trips_through_json(tmp_path: Path) -> None:
    res = evaluate_embeddings(Q, ITEMS, ["u"], [[]], [[1]], ks=(2,), item_counts=[1, 2, 3, 4], counts={"x": 3})
    path = res.save(tmp_path / "r" / "eval.json")
    back = EvalResult.load(path)
    assert back.means() == res.means() and back.counts == {"x": 3} and back.ks == (2,)
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot be read"):
        EvalResult.load(path)
    with pytest.raises(ArtifactError, match="format None is not"):
        EvalResult.from_dict({})


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="`ks` max 5 exceeds the catalog size 4"):
        evaluate_embeddings(Q, ITEMS, ["u"], [[]], [[1]], ks=(5,))
    with pytest.raises(ValueError, match="need one entry per user"):
        evaluate_embeddings(Q, ITEMS, ["u", "v"], [[]], [[1]], ks=(1,))
    with pytest.raises(ValueError, match=r"`cold_mask` must have shape \(4,\)"):
        evaluate_embeddings(Q, ITEMS, ["u"], [[]], [[1]], ks=(1,), cold_mask=[True])
    with pytest.raises(ValueError, match="`ks` must be positive"):
        evaluate_embeddings(Q, ITEMS, ["u"], [[]], [[1]], ks=(0,))
    with pytest.raises(KeyError, match="segment 'cold' not evaluated"):
        evaluate_embeddings(Q, ITEMS, ["u"], [[]], [[1]], ks=(1,)).segment("cold")


@dataclass
class _MeanOfHistoryModel:
    """A real (tiny) model: the query is the mean embedding of the user's history."""

    item_ids: list[str]
    item_embeddings: np.ndarray
    user_histories: dict[str, list[str]]

    @property
    def ranking_embeddings(self) -> np.ndarray:
        return self.item_embeddings

    def query_embeddings(self, user_ids: Sequence[str | None], histories: Sequence[Sequence[str]]) -> np.ndarray:
        index = {i: n for n, i in enumerate(self.item_ids)}
        out = np.zeros((len(user_ids), self.item_embeddings.shape[1]), dtype=np.float32)
        for r, h in enumerate(histories):
            rows = [index[i] for i in h if i in index]
            if rows:
                out[r] = self.item_embeddings[rows].mean(axis=0)
        return out


@dataclass
class _Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    cold_items: frozenset[str] = field(default_factory=frozenset)


def test_evaluate_model_masks_train_and_val_and_counts_unknown_items() -> None:
    emb = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9]], dtype=np.float32)
    model = _MeanOfHistoryModel(["a", "b", "c", "d", "e"], emb, {"u1": ["a"], "u2": ["d"]})
    split = _Split(
        train=pd.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["a", "d", "a"]}),
        val=pd.DataFrame({"user_id": ["u1"], "item_id": ["b"]}),
        test=pd.DataFrame({"user_id": ["u1", "u2", "u2", "u4"], "item_id": ["c", "e", "zzz", "yyy"]}),
        cold_items=frozenset({"e"}),
    )
    res = evaluate_model(model, split, ks=(1, 2), protocol=EvalConfig(mask="train+valid", history="train+valid"))
    # u1: a (train) and b (val) masked -> c first. u2: d masked -> e first.
    np.testing.assert_allclose(res.segment("all").per_user["hit@1"], [1.0, 1.0])
    assert res.info["protocol"] == "ranking excludes each user's train+valid items; the query reads train+valid"
    assert res.segment("all").users == ["u1", "u2"]
    assert res.segment("cold").users == ["u2"] and res.segment("warm").users == ["u1"]
    assert res.counts["unknown_test_rows"] == 2
    assert res.counts["users_only_unknown_test_items"] == 1
    assert res.counts["train_users_without_test_rows"] == 1
    # novelty uses training counts: a=2, d=1 of 3 rows over 5 items -> p(c) = 1/8, p(e) = 1/8
    np.testing.assert_allclose(res.segment("all").per_user["novelty@1"], [3.0, 3.0])


def test_default_protocol_masks_train_only_and_reads_history_by_split_kind() -> None:
    emb = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9]], dtype=np.float32)
    seen: list[list[str]] = []

    class Recording(_MeanOfHistoryModel):
        def query_embeddings(self, user_ids: Sequence[str | None], histories: Sequence[Sequence[str]]) -> np.ndarray:
            seen.extend(list(h) for h in histories)
            return super().query_embeddings(user_ids, histories)

    model = Recording(["a", "b", "c", "d", "e"], emb, {})
    split = _Split(
        train=pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["a", "d"], "timestamp": [1, 2]}),
        val=pd.DataFrame({"user_id": ["u1"], "item_id": ["e"], "timestamp": [3]}),
        test=pd.DataFrame({"user_id": ["u1"], "item_id": ["c"], "timestamp": [4]}),
    )
    res = evaluate_model(model, split, ks=(1,))  # a split without a kind is taken as random
    assert (res.info["history"], res.info["mask"]) == ("train", "train") and seen == [["d", "a"]]
    seen.clear()
    evaluate_model(model, split, ks=(1,), protocol=EvalConfig(history="train+valid"))
    assert seen == [["e", "d", "a"]]
    seen.clear()
    loo = _Split(split.train, split.val, split.test)
    object.__setattr__(loo, "kind", "temporal")  # leave-one-out reads train+valid under "auto"
    assert evaluate_model(model, loo, ks=(1,)).info["history"] == "train+valid" and seen == [["e", "d", "a"]]
    # masking: the query is a = [1, 0]; the valid item b (.9) outranks the test item c (.8) unless masked
    split = _Split(
        train=pd.DataFrame({"user_id": ["u1"], "item_id": ["a"], "timestamp": [1]}),
        val=pd.DataFrame({"user_id": ["u1"], "item_id": ["b"], "timestamp": [2]}),
        test=pd.DataFrame({"user_id": ["u1"], "item_id": ["c"], "timestamp": [3]}),
    )
    np.testing.assert_allclose(evaluate_model(model, split, ks=(1,)).segment("all").per_user["hit@1"], [0.0])
    masked = evaluate_model(model, split, ks=(1,), protocol=EvalConfig(mask="train+valid"))
    np.testing.assert_allclose(masked.segment("all").per_user["hit@1"], [1.0])


def test_popularity_scale_is_one_plus_prior_times_log_count() -> None:
    np.testing.assert_allclose(
        popularity_scale([0, 1, 9], 0.5), [1.0, 1.0 + 0.5 * np.log(2.0), 1.0 + 0.5 * np.log(10.0)], rtol=1e-6
    )
    np.testing.assert_array_equal(popularity_scale([0, 7], 0.0), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"finite and >= 0 \(training interactions per item\), got min -1.0"):
        popularity_scale([3, -1], 0.1)


def test_items_never_trained_on_get_the_new_item_scale() -> None:
    np.testing.assert_allclose(popularity_scale([0, 1, 0], 0.5, 1.4), [1.4, 1.0 + 0.5 * np.log(2.0), 1.4], rtol=1e-6)
    np.testing.assert_array_equal(popularity_scale([0, 7], 0.0, 2.0), [2.0, 1.0])
    with pytest.raises(ValueError, match=r"new_item_scale must be a finite number > 0, got 0.0"):
        popularity_scale([1], 0.1, 0.0)
