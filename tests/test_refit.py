"""``train.refit``: the served model and the baselines train on the validation rows too (real TF, real EASE)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfuse.config import RecfuseConfig
from recfuse.errors import ConfigError


def _cfg(data_dir: Path, out: Path, **train: object) -> RecfuseConfig:
    raw = {
        "data": {"items": str(data_dir / "items.parquet"), "interactions": str(data_dir / "interactions.parquet"),
                 "max_history": 8},
        "modalities": [{"name": "audio", "kind": "vector", "columns": ["audio_vec"], "dim": 8}],
        "model": {"dim": 16, "query_hidden": [32], "fusion_hidden": [32]},
        "train": {"epochs": 6, "batch_size": 128, "learning_rate": 0.01, "seed": 3, "min_epochs": 0,
                  "early_stopping_patience": 2, "out_dir": str(out), **train},
    }  # fmt: skip
    return RecfuseConfig.from_dict(raw)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset

    root = tmp_path_factory.mktemp("syn")
    generate(root, n_items=150, n_users=80, seed=1)
    cfg = _cfg(root, root / "m")
    ds = load_dataset(cfg.data, cfg.modalities)
    return root, ds, split_interactions(ds.interactions, "temporal", 42)


def _counts(model_dir: Path) -> int:
    return int(pd.read_parquet(model_dir / "popularity.parquet").select_dtypes("number").iloc[:, 0].sum())


@pytest.mark.slow
def test_refit_trains_on_train_and_validation_for_the_selection_runs_best_epoch(data, tmp_path: Path) -> None:
    from recfuse.models.trained import TrainedModel
    from recfuse.training import trainer
    from recfuse.training.refit import SELECTION_DIR, train_refit

    root, ds, split = data
    out = tmp_path / "m"
    cfg = _cfg(root, out, refit=True)
    scores = iter([0.2, 0.5, 0.1, 0.05])  # validation improves to epoch 2, then falls for 2 evaluations
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "recall_at_k", lambda *a, **k: next(scores))
    try:
        runs = train_refit(cfg, ds, split, out, progress=False)
    finally:
        mp.undo()
    sel, final = runs.selection, runs.final
    assert (sel.epochs_run, sel.best_epoch, sel.best_metric) == (4, 2, pytest.approx(0.5))
    assert sel.model_dir == out / SELECTION_DIR and final.model_dir == out
    # the refit: the best epoch's count, on every training and validation row, no validation of its own
    assert final.epochs_run == 2 and final.best_metric == pytest.approx(0.5)
    assert final.examples - sel.examples == len(split.val) > 0
    assert _counts(out) - _counts(out / SELECTION_DIR) == len(split.val)
    stored = json.loads((out / "config.json").read_text())
    assert stored["train"]["epochs"] == 2 and stored["train"]["refit"] is True
    state = json.loads((out / "train_state.json").read_text())
    assert state["refit"] == {"epochs": 2, "selection_best_metric": 0.5, "selection_epochs_run": 4,
                              "selection_dir": SELECTION_DIR}  # fmt: skip
    # the two models differ (another training set), and the refit is the one that loads from OUT
    a, b = TrainedModel.load(out), TrainedModel.load(out / SELECTION_DIR)
    assert a.item_embeddings.shape == b.item_embeddings.shape
    assert not np.allclose(a.item_embeddings, b.item_embeddings)
    # train.refit_epochs = 2: no selection run, and the one training gives the same model as the refit
    once = tmp_path / "once"
    runs = train_refit(_cfg(root, once, refit=True, refit_epochs=2), ds, split, once, progress=False)
    assert runs.selection is None and not (once / SELECTION_DIR).exists()
    assert (runs.final.epochs_run, runs.final.best_metric, runs.final.examples) == (2, None, final.examples)
    assert json.loads((once / "train_state.json").read_text())["refit"] == {
        "epochs": 2, "selection_best_metric": None, "selection_epochs_run": 0, "selection_dir": None}
    np.testing.assert_allclose(TrainedModel.load(once).item_embeddings, a.item_embeddings, atol=1e-6)


def test_refit_epochs_trains_on_every_row_without_validation_rows(data, tmp_path: Path) -> None:
    from recfuse.training.refit import SELECTION_DIR, train_refit

    root, ds, split = data
    no_val = dataclasses.replace(split, val=split.val.iloc[:0])
    stale = tmp_path / SELECTION_DIR  # an earlier training's selection run in the same directory
    stale.mkdir()
    (stale / "model.json").write_text("{}")
    runs = train_refit(_cfg(root, tmp_path, refit=True, refit_epochs=1), ds, no_val, tmp_path, progress=False)
    assert runs.selection is None and runs.final.epochs_run == 1 and runs.final.examples == len(split.train)
    assert _counts(tmp_path) == len(split.train)
    assert not stale.exists()  # it went with the model it chose epochs for, not left beside the new one


def test_refit_epochs_is_refused_without_refit_or_with_a_head_grid_to_choose_from(data, tmp_path: Path) -> None:
    root, _ds, _split = data
    with pytest.raises(ConfigError, match=r"`train.refit_epochs` = 3 .* `train.refit` is false; set refit = true"):
        _cfg(root, tmp_path, refit_epochs=3)
    raw = _cfg(root, tmp_path, refit=True, refit_epochs=3).to_dict()
    raw["item_head"] = {"method": "ease", "ease_lambdas": [100.0], "history_decays": [1.0], "betas": [0.5, 1.0]}
    with pytest.raises(ConfigError, match=r"no validation to choose on, and \{'betas': \(0.5, 1.0\)\} hold"):
        RecfuseConfig.from_dict(raw)
    raw["item_head"]["betas"] = [0.5]
    assert RecfuseConfig.from_dict(raw).item_head.choice_grids() == {
        "ease_lambdas": (100.0,), "history_decays": (1.0,), "betas": (0.5,)}


def test_refit_is_refused_where_it_cannot_run(data) -> None:
    from recfuse.training.refit import check_refit

    _root, _ds, split = data
    with pytest.raises(ConfigError, match=r"`train.refit`.*no validation rows.*set train.refit_epochs"):
        check_refit(dataclasses.replace(split, val=split.val.iloc[:0]))
    check_refit(dataclasses.replace(split, val=split.val.iloc[:0]), refit_epochs=2)  # no epochs to choose
    with pytest.raises(ConfigError, match=r"`train.refit`.*without --prepared"):
        check_refit(split, prepared="some/folder")
    with pytest.raises(ConfigError, match=r"`train.refit`.*not on 2 workers"):
        check_refit(split, workers=2)


def test_cli_refuses_refit_with_the_ray_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recfuse.cli.main import main

    cfg = Path(__file__).resolve().parents[1] / "data_samples" / "recfuse.toml"
    out = tmp_path / "m"
    code = main(["train", "--config", str(cfg), "--out", str(out), "--engine", "ray", "--set", "train.refit=true"])
    assert code == 2, code
    assert "train.refit = true trains twice in one process, not with --engine ray" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("name", ["ease", "itemknn", "popularity"])
def test_baseline_refit_is_the_chosen_value_fitted_on_train_and_validation(data, name: str) -> None:
    from recfuse.config import EvalConfig
    from recfuse.evaluation.baseline_eval import evaluate_baseline
    from recfuse.evaluation.baselines import BaselineSettings

    _root, ds, split = data
    ids = [str(i) for i in ds.items["item_id"]]
    protocol = EvalConfig(mask="train+valid", history="train+valid")  # the same profiles and masks both ways
    grid = BaselineSettings(ease_lambdas=(1.0, 30.0, 1000.0), itemknn_neighbors=(5, 50))
    plain = evaluate_baseline(name, split, ids, protocol, ks=(10,), settings=grid)
    refit = evaluate_baseline(name, split, ids, protocol, ks=(10,), settings=grid, refit=True)
    # the same choice, made on validation, with the grid's table kept
    assert refit.info["baseline"]["params"] == plain.info["baseline"]["params"]

    def table(res: object) -> list[dict[str, object]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in res.info["baseline"]["selection"]]

    assert table(refit) == table(plain) and len(table(plain)) == {"ease": 3, "itemknn": 2, "popularity": 1}[name]
    # and the scores of a fit on train + validation with that value alone
    params = plain.info["baseline"]["params"]
    only = BaselineSettings(ease_lambdas=(float(params.get("lambda", 1.0)),),
                            itemknn_neighbors=(int(params.get("neighbors", 5)),))  # fmt: skip
    merged = dataclasses.replace(split, train=pd.concat([split.train, split.val], ignore_index=True))
    by_hand = evaluate_baseline(name, merged, ids, protocol, ks=(10,), settings=only)

    def ranking(res: object) -> dict[str, float]:  # novelty reads the split's training counts: not the ranking
        return {k: v for k, v in res.means().items() if k.split("@")[0] in ("recall", "ndcg", "hit")}

    assert ranking(refit) == pytest.approx(ranking(by_hand))
    assert ranking(refit) != pytest.approx(ranking(plain))
