"""The item-item head: weights (EASE, item-kNN) against closed forms, scoring, storage and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recfuse.config import ItemHeadConfig, RecfuseConfig
from recfuse.errors import ArtifactError, ConfigError
from recfuse.item_weights import content_weights, ease_weights, knn_weights, prune_rows, sequential_weights
from recfuse.itemitem import ItemHead, load_item_head


def _interactions(n_users: int = 40, n_items: int = 12, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    dense[:, -1] = 0.0  # an item nobody interacted with: no row, no column in the weights
    return sp.csr_matrix(dense)


def test_ease_weights_match_the_closed_form_and_cut_rows() -> None:
    x = _interactions()
    lam = 5.0
    active = np.arange(11)
    g = (x.T @ x).toarray()[np.ix_(active, active)].astype(np.float64) + lam * np.eye(11)
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    full = ease_weights(x, lam, keep=12).toarray()
    expected = np.zeros((12, 12))
    expected[np.ix_(active, active)] = np.where(b > 0, b, 0.0)  # only positive weights are kept
    np.testing.assert_allclose(full, expected, atol=1e-5)
    assert not full[-1].any() and not full[:, -1].any()
    cut = ease_weights(x, lam, keep=3)
    assert np.diff(cut.indptr).max() == 3
    for i in range(11):  # each row keeps its 3 largest
        row = full[i]
        top = np.sort(row[row > 0])[::-1][:3]
        np.testing.assert_allclose(np.sort(cut[i].data)[::-1], top, atol=1e-6)


def test_ease_refuses_more_items_than_its_limit() -> None:
    with pytest.raises(ValueError, match=r"EASE over 11 items .*item_head.ease_max_items.*'itemknn'"):
        ease_weights(_interactions(), 5.0, keep=3, max_items=10)


def test_ease_with_content_adds_alpha_times_the_content_cosines_to_the_gram_matrix() -> None:
    x = _interactions()  # 12 items; the last has no interaction
    content = np.random.default_rng(3).normal(size=(12, 4)).astype(np.float32) * 3.0
    content[2] = 0.0  # an item without content keeps what its interactions give it
    lam, alpha = 5.0, 4.0
    unit = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
    g = (x.T @ x).toarray().astype(np.float64) + alpha * (unit @ unit.T) + lam * np.eye(12)
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    w = ease_weights(x, lam, keep=12, content=content, content_alpha=alpha).toarray()
    np.testing.assert_allclose(w, np.where(b > 0, b, 0.0), atol=1e-5)
    assert w[-1].any() and w[:, -1].any()  # the item without interactions is reached through its content
    plain = ease_weights(x, lam, keep=12).toarray()
    np.testing.assert_array_equal(ease_weights(x, lam, keep=12, content=content, content_alpha=0.0).toarray(), plain)
    assert not np.allclose(w[:11, :11], plain[:11, :11], atol=1e-3)  # content moves the warm items' weights too
    content[-1] = np.nan  # neither interactions nor usable content: no row, no column
    w2 = ease_weights(x, lam, keep=12, content=content, content_alpha=alpha).toarray()
    assert not w2[-1].any() and not w2[:, -1].any()
    with pytest.raises(ValueError, match=r"`content` must be \[12, dim\] \(one row per item\), got \(11, 4\)"):
        ease_weights(x, lam, keep=3, content=content[1:], content_alpha=alpha)
    content[-1] = 1.0  # items with content count against the limit too
    with pytest.raises(ValueError, match=r"EASE over 12 items \(those with training interactions or content\)"):
        ease_weights(x, lam, keep=3, max_items=11, content=content, content_alpha=alpha)


def test_weight_grid_tries_each_alpha_and_refuses_alphas_without_content_vectors() -> None:
    import types

    import pandas as pd

    from recfuse.evaluation.head_terms import weight_grid

    x = _interactions()
    users, items = x.nonzero()
    train = pd.DataFrame({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items]})
    split = types.SimpleNamespace(train=train)
    index = {f"i{i}": i for i in range(12)}
    content = np.random.default_rng(4).normal(size=(12, 4)).astype(np.float32)
    cfg = ItemHeadConfig(method="ease", ease_lambdas=(5.0,), keep=12, content_modality="audio",
                         ease_content_alphas=(0.0, 4.0))  # fmt: skip
    grid = list(weight_grid(cfg, split, index, 1024, content))
    assert [p for _, p in grid] == [{"lambda": 5.0, "keep": 12}, {"lambda": 5.0, "keep": 12, "content_alpha": 4.0}]
    np.testing.assert_allclose(grid[0][0].toarray(), ease_weights(x, 5.0, keep=12).toarray(), atol=1e-6)
    want = ease_weights(x, 5.0, keep=12, content=content, content_alpha=4.0).toarray()
    np.testing.assert_allclose(grid[1][0].toarray(), want, atol=1e-6)
    with pytest.raises(ValueError, match=r"`item_head.ease_content_alphas` = \(0.0, 4.0\) adds content to EASE's "
                                         r"Gram matrix, but no content vectors were passed"):  # fmt: skip
        next(weight_grid(cfg, split, index, 1024))


def test_knn_weights_are_each_targets_most_similar_items() -> None:
    x = _interactions(seed=1)
    d = x.toarray()
    norms = np.linalg.norm(d, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.nan_to_num((d.T @ d) / np.outer(norms, norms))
    np.fill_diagonal(cos, 0.0)
    w = knn_weights(x, neighbors=2).toarray()
    for j in range(11):  # column j holds target j's two most similar items
        nz = np.flatnonzero(w[:, j])
        assert len(nz) == 2
        np.testing.assert_allclose(w[nz, j], cos[nz, j], atol=1e-6)
        assert cos[nz, j].min() >= np.sort(cos[:, j])[-2] - 1e-6


def test_content_weights_are_each_items_nearest_vectors_by_cosine() -> None:
    vectors = np.array([[2, 0, 0], [1, 0.5, 0], [0, 1, 0], [0, 0, 0], [-1, 0, 0], [np.nan, 1, 0]], np.float32)
    w = content_weights(vectors, neighbors=2, block=2)  # blocks of 2 rows: the result does not depend on it
    assert w.dtype == np.float32 and w.shape == (6, 6)
    unit = vectors[:3] / np.linalg.norm(vectors[:3], axis=1, keepdims=True)
    cos = unit @ unit.T
    expected = np.zeros((6, 6), np.float32)
    expected[0, [1]] = cos[0, 1]  # item 2 is orthogonal to item 0 (cosine 0): positive similarities only
    expected[1, [0, 2]] = cos[1, [0, 2]]
    expected[2, [1]] = cos[2, 1]
    np.testing.assert_allclose(w.toarray(), expected, rtol=1e-6)
    # an all-zero vector and one with a NaN (no content) have no row and are nobody's neighbour;
    # item 4 points away from every other item: no positive neighbour
    assert w[3].nnz == w[5].nnz == w[4].nnz == 0 and w[:, 3].nnz == w[:, 5].nnz == 0
    assert (content_weights(vectors, neighbors=2, block=1024) != w).nnz == 0
    assert np.diff(content_weights(np.eye(4, dtype=np.float32) + 0.1, neighbors=1).indptr).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"`vectors` must be \[n, dim\], got shape \(3,\)"):
        content_weights(np.ones(3, np.float32), 1)
    with pytest.raises(ValueError, match="`neighbors` must be >= 1, got 0"):
        content_weights(vectors, 0)


def test_sequential_weights_sum_inverse_gaps_within_a_user() -> None:
    users = np.array([0, 0, 0, 1, 1, 1])
    items = np.array([1, 2, 3, 2, 3, 2])  # user 0: 1 -> 2 -> 3; user 1: 2 -> 3 -> 2
    w = sequential_weights(users, items, n=5, window=2, keep=10).toarray()
    expected = np.zeros((5, 5), np.float32)
    expected[1, 2] += 1.0  # gap 1
    expected[2, 3] += 1.0 + 1.0  # user 0 and user 1
    expected[1, 3] += 0.5  # gap 2
    expected[3, 2] += 1.0
    # user 1's 2 -> 2 at gap 2 is a repeat of the same item: not a rule
    np.testing.assert_allclose(w, expected)
    assert sequential_weights(users, items, n=5, window=1, keep=1).nnz == 3  # rows 1, 2, 3 keep one each
    with pytest.raises(ValueError, match="`window` must be >= 1, got 0"):
        sequential_weights(users, items, n=5, window=0, keep=1)
    with pytest.raises(ValueError, match="`users` and `items` must have equal length, got 6 and 5"):
        sequential_weights(users, items[:5], n=5, window=1, keep=1)


def test_prune_rows_keeps_positive_largest_per_row_with_ties_by_column() -> None:
    dense = np.array([[0.0, 2.0, 2.0], [-1.0, 0.0, 0.5], [0, -3.0, 0]], np.float32)  # items 0, 2, 4
    cut = prune_rows(dense, keep=1, index=np.array([0, 2, 4]), n=5).toarray()
    assert cut.shape == (5, 5)
    assert cut[0].tolist() == [0, 0, 2.0, 0, 0]  # row 0's tie (columns 1, 2) → the lower column: item 2
    assert cut[2].tolist() == [0, 0, 0, 0, 0.5]  # the negative weight is dropped; column 2 is item 4
    assert not cut[4].any() and not cut[1].any() and not cut[3].any()


def test_row_scores_and_profile_rows_equal_the_dense_product() -> None:
    x = _interactions(seed=2)
    head = ItemHead(knn_weights(x, 4), beta=0.5, method="itemknn", params={"neighbors": 4})
    history = np.array([3, -1, 5, 3, 7])
    cols, vals = head.row_scores(history)
    dense = head.scores(head.profile_rows([history]))[0]
    assert cols.tolist() == np.flatnonzero(dense).tolist()
    np.testing.assert_allclose(vals, dense[cols], rtol=1e-6)
    w = head.weights.toarray()
    np.testing.assert_allclose(dense, w[3] + w[5] + w[7], rtol=1e-6)  # decay 1: the repeat of 3 counts once
    decayed = ItemHead(head.weights, 0.5, "itemknn", {}, decay=0.5)
    cols, vals = decayed.row_scores(history)
    expected = w[3] + 0.5 * w[5] + 0.25 * w[7]  # most recent first; the later 3 is a repeat
    np.testing.assert_allclose(vals, expected[cols], rtol=1e-6)
    assert cols.tolist() == np.flatnonzero(expected).tolist()
    assert head.row_scores(np.array([-1]))[0].size == 0
    assert head.active and not ItemHead(head.weights, 0.0, "itemknn", {}).active


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": sp.csr_matrix(np.ones((2, 3), np.float32))}, "square scipy CSR"),
        ({"beta": -1.0}, r"`beta` must be a finite number >= 0, got -1.0"),
        ({"beta": float("nan")}, "`beta` must be a finite number"),
        ({"method": "slim"}, r"`method` must be one of \('ease', 'itemknn', 'sequential'\), got 'slim'"),
        ({"weights": sp.csr_matrix(np.ones((2, 2), np.float64))}, "finite float32"),
        ({"decay": 0.0}, r"`decay` must be in \(0, 1\], got 0.0"),
    ],
)
def test_item_head_rejects_bad_fields(kwargs: dict, match: str) -> None:
    base = {"weights": sp.csr_matrix(np.eye(2, dtype=np.float32)), "beta": 1.0, "method": "ease", "params": {}}
    with pytest.raises(ValueError, match=match):
        ItemHead(**{**base, **kwargs})


def test_save_load_round_trip_replaces_atomically(tmp_path: Path) -> None:
    x = _interactions(seed=3)
    head = ItemHead(ease_weights(x, 5.0, keep=4), 0.7, "ease", {"lambda": 5.0, "keep": 4}, [{"beta": 0.7}])
    dest = head.save(tmp_path / "item_head")
    back = load_item_head(dest, n_items=12)
    assert (back.weights != head.weights).nnz == 0 and back.beta == 0.7 and back.params == head.params
    assert back.selection == [{"beta": 0.7}]
    again = ItemHead(knn_weights(x, 2), 0.1, "itemknn", {"neighbors": 2})
    again.save(dest)  # replaces the old head; no temp or old folder is left beside it
    assert load_item_head(dest).method == "itemknn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["item_head"]


def test_load_refuses_damaged_or_foreign_heads(tmp_path: Path) -> None:
    x = _interactions(seed=4)
    dest = ItemHead(knn_weights(x, 2), 0.1, "itemknn", {}).save(tmp_path / "h")
    with pytest.raises(ArtifactError, match=r"covers 12 items but the catalog has 13"):
        load_item_head(dest, n_items=13)
    indices = np.load(dest / "indices.npy")
    np.save(dest / "indices.npy", indices + 100)
    with pytest.raises(ArtifactError, match=r"column indices outside \[0, 12\).*re-run `recfuse train`"):
        load_item_head(dest)
    np.save(dest / "indices.npy", np.array([object()] * len(indices)), allow_pickle=True)
    with pytest.raises(ArtifactError, match="cannot be read"):  # never unpickled
        load_item_head(dest)
    np.save(dest / "indices.npy", indices)
    meta = json.loads((dest / "head.json").read_text())
    (dest / "head.json").write_text(json.dumps({**meta, "format": "other/9"}))
    with pytest.raises(ArtifactError, match=r"format 'other/9'"):
        load_item_head(dest)
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_item_head(tmp_path / "missing")


def test_config_section_validates_with_named_keys() -> None:
    cfg = RecfuseConfig.from_dict({"modalities": [], "item_head": {"method": "itemknn", "knn_neighbors": [5]}})
    assert cfg.item_head.enabled and cfg.item_head.knn_neighbors == (5,)
    assert not RecfuseConfig().item_head.enabled
    with pytest.raises(ConfigError, match=r"`item_head.method` must be one of \['none', 'ease', 'itemknn', 'seq"):
        ItemHeadConfig(method="slim")
    with pytest.raises(ConfigError, match=r"`item_head.betas` must be a non-empty list of finite numbers > 0"):
        ItemHeadConfig(betas=(0.0,))
    with pytest.raises(ConfigError, match=r"`item_head.history_decays` must be a non-empty list of numbers in"):
        ItemHeadConfig(history_decays=(1.5,))
    with pytest.raises(ConfigError, match=r"`item_head.seq_windows` must be a non-empty list of integers >= 1"):
        ItemHeadConfig(seq_windows=(0,))
    with pytest.raises(ConfigError, match=r"did you mean 'method'"):
        RecfuseConfig.from_dict({"modalities": [], "item_head": {"methd": "ease"}})


def test_config_content_term_names_a_vector_modality() -> None:
    audio = {"name": "audio", "kind": "vector", "columns": ["audio_vec"], "dim": 8}
    text = {"name": "text", "kind": "text"}
    head = {"method": "ease", "content_modality": "audio"}
    cfg = RecfuseConfig.from_dict({"modalities": [audio, text], "item_head": head})
    assert cfg.item_head.content_modality == "audio" and cfg.item_head.content_neighbors == 100
    assert "content_betas" in cfg.item_head.choice_grids()
    plain = RecfuseConfig.from_dict({"modalities": [], "item_head": {"method": "ease"}})
    assert "content_betas" not in plain.item_head.choice_grids()
    with pytest.raises(ConfigError, match=r"`item_head.content_modality` = 'text' must name a declared modality with "
                                          r"vector input .* those here: \['audio'\]"):  # fmt: skip
        RecfuseConfig.from_dict({"modalities": [audio, text], "item_head": {**head, "content_modality": "text"}})
    with pytest.raises(ConfigError, match=r"`item_head.method` is 'none': set a method"):
        RecfuseConfig.from_dict({"modalities": [audio], "item_head": {"content_modality": "audio"}})
    with pytest.raises(ConfigError, match=r"`item_head.content_betas` must be a non-empty list of finite numbers > 0"):
        ItemHeadConfig(content_betas=())
    with pytest.raises(ConfigError, match=r"`item_head.content_neighbors`"):
        ItemHeadConfig(content_neighbors=0)
    # content in EASE's Gram matrix: a grid of alphas >= 0, only with EASE and a content modality
    assert cfg.item_head.choice_grids()["ease_content_alphas"] == (0.0,)
    alphas = RecfuseConfig.from_dict({"modalities": [audio], "item_head": {**head, "ease_content_alphas": [0, 300]}})
    assert alphas.item_head.ease_content_alphas == (0.0, 300.0)
    with pytest.raises(ConfigError, match=r"`item_head.ease_content_alphas` must be a non-empty list of finite "):
        ItemHeadConfig(method="ease", content_modality="audio", ease_content_alphas=(-1.0,))
    for method, modality in (("itemknn", "audio"), ("ease", "")):
        with pytest.raises(ConfigError, match=rf"needs method = 'ease' and a content_modality \(got method '{method}'"):
            ItemHeadConfig(method=method, content_modality=modality, ease_content_alphas=(30.0,))
    # trained once (no selection run), the content multiplier needs one value like every other grid
    with pytest.raises(ConfigError, match=r"'content_betas': \(0.02, 0.04, 0.08, 0.16\)"):
        RecfuseConfig.from_dict({"modalities": [audio], "train": {"refit": True, "refit_epochs": 3},
                                 "item_head": {**head, "ease_lambdas": [100.0], "history_decays": [1.0],
                                               "betas": [0.06]}})  # fmt: skip
