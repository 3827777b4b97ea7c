"""Every request limit raises InvalidRequestError naming the field, the value and the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_factory import make_bundle

from recfuse.errors import ConfigError, InvalidRequestError
from recfuse.inference import Limits, Recommender, RecommendQuery


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    path = make_bundle(tmp_path_factory.mktemp("b"), n_items=60, dim=4)
    return Recommender.from_bundle(path, limits=Limits(max_k=50, max_batch=3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, r"`k` must be in \[1, 50\], got 0"),
        ({"k": 51}, r"`k` must be in \[1, 50\], got 51"),
        ({"k": 2.5}, r"`k` must be in \[1, 50\], got 2.5"),
        ({"k": True}, r"`k` must be in \[1, 50\], got True"),
        ({"history": ["i1"] * 1001}, r"`history` has 1001 entries; at most 1000 are allowed"),
        ({"history": "i1,i2"}, r"`history` must be a list of ids, got the single string 'i1,i2'"),
        ({"history": ["i1", ""]}, r"`history\[1\]` is an empty string; remove it or pass a real id"),
        ({"history": [7]}, r"`history\[0\]` must be a string id, got int 7"),
        ({"history": ["x" * 257]}, r"`history\[0\]` is 257 characters long; ids are at most 256"),
        ({"user_id": "u" * 300}, r"`user_id` is 300 characters long; ids are at most 256"),
        ({"user_id": 12}, r"`user_id` must be a string or None, got int 12"),
        ({"exclude_item_ids": ["i1"] * 1001}, r"`exclude_item_ids` has 1001 entries; at most 1000 are allowed"),
        ({"exclude_item_ids": [""]}, r"`exclude_item_ids\[0\]` is an empty string"),
        ({"include_categories": ["c"] * 101}, r"`include_categories` has 101 entries; at most 100 are allowed"),
        ({"exclude_categories": ["c0", ""]}, r"`exclude_categories\[1\]` is an empty string"),
        (
            {"include_categories": ["a"] * 60, "exclude_categories": ["b"] * 60},
            r"`include_categories` \+ `exclude_categories` have 120 entries; at most 100 are allowed",
        ),
    ],
)
def test_recommend_limits(rec: Recommender, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        rec.recommend(**kwargs)  # type: ignore[arg-type]


def test_batch_and_similar_items_limits(rec: Recommender) -> None:
    with pytest.raises(InvalidRequestError, match=r"batch has 4 queries; at most 3 are allowed"):
        rec.recommend_batch([RecommendQuery()] * 4)
    with pytest.raises(InvalidRequestError, match=r"`k` must be in \[1, 50\], got 0"):
        rec.recommend_batch([RecommendQuery(k=3), RecommendQuery(k=0)])
    with pytest.raises(InvalidRequestError, match=r"`item_id\[0\]` is an empty string"):
        rec.similar_items("")
    with pytest.raises(InvalidRequestError, match=r"`k` must be in \[1, 50\], got 99"):
        rec.similar_items("i1", k=99)


def test_limits_at_the_boundary_are_accepted(rec: Recommender) -> None:
    assert len(rec.recommend(user_id="u1", k=50).items) == 50
    r = rec.recommend(history=["i1"] * 1000 + [], exclude_item_ids=["zz"] * 1000, k=1)
    assert r.skipped_exclusions == 1000 and len(r.items) == 1
    assert rec.recommend(user_id="u" * 256, k=1).fallback == "popular"


def test_limits_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`limits.max_k` must be a positive integer, got 0"):
        Limits(max_k=0)
    assert Recommender.from_bundle(make_bundle(tmp_path, n_items=20, dim=4)).info().max_k == 1000
