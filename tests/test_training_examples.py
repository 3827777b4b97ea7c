"""Training examples: one per interaction, with the history the config asks for (no TensorFlow)."""

from __future__ import annotations

import pandas as pd
import pytest

from recfuse.data.vocab import IdVocab
from recfuse.training.examples import build_examples

DF = pd.DataFrame(
    {
        # u's rows out of time order in the file: examples are built in time order
        "user_id": ["u", "u", "u", "u", "v", "v", "w"],
        "item_id": ["b", "a", "d", "c", "a", "e", "zz"],
        "timestamp": [2, 1, 4, 3, 1, 2, 1],
    }
)
ITEMS = IdVocab.build(list("abcde"), num_oov=0)  # a=0 … e=4; "zz" is not in the catalog
USERS = IdVocab.build(["u", "v", "w"], num_oov=1)


def test_previous_history_is_the_interactions_before_each_one() -> None:
    ex = build_examples(DF, ITEMS, USERS, max_history=3)
    assert ex.item_idx.tolist() == [0, 1, 2, 3, 0, 4]  # zz skipped (the caller counts it)
    assert ex.hist_idx.tolist() == [[-1, -1, -1], [0, -1, -1], [1, 0, -1], [2, 1, 0], [-1, -1, -1], [0, -1, -1]]
    assert ex.hist_pos.tolist()[0] == [0.0, 1.0, 2.0]


def test_profile_history_is_every_other_interaction_most_recent_first() -> None:
    ex = build_examples(DF, ITEMS, USERS, max_history=3, history="profile")
    # u has a, b, c, d in time order: each example reads the other three, newest first
    assert ex.hist_idx.tolist()[:4] == [[3, 2, 1], [3, 2, 0], [3, 1, 0], [2, 1, 0]]
    assert ex.hist_idx.tolist()[4:] == [[4, -1, -1], [0, -1, -1]]
    short = build_examples(DF, ITEMS, USERS, max_history=2, history="profile")
    assert short.hist_idx.tolist()[0] == [3, 2]  # cut to the most recent others
    with pytest.raises(ValueError, match=r"`history` must be 'previous' or 'profile', got 'all'"):
        build_examples(DF, ITEMS, USERS, max_history=2, history="all")
