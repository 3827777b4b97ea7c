"""The item-item head on a really trained model: fitted on train, chosen on valid, evaluated as served
(slow: trains a tiny model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from recfuse.config import ItemHeadConfig, RecfuseConfig  # noqa: E402
from recfuse.evaluation.fullrank import build_eval_sets, evaluate_model, evaluate_scores  # noqa: E402
from recfuse.evaluation.item_head import fit_item_head, fixed_item_head, refit_item_head  # noqa: E402
from recfuse.itemitem import HEAD_DIR, ItemHead  # noqa: E402

pytestmark = pytest.mark.slow
MAX_HISTORY = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    data_dir = tmp_path_factory.mktemp("syn")
    generate(data_dir, n_items=120, n_users=80, seed=2)
    cfg = RecfuseConfig.from_dict({
        "data": {"items": str(data_dir / "items.parquet"), "interactions": str(data_dir / "interactions.parquet"),
                 "max_history": MAX_HISTORY},
        "modalities": [],
        "model": {"dim": 16, "query_hidden": [16]},
        "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.01, "seed": 3},
    })  # fmt: skip
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 7)
    out = tmp_path_factory.mktemp("run") / "model"
    train(cfg, ds, split, out, progress=False)
    return TrainedModel.load(out), split, out


def test_fit_chooses_weights_and_beta_on_validation(trained: tuple[Any, Any, Path]) -> None:
    model, split, out = trained
    cfg = ItemHeadConfig(method="itemknn", knn_neighbors=(5, 20), keep=10, betas=(0.5, 2.0, 8.0),
                         history_decays=(1.0, 0.5))  # fmt: skip
    head = fit_item_head(model, split, cfg, MAX_HISTORY)
    weights_rows = [r for r in head.selection if r["stage"] == "weights"]
    beta_rows = [r for r in head.selection if r["stage"] == "beta"]
    assert [(r["neighbors"], r["decay"]) for r in weights_rows] == [(5, 1.0), (5, 0.5), (20, 1.0), (20, 0.5)]
    best_w = max(weights_rows, key=lambda r: r["ndcg@10"])
    assert head.params == {"neighbors": best_w["neighbors"], "keep": 10} and head.decay == best_w["decay"]
    assert beta_rows[0]["beta"] == 0.0 and len(beta_rows) == 4  # 0 is always a candidate
    best_b = max(beta_rows, key=lambda r: r["ndcg@10"])
    assert head.beta == pytest.approx(best_b["beta"])
    assert np.diff(head.weights.indptr).max() <= 10
    ease = fit_item_head(model, split, ItemHeadConfig(method="ease", ease_lambdas=(10.0,), keep=10), MAX_HISTORY)
    assert ease.method == "ease" and ease.params == {"lambda": 10.0, "keep": 10}
    seq = fit_item_head(model, split, ItemHeadConfig(method="sequential", seq_windows=(1, 3)), MAX_HISTORY)
    assert seq.method == "sequential" and seq.params["window"] in (1, 3) and seq.weights.nnz > 0
    with pytest.raises(ValueError, match="`item_head.method` is 'none'"):
        fit_item_head(model, split, ItemHeadConfig(), MAX_HISTORY)
    no_val = dataclasses.replace(split, val=split.val.iloc[:0])
    with pytest.raises(ValueError, match="the validation split has no user with a catalog item"):
        fit_item_head(model, no_val, cfg, MAX_HISTORY)


def test_refit_keeps_the_choices_and_fits_the_weights_on_train_and_validation(
    trained: tuple[Any, Any, Path],
) -> None:
    import pandas as pd

    model, split, _ = trained
    cfg = ItemHeadConfig(method="itemknn", knn_neighbors=(5, 20), keep=10, betas=(0.5, 2.0, 8.0),
                         history_decays=(1.0, 0.5))  # fmt: skip
    chosen = fit_item_head(model, split, cfg, MAX_HISTORY)
    chosen = dataclasses.replace(chosen, beta=max(r["beta"] for r in chosen.selection if r["stage"] == "beta"))
    multiplier = next(r["multiplier"] for r in chosen.selection if r["stage"] == "beta" and r["beta"] == chosen.beta)
    refit = refit_item_head(model, split, chosen, cfg, MAX_HISTORY)
    assert (refit.method, refit.params, refit.decay) == (chosen.method, chosen.params, chosen.decay)
    assert refit.selection[:-1] == chosen.selection
    record = refit.selection[-1]
    assert record["stage"] == "refit" and record["rows"] == len(split.train) + len(split.val)
    assert record["multiplier"] == multiplier == 8.0 and record["scale"] > 0
    assert refit.beta == pytest.approx(record["scale"] * multiplier)
    # the weights are the chosen setting fitted on train + validation: what a fit there alone gives
    merged = dataclasses.replace(split, train=pd.concat([split.train, split.val], ignore_index=True))
    only = dataclasses.replace(cfg, knn_neighbors=(chosen.params["neighbors"],), history_decays=(chosen.decay,))
    by_hand = fit_item_head(model, merged, only, MAX_HISTORY)
    assert (refit.weights != by_hand.weights).nnz == 0 and (refit.weights != chosen.weights).nnz > 0
    # a head chosen off stays off; a beta the table does not hold is refused
    off = refit_item_head(model, split, dataclasses.replace(chosen, beta=0.0), cfg, MAX_HISTORY)
    assert off.beta == 0.0 and not off.active and off.selection[-1]["multiplier"] == 0.0
    with pytest.raises(ValueError, match="no row for its beta 123.0"):
        refit_item_head(model, split, dataclasses.replace(chosen, beta=123.0), cfg, MAX_HISTORY)
    with pytest.raises(ValueError, match=r"params \{'keep': 10\} do not name its 'neighbors'"):
        refit_item_head(model, split, dataclasses.replace(chosen, params={"keep": 10}), cfg, MAX_HISTORY)


def test_a_fixed_head_is_the_refit_of_the_same_choices_without_a_selection(trained: tuple[Any, Any, Path]) -> None:
    model, split, _ = trained
    grid = ItemHeadConfig(method="ease", ease_lambdas=(10.0, 300.0), keep=10, betas=(0.5, 2.0, 8.0),
                          history_decays=(1.0, 0.5))  # fmt: skip
    chosen = fit_item_head(model, split, grid, MAX_HISTORY)
    chosen = dataclasses.replace(chosen, beta=max(r["beta"] for r in chosen.selection if r["stage"] == "beta"))
    refit = refit_item_head(model, split, chosen, grid, MAX_HISTORY)
    fixed_cfg = dataclasses.replace(grid, ease_lambdas=(chosen.params["lambda"],), history_decays=(chosen.decay,),
                                    betas=(8.0,))  # fmt: skip
    fixed = fixed_item_head(model, split, fixed_cfg, MAX_HISTORY)
    # the same setting, weights (train + validation rows) and beta as the refit of the choice a grid made
    assert (fixed.method, fixed.params, fixed.decay) == (refit.method, refit.params, refit.decay)
    assert (fixed.weights != refit.weights).nnz == 0 and refit.beta > 0
    assert fixed.beta == pytest.approx(refit.beta)
    assert [r["stage"] for r in fixed.selection] == ["fixed"]
    assert fixed.selection[0]["rows"] == len(split.train) + len(split.val)
    # with no validation rows (a retrain on every row) c is measured on the training users
    no_val = dataclasses.replace(split, val=split.val.iloc[:0])
    every_row = fixed_item_head(model, no_val, fixed_cfg, MAX_HISTORY)
    assert every_row.selection[0]["rows"] == len(split.train) and every_row.beta > 0
    with pytest.raises(ValueError, match=r"one value per grid.*'ease_lambdas': \(10.0, 300.0\)"):
        fixed_item_head(model, split, dataclasses.replace(fixed_cfg, ease_lambdas=(10.0, 300.0)), MAX_HISTORY)

def test_a_best_beta_at_either_end_of_the_grid_warns(
    trained: tuple[Any, Any, Path], caplog: pytest.LogCaptureFixture
) -> None:
    model, split, _ = trained
    cfg = ItemHeadConfig(method="itemknn", knn_neighbors=(20,), keep=10, betas=(0.25, 1.0, 4.0), history_decays=(1.0,))
    with caplog.at_level("WARNING", logger="recfuse.evaluation.item_head"):
        head = fit_item_head(model, split, cfg, MAX_HISTORY)
    multipliers = {r["beta"]: r["multiplier"] for r in head.selection if r["stage"] == "beta"}
    chosen = multipliers[head.beta]
    warned = [r.getMessage() for r in caplog.records if "widen `item_head.betas`" in r.getMessage()]
    if chosen == pytest.approx(0.25):
        assert warned == ["item head: the best beta is the smallest multiplier 0.25; widen `item_head.betas`"]
    elif chosen == pytest.approx(4.0):
        assert warned == ["item head: the best beta is the largest multiplier 4.0; widen `item_head.betas`"]
    else:  # 0 (no head) or inside the grid
        assert warned == []


def _audio_vectors(model: Any) -> tuple[Any, np.ndarray]:
    import pandas as pd

    from recfuse.config import ModalityConfig
    from recfuse.evaluation.item_head import content_vectors

    items = pd.read_parquet(model.config.data.items)
    audio = ModalityConfig(name="audio", kind="vector", columns=("audio_vec",), dim=8)
    return items, content_vectors(items, audio, model.item_ids)


def test_content_term_is_chosen_with_beta_fixed_and_folded_into_the_weights(trained: tuple[Any, Any, Path]) -> None:
    from recfuse.item_weights import content_weights

    model, split, _ = trained
    items, content = _audio_vectors(model)
    assert content.shape == (len(model.item_ids), 8)
    by_id = dict(zip(items["item_id"].astype(str), items["audio_vec"]))
    np.testing.assert_array_equal(content[3], np.asarray(by_id[model.item_ids[3]], np.float32))
    base = ItemHeadConfig(method="ease", ease_lambdas=(10.0,), keep=10, betas=(2.0,), history_decays=(1.0,))
    cfg = dataclasses.replace(base, content_modality="audio", content_neighbors=5, content_betas=(0.5, 2.0, 8.0))
    plain = fit_item_head(model, split, base, MAX_HISTORY)
    head = fit_item_head(model, split, cfg, MAX_HISTORY, content=content)
    rows = [r for r in head.selection if r["stage"] == "content"]
    assert [r["multiplier"] for r in rows] == [0.0, 0.5, 2.0, 8.0] and rows[0]["content_beta"] == 0.0
    assert all(r["modality"] == "audio" and r["neighbors"] == 5 for r in rows)
    best = max(rows, key=lambda r: r["ndcg@10"])
    assert head.params["content_multiplier"] == best["multiplier"] and head.params["content_neighbors"] == 5
    assert head.params["content_beta"] == pytest.approx(best["content_beta"])
    # beta and the EASE weights are chosen as without the content term; C joins W as (content_beta / beta) C
    c = content_weights(content, 5).toarray()
    if best["multiplier"] == 0.0:  # the content term does not help here: the head is the plain one
        assert head.beta == plain.beta and (head.weights != plain.weights).nnz == 0
    elif plain.beta > 0:
        assert head.beta == pytest.approx(plain.beta)
        want = plain.weights.toarray() + best["content_beta"] / plain.beta * c
        np.testing.assert_allclose(head.weights.toarray(), want, rtol=1e-5, atol=1e-7)
    else:  # the EASE part was chosen off: the content term alone, at its own weight
        assert head.params["content_only"] == 1 and head.beta == pytest.approx(best["content_beta"])
        np.testing.assert_array_equal(head.weights.toarray(), c)
    assert rows[0]["ndcg@10"] == pytest.approx(max(r["ndcg@10"] for r in plain.selection if r["stage"] == "beta"))

    # trained once: the one multiplier given, on the model's score scale; the scores are the two terms' sum
    fixed = fixed_item_head(model, split, dataclasses.replace(cfg, content_betas=(2.0,)), MAX_HISTORY, content=content)
    alone = fixed_item_head(model, split, base, MAX_HISTORY)
    record = fixed.selection[-1]
    assert record["content_multiplier"] == 2.0 and record["content_scale"] > 0
    assert record["content_beta"] == pytest.approx(record["content_scale"] * 2.0)
    profiles = fixed.profile_rows([np.array([0, 5, 9]), np.array([2])])
    np.testing.assert_allclose(
        fixed.beta * fixed.scores(profiles),
        alone.beta * alone.scores(profiles) + record["content_beta"] * (profiles @ c),
        rtol=1e-4, atol=1e-6,
    )  # fmt: skip

    # a refit keeps the content multiplier; a head whose EASE part was chosen off keeps the content term alone
    refit = refit_item_head(model, split, head, cfg, MAX_HISTORY, content=content)
    assert refit.params["content_multiplier"] == head.params["content_multiplier"]
    only = dataclasses.replace(head, params={**head.params, "content_only": 1, "content_multiplier": 2.0})
    refit_only = refit_item_head(model, split, only, cfg, MAX_HISTORY, content=content)
    assert refit_only.params["content_only"] == 1 and refit_only.selection[-1]["multiplier"] == 0.0
    np.testing.assert_array_equal(refit_only.weights.toarray(), c.astype(np.float32))
    assert refit_only.beta == pytest.approx(refit_only.selection[-1]["content_beta"]) and refit_only.beta > 0

    with pytest.raises(ValueError, match=r"`item_head.content_modality` = 'audio' but no content vectors were passed"):
        fit_item_head(model, split, cfg, MAX_HISTORY)
    with pytest.raises(ValueError, match=r"content vectors must be \[\d+, dim\] \(one row per catalog item\)"):
        fixed_item_head(model, split, dataclasses.replace(cfg, content_betas=(2.0,)), MAX_HISTORY, content=content[1:])
    with pytest.raises(ValueError, match=r"exceeds `item_head.content_max_items` = 10"):
        fit_item_head(model, split, dataclasses.replace(cfg, content_max_items=10), MAX_HISTORY, content=content)


def test_ease_with_content_in_its_gram_matrix_is_chosen_refitted_and_fixed(trained: tuple[Any, Any, Path]) -> None:
    import pandas as pd

    from recfuse.evaluation.head_terms import train_matrix
    from recfuse.item_weights import content_weights, ease_weights

    model, split, _ = trained
    _items, content = _audio_vectors(model)
    cfg = ItemHeadConfig(method="ease", ease_lambdas=(10.0,), keep=10, betas=(0.5, 2.0), history_decays=(1.0,),
                         content_modality="audio", content_neighbors=5, content_betas=(1.0,),
                         ease_content_alphas=(0.0, 30.0))  # fmt: skip
    head = fit_item_head(model, split, cfg, MAX_HISTORY, content=content)
    rows = [r for r in head.selection if r["stage"] == "weights"]
    assert [r.get("content_alpha", 0.0) for r in rows] == [0.0, 30.0]  # each alpha scored alone, 0 = plain EASE
    assert rows[0][cfg.select_metric] != rows[1][cfg.select_metric]
    best = max(rows, key=lambda r: r[cfg.select_metric])
    assert head.params.get("content_alpha", 0.0) == best.get("content_alpha", 0.0)

    # the refit keeps alpha; trained once, the config's alpha gives the same head; W is EASE over
    # the training + validation rows with alpha times the content cosines, plus the content term
    chosen_beta = max(r["beta"] for r in head.selection if r["stage"] == "beta")
    chosen = dataclasses.replace(head, beta=chosen_beta, params={**head.params, "content_alpha": 30.0,
                                 "content_multiplier": 1.0, "content_only": 0})  # fmt: skip
    refit = refit_item_head(model, split, chosen, cfg, MAX_HISTORY, content=content)
    assert refit.params["content_alpha"] == 30.0 and refit.selection[-1]["multiplier"] == 2.0
    one = dataclasses.replace(cfg, betas=(2.0,), ease_content_alphas=(30.0,))
    fixed = fixed_item_head(model, split, one, MAX_HISTORY, content=content)
    assert fixed.params == refit.params and fixed.beta == pytest.approx(refit.beta)
    np.testing.assert_allclose(fixed.weights.toarray(), refit.weights.toarray(), rtol=1e-5, atol=1e-6)
    index = {str(i): k for k, i in enumerate(model.item_ids)}
    merged = dataclasses.replace(split, train=pd.concat([split.train, split.val], ignore_index=True))
    w = ease_weights(train_matrix(merged, index), 10.0, 10, content=content, content_alpha=30.0)
    record = fixed.selection[-1]
    want = w.toarray() + record["content_beta"] / fixed.beta * content_weights(content, 5).toarray()
    np.testing.assert_allclose(fixed.weights.toarray(), want, rtol=1e-4, atol=1e-6)
    plain = fixed_item_head(model, split, dataclasses.replace(one, ease_content_alphas=(0.0,)), MAX_HISTORY,
                            content=content)  # fmt: skip
    assert "content_alpha" not in plain.params and (plain.weights != fixed.weights).nnz > 0
    with pytest.raises(ValueError, match=r"`item_head.content_modality` = 'audio' but no content vectors were passed"):
        fixed_item_head(model, split, one, MAX_HISTORY)


def test_fit_and_save_needs_the_catalog_for_a_content_term(trained: tuple[Any, Any, Path], tmp_path: Path) -> None:
    import json
    import shutil

    from recfuse.evaluation.item_head import fit_and_save

    model, split, out = trained
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    stored = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    stored["modalities"] = [{"name": "audio", "kind": "vector", "columns": ["audio_vec"], "dim": 8}]
    stored["item_head"] = {**stored["item_head"], "method": "itemknn", "knn_neighbors": [5], "betas": [1.0],
                           "content_modality": "audio", "content_neighbors": 4, "content_betas": [1.0]}  # fmt: skip
    (copy / "config.json").write_text(json.dumps(stored), encoding="utf-8")
    with pytest.raises(ValueError, match=r"`item_head.content_modality` = 'audio' needs the catalog table \(`items`\)"):
        fit_and_save(copy, split)
    assert not (copy / "item_head").exists()  # nothing half-written
    items, _ = _audio_vectors(model)
    head = fit_and_save(copy, split, items=items)
    assert head.params["content_neighbors"] == 4 and (copy / "item_head" / "head.json").exists()


def test_evaluate_ranks_with_the_stored_head_as_served(trained: tuple[Any, Any, Path]) -> None:
    from recfuse.models.trained import TrainedModel

    model, split, out = trained
    x = fit_item_head(model, split, ItemHeadConfig(method="itemknn", knn_neighbors=(20,)), MAX_HISTORY)
    ItemHead(x.weights, 0.37, "itemknn", x.params).save(out / HEAD_DIR)
    loaded = TrainedModel.load(out)
    assert loaded.item_head is not None and loaded.item_head.beta == pytest.approx(0.37)
    with_head = evaluate_model(loaded, split, ks=(10,))
    towers = evaluate_model(loaded, split, ks=(10,), item_head=False)
    assert with_head.info["item_head"]["beta"] == pytest.approx(0.37) and "item_head" not in towers.info
    assert towers.means("all") == evaluate_model(model, split, ks=(10,)).means("all")  # model without a head

    # the oracle: dense scores q . v * factor + 0.37 * (first 8 history items) @ W, built independently
    sets = build_eval_sets(split, loaded.item_ids, loaded.config.eval)
    index = {item: i for i, item in enumerate(loaded.item_ids)}
    q = loaded.query_embeddings(sets.users, sets.histories)
    profile = np.zeros((len(sets.users), len(index)), np.float32)
    for r, h in enumerate(sets.histories):
        known = list(dict.fromkeys(i for i in h if i in index))  # repeats dropped, the most recent kept
        for item in known[:MAX_HISTORY]:
            profile[r, index[item]] = 1.0
    dense_w = x.weights.toarray()

    def score(rows: np.ndarray) -> np.ndarray:
        return (q[rows] @ loaded.ranking_embeddings.T + np.float32(0.37) * (profile[rows] @ dense_w)).astype(np.float32)

    expected = evaluate_scores(score, len(index), sets.users, sets.exclude, sets.test, (10,))
    for key, value in expected.means("all").items():
        assert with_head.means("all")[key] == pytest.approx(value, abs=1e-9), key
    assert with_head.means("all") != towers.means("all")  # the head changes the ranking
    (out / HEAD_DIR / "head.json").unlink()
    from recfuse.errors import ArtifactError

    with pytest.raises(ArtifactError, match="item head .* cannot be read"):
        TrainedModel.load(out)


def _write_cfg(tmp_path: Path, data_dir: Path, head: str) -> Path:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'modalities = []\n[data]\nitems = "{data_dir / "items.parquet"}"\n'
        f'interactions = "{data_dir / "interactions.parquet"}"\nmax_history = {MAX_HISTORY}\n'
        "[model]\ndim = 16\nquery_hidden = [16]\n[train]\nepochs = 1\nbatch_size = 128\n"
        f'[item_head]\nmethod = "{head}"\nknn_neighbors = [10]\nbetas = [1.0, 4.0]\n',
        encoding="utf-8",
    )
    return cfg


def test_train_command_fits_and_stores_the_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recfuse.cli.main import main
    from recfuse.data.synthetic import generate
    from recfuse.models.trained import TrainedModel

    data_dir = tmp_path / "data"
    generate(data_dir, n_items=120, n_users=60, seed=1)
    cfg = _write_cfg(tmp_path, data_dir, "itemknn")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "item head itemknn (neighbors 10, keep 200, decay " in out and "valid ndcg@10" in out
    head = TrainedModel.load(tmp_path / "model").item_head
    assert head is not None and head.params == {"neighbors": 10, "keep": 200}
    assert [r["multiplier"] for r in head.selection if r["stage"] == "beta"][1:] == pytest.approx([1.0, 4.0])

    # a prepared folder keeps the training rows on disk: the head is refused before training starts
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "prepared")]) == 0
    capsys.readouterr()
    prepared = str(tmp_path / "prepared")
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "m2"), "--prepared", prepared])
    err = capsys.readouterr().err
    assert code == 3 and "`item_head.method` = 'itemknn'" in err and "item_head.method = 'none'" in err
    assert not (tmp_path / "m2").exists()


def test_train_command_fits_a_content_term_from_the_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recfuse.cli.main import main
    from recfuse.data.synthetic import generate
    from recfuse.models.trained import TrainedModel

    data_dir = tmp_path / "data"
    generate(data_dir, n_items=120, n_users=60, seed=1)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'[[modalities]]\nname = "audio"\nkind = "vector"\ncolumns = ["audio_vec"]\ndim = 8\n'
        f'[data]\nitems = "{data_dir / "items.parquet"}"\ninteractions = "{data_dir / "interactions.parquet"}"\n'
        f"max_history = {MAX_HISTORY}\n[model]\ndim = 16\nquery_hidden = [16]\n[train]\nepochs = 1\nbatch_size = 128\n"
        '[item_head]\nmethod = "itemknn"\nknn_neighbors = [10]\nbetas = [1.0]\ncontent_modality = "audio"\n'
        "content_neighbors = 7\ncontent_betas = [0.5, 2.0]\n",
        encoding="utf-8",
    )
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "item head itemknn (neighbors 10, keep 200, content_neighbors 7, content_multiplier " in out
    head = TrainedModel.load(tmp_path / "model").item_head
    assert head is not None and head.params["content_neighbors"] == 7
    rows = [r for r in head.selection if r["stage"] == "content"]
    assert [r["multiplier"] for r in rows] == [0.0, 0.5, 2.0] and head.params["content_multiplier"] in (0.0, 0.5, 2.0)
