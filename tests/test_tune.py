"""`recfuse tune`: the search space, the TOML writer, and real tiny studies through the CLI entry point."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from recfuse.cli.main import main
from recfuse.config import RecfuseConfig
from recfuse.errors import ConfigError, DataError
from recfuse.evaluation.tune_space import check_space, load_space, metric_k, parse_space
from recfuse.evaluation.tune_toml import config_toml, dumps

pytest.importorskip("optuna")

LR = {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}


def _space(**params: dict[str, Any]) -> dict[str, Any]:
    return {"params": {k.replace("__", "."): v for k, v in params.items()}}


# --- the space file ------------------------------------------------------------------------------------------


def test_the_sample_space_parses_and_fits_the_sample_config() -> None:
    space = load_space("data_samples/tune_space.toml")
    assert [p.key for p in space.params][:3] == ["train.learning_rate", "model.temperature", "train.batch_size"]
    assert (space.trials, space.minutes, space.n_startup_trials, space.n_warmup_steps) == (20, 60, 3, 2)
    assert space.params[2].choices == (256, 512, 1024) and space.params[4].step == 10
    check_space(space, RecfuseConfig.from_toml("data_samples/recfuse.toml"))
    defaults = parse_space({"params": {"train.learning_rate": LR}})
    assert (defaults.trials, defaults.minutes, defaults.seed, defaults.metric) == (20, None, 0, None)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"param": {}}, r"unknown key\(s\) \['param'\] in `search space`"),
        ({"study": {"trails": 3}, **_space(train__learning_rate=LR)}, r"unknown key\(s\) \['trails'\] in `study`"),
        (
            {"study": {"pruner": {"patience": 1}}, **_space(train__learning_rate=LR)},
            r"\['patience'\] in `study.pruner`",
        ),
        ({"study": {"direction": "minimize"}, **_space(train__learning_rate=LR)}, 'must be "maximize".*minimize'),
        ({"study": []}, r"`study` must be a table"),
        ({"params": [1]}, r"`params` must be tables"),
        ({}, r"declares no \[params"),
        (_space(a__b=[1]), r'`params."a.b"` must be a table'),
        (_space(a__b={"low": 1, "high": 2}), r'params."a.b": `type` is missing'),
        (_space(a__b={"type": "uniform"}), r"params.\"a.b\": `type` must be one of .*'uniform'"),
        (_space(a__b={"type": "float", "lo": 1}), r"unknown key\(s\) \['lo'\] in `params.\"a.b\"`"),
        (_space(a__b={"type": "float", "high": 1.0}), r'params."a.b": type \'float\' needs `low`'),
        (_space(a__b={"type": "float", "low": 2.0, "high": 1.0}), r"`low` must be below `high`.*low = 2.0"),
        (_space(a__b={"type": "float", "low": 1.0, "high": 1.0}), r"`low` must be below `high`"),
        (_space(a__b={"type": "float", "low": "x", "high": 1.0}), r"`low` must be a finite number, got 'x'"),
        (_space(a__b={"type": "float", "low": 0.0, "high": math.inf}), r"`high` must be a finite number, got inf"),
        (_space(a__b={"type": "int", "low": 1.5, "high": 3}), r"`low` must be an integer, got 1.5"),
        (_space(a__b={"type": "int", "low": True, "high": 3}), r"`low` must be an integer, got True"),
        (_space(a__b={"type": "float", "low": 0.0, "high": 1.0, "log": True}), r"log = true needs low > 0"),
        (_space(a__b={"type": "float", "low": 0.1, "high": 1.0, "log": "yes"}), r"`log` must be true or false"),
        (_space(a__b={"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}), r"exclude each other"),
        (_space(a__b={"type": "int", "low": 1, "high": 9, "step": 0}), r"`step` must be a positive integer, got 0"),
        (_space(a__b={"type": "float", "low": 1, "high": 9, "choices": [1]}), r"`choices` belongs to type"),
        (_space(a__b={"type": "categorical", "choices": []}), r"`choices` must be a non-empty list"),
        (_space(a__b={"type": "categorical", "choices": "ab"}), r"`choices` must be a list, got 'ab'"),
        (_space(a__b={"type": "categorical", "choices": [[16], [32]]}), r"strings, numbers or booleans, got \[16\]"),
        (_space(a__b={"type": "categorical", "choices": [1, 1]}), r"`choices` must be distinct"),
        (_space(a__b={"type": "categorical", "choices": [1], "low": 0}), r"takes only `choices`, not \['low'\]"),
        ({"study": {"trials": 0}, **_space(train__learning_rate=LR)}, r"`study.trials` must be an integer >= 1"),
        ({"study": {"minutes": 0}, **_space(train__learning_rate=LR)}, r"`study.minutes` must be a positive number"),
        ({"study": {"seed": -1}, **_space(train__learning_rate=LR)}, r"`study.seed` must be an integer >= 0"),
        ({"study": {"metric": "ndcg@10"}, **_space(train__learning_rate=LR)}, r"val_recall@K.*'ndcg@10'"),
        ({"study": {"pruner": {"n_warmup_steps": -1}}, **_space(x=LR)}, r"`study.pruner.n_warmup_steps` must be"),
    ],
)
def test_space_errors_name_the_entry(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_space(raw)


def test_a_key_twice_is_refused() -> None:
    from recfuse.evaluation.tune_space import ParamSpec, TuneSpace

    p = ParamSpec("model.temperature", "float", 0.05, 0.2)
    with pytest.raises(ConfigError, match=r"declares \['model.temperature'\] more than once"):
        TuneSpace(params=(p, p))


def test_space_files_that_are_missing_or_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[params\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_space(tmp_path / "bad.toml")


_LR_TABLE = '[params."train.learning_rate"]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\n'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (f"[study]\ntrails = 3\n{_LR_TABLE}", r"\['trails'\] in `study` \('trails' -> did you mean 'trials'\?\)"),
        (
            f"[study.pruner]\nn_warmup_step = 1\n{_LR_TABLE}",
            r"\['n_warmup_step'\] in `study.pruner` \(.*did you mean 'n_warmup_steps'\?",
        ),
        ("[param.x]\ntype = 'int'\n", r"\['param'\] in `search space` \('param' -> did you mean 'params'\?\)"),
        (_LR_TABLE + "hihg = 0.2\n", r"\['hihg'\] in `params.\"train.learning_rate\"` \(.*did you mean 'high'\?"),
    ],
)
def test_a_misspelled_key_in_a_space_file_names_the_file_the_key_and_the_likely_one(
    text: str, match: str, tmp_path: Path
) -> None:
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^search space file '{re.escape(str(path))}': unknown key\(s\) {match}"):
        load_space(path)


@pytest.mark.parametrize(
    ("key", "entry", "match"),
    [
        ("data.split", {"type": "categorical", "choices": ["random"]}, "every trial must see the same split"),
        ("data.split_seed", {"type": "int", "low": 1, "high": 3}, "every trial must see the same split"),
        ("data.items", {"type": "categorical", "choices": ["x.parquet"]}, "loads the dataset and its split once"),
        ("data.cold_item_fraction", {"type": "float", "low": 0.1, "high": 0.2}, "only data.max_history can vary"),
        ("modalities.text.columns", {"type": "categorical", "choices": ["title"]}, "which catalog columns"),
        ("train.eval_k", {"type": "int", "low": 5, "high": 20}, "set with --metric"),
        ("train.out_dir", {"type": "categorical", "choices": ["x"]}, "OUT/trials/<number>"),
        ("model.nope", LR, r'params."model.nope" = 0.001 does not give a valid config: .*unknown key \'nope\''),
        ("modalities.video.token_dropout", LR, r"no modality named 'video'"),
        ("model.fusion", {"type": "categorical", "choices": ["gated", "nope"]}, r"\"model.fusion\" = 'nope'"),
        ("train.batch_size", {"type": "int", "low": 1, "high": 64}, r'"train.batch_size" = 1 .*batch_size'),
        ("model.temperature", {"type": "categorical", "choices": ["warm"]}, r"must be a number, got 'warm'"),
    ],
)
def test_check_space_refuses_keys_the_config_lacks_or_the_split_needs(key: str, entry: dict, match: str) -> None:
    cfg = RecfuseConfig.from_toml("data_samples/recfuse.toml")
    with pytest.raises(ConfigError, match=match):
        check_space(parse_space({"params": {key: entry}}), cfg)


def test_metric_names() -> None:
    assert metric_k("val_recall@20") == 20
    for bad in ("val_recall@0", "recall@10", "val_recall@"):
        with pytest.raises(ConfigError, match="metric must be val_recall@K"):
            metric_k(bad)


# --- the TOML writer -----------------------------------------------------------------------------------------


def test_configs_round_trip_through_the_toml_writer() -> None:
    for cfg in (
        RecfuseConfig.from_toml("data_samples/recfuse.toml"),
        RecfuseConfig.from_dict({"modalities": [], "train": {"out_dir": 'runs/"only" \\ 中文\n\x7f'}}),
    ):
        assert RecfuseConfig.from_dict(tomllib.loads(config_toml(cfg))) == cfg


def test_dumps_writes_what_tomllib_reads_back() -> None:
    data = {"a b": 1, "f": [1.5, math.inf, -math.inf], "n": None, "t": {"x": {"y": True}}, "l": [{"k": "v"}, {}]}
    back = tomllib.loads(dumps(data))
    assert back == {"a b": 1, "f": [1.5, math.inf, -math.inf], "t": {"x": {"y": True}}, "l": [{"k": "v"}, {}]}
    assert math.isnan(tomllib.loads(dumps({"v": math.nan}))["v"])
    with pytest.raises(ConfigError, match=r"`t.x`: cannot write set"):
        dumps({"t": {"x": {1}}})


# --- errors before any training ------------------------------------------------------------------------------


def test_without_optuna_the_command_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    code = main(["tune", "--config", "data_samples/recfuse.toml", "--space", "data_samples/tune_space.toml",
                 "--out", str(tmp_path / "t")])  # fmt: skip
    assert code == 3
    assert "optional `tune` extra: pip install 'recfuse[tune]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "exit_code", "match"),
    [
        (["--trials", "0"], 2, "--trials must be positive, got 0"),
        (["--minutes", "-1"], 2, "--minutes must be positive, got -1.0"),
        (["--metric", "hit@3"], 3, "metric must be val_recall@K"),
        (["--storage", "study.db"], 3, "storage must be 'memory' or a database URL.*'study.db'"),
    ],
)
def test_bad_flags_exit_before_training(
    flags: list[str], exit_code: int, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["tune", "--config", "data_samples/recfuse.toml", "--space", "data_samples/tune_space.toml",
                 "--out", str(tmp_path / "t"), *flags])  # fmt: skip
    assert code == exit_code
    import re

    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "t" / "trials").exists()


def _fake_train(metric: float | None, error: Exception | None = None) -> Any:
    from recfuse.training.trainer import TrainResult

    def fake(cfg: RecfuseConfig, dataset: Any, split: Any, out: Path, progress: bool = True, on_epoch: Any = None):
        if error is not None:
            raise error
        Path(out).mkdir(parents=True)
        on_epoch(1, metric)
        return TrainResult(model_dir=Path(out), epochs_run=1, best_epoch=1, best_metric=metric)

    return fake


def test_a_split_without_validation_interactions_is_refused(tmp_path: Path) -> None:
    from recfuse.evaluation.tune import run_study

    space = parse_space(_space(train__learning_rate=LR))
    with pytest.raises(ConfigError, match="'random' split has no validation interactions"):
        run_study(RecfuseConfig(), space, tmp_path, dataset=object(), split=SimpleNamespace(val=[]))


def test_failed_trials_are_listed_and_a_study_without_a_complete_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from recfuse.evaluation.tune import run_study
    from recfuse.training import trainer

    monkeypatch.setattr(trainer, "train", _fake_train(None, DataError("no usable interactions")))
    space = parse_space(_space(train__learning_rate=LR))
    with pytest.raises(ConfigError, match="no trial of the study completed; see the errors in .*trials.json"):
        run_study(RecfuseConfig(), space, tmp_path, trials=2, storage="memory", dataset=object(),
                  split=SimpleNamespace(val=[1]))  # fmt: skip
    listed = json.loads((tmp_path / "trials.json").read_text())
    assert [(t["state"], t["error"]) for t in listed["trials"]] == [("FAIL", "no usable interactions")] * 2
    assert listed["best"] is None and not (tmp_path / "best.toml").exists()


def test_a_stored_study_is_continued_only_with_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from recfuse.evaluation.tune import run_study
    from recfuse.training import trainer

    monkeypatch.setattr(trainer, "train", _fake_train(0.25))
    space = parse_space(_space(train__learning_rate=LR))
    kw: dict[str, Any] = {"dataset": object(), "split": SimpleNamespace(val=[1])}
    first = run_study(RecfuseConfig(), space, tmp_path, trials=1, **kw)
    assert first.storage == f"sqlite:///{(tmp_path / 'study.db').resolve()}" and first.ran == 1
    again = run_study(RecfuseConfig(), space, tmp_path, trials=1, **kw)
    assert [t.number for t in again.trials] == [0, 1] and again.ran == 1
    other = parse_space(_space(model__temperature={"type": "float", "low": 0.05, "high": 0.2}))
    with pytest.raises(ConfigError, match="was started with a different params, so its trials"):
        run_study(RecfuseConfig(), other, tmp_path, trials=1, **kw)
    with pytest.raises(ConfigError, match="a different config and metric"):
        run_study(RecfuseConfig(), space, tmp_path, trials=1, metric="val_recall@5", **kw)


# --- real tiny studies (slow) --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recfuse.data.synthetic import generate

    root = tmp_path_factory.mktemp("tune_data")
    generate(root, n_items=120, n_users=60, seed=2)
    cfg = root / "cfg.toml"
    cfg.write_text(
        f"""
[data]
items = "{root / "items.parquet"}"
interactions = "{root / "interactions.parquet"}"
max_history = 5

[[modalities]]
name = "text"
kind = "text"
columns = ["title", "description"]
vocab_size = 300
max_tokens = 12
embedding_dim = 8

[model]
dim = 8
query_hidden = [16]
fusion_hidden = [16]

[train]
epochs = 2
batch_size = 128
""",
        encoding="utf-8",
    )
    return cfg


def _write_space(path: Path, extra: str = "") -> Path:
    path.write_text(
        f"""
[study]
trials = 3
seed = 1
{extra}

[params."train.learning_rate"]
type = "float"
low = 1e-3
high = 1e-2
log = true

[params."model.temperature"]
type = "categorical"
choices = [0.05, 0.1, 0.2]
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_tune_command_writes_best_toml_and_a_second_call_continues_the_study(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = _write_space(tmp_path / "space.toml", "[study.pruner]\nn_startup_trials = 10")
    out = tmp_path / "tune"
    argv = ["tune", "--config", str(config_path), "--space", str(space), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    listed = json.loads((out / "trials.json").read_text())
    assert [t["number"] for t in listed["trials"]] == [0, 1, 2]
    assert {t["state"] for t in listed["trials"]} == {"COMPLETE"} and all(t["epochs"] == 2 for t in listed["trials"])
    best = max(listed["trials"], key=lambda t: t["value"])
    assert listed["best"] == best["number"] and listed["metric"] == "val_recall@10"
    assert f"best: trial {best['number']}, val_recall@10 = {best['value']:.4f}" in printed
    assert "3 run now, 3 in total" in printed and printed.count(" COMPLETE ") == 6  # live lines + the table
    # best.toml is the full best config: base + the best trial's params, read back equal
    expected = RecfuseConfig.from_toml(config_path).with_overrides(best["params"])
    assert RecfuseConfig.from_toml(out / "best.toml") == expected
    # only the best trial's model directory is kept, and it was trained with that config
    assert sorted(p.name for p in (out / "trials").iterdir()) == [str(best["number"])]
    stored = json.loads((out / "trials" / str(best["number"]) / "config.json").read_text())
    # with the data-dependent "auto" settings decided (the sample's users have ~19 training items each)
    decided = dataclasses.replace(expected, model=dataclasses.replace(expected.model, user_id_embedding=True))
    assert RecfuseConfig.from_dict(stored) == decided

    assert main([*argv, "--trials", "1"]) == 0
    printed = capsys.readouterr().out
    listed = json.loads((out / "trials.json").read_text())
    assert [t["number"] for t in listed["trials"]] == [0, 1, 2, 3] and "1 run now, 4 in total" in printed


@pytest.mark.slow
def test_the_median_pruner_stops_a_trial_below_the_median_after_its_first_epoch(
    config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recfuse.evaluation.tune import run_study
    from recfuse.training import trainer

    # scripted validation metric per evaluation: trial 0 (2 epochs), trial 1 (pruned after 1), trial 2 (2)
    scores = iter([0.5, 0.6, 0.1, 0.9, 0.95])
    monkeypatch.setattr(trainer, "recall_at_k", lambda *a, **k: next(scores))
    space = load_space(_write_space(tmp_path / "space.toml", "[study.pruner]\nn_startup_trials = 1"))
    seen: list[tuple[int, str]] = []
    outcome = run_study(RecfuseConfig.from_toml(config_path), space, tmp_path / "tune", storage="memory",
                        keep_models=True, progress=lambda r: seen.append((r.number, r.state)))  # fmt: skip
    assert seen == [(0, "COMPLETE"), (1, "PRUNED"), (2, "COMPLETE")]
    states = [(t.state, t.epochs, t.value) for t in outcome.trials]
    assert states == [("COMPLETE", 2, 0.6), ("PRUNED", 1, 0.1), ("COMPLETE", 2, 0.95)]
    assert outcome.best is not None and outcome.best.number == 2
    pruned_state = json.loads((tmp_path / "tune" / "trials" / "1" / "train_state.json").read_text())
    assert pruned_state["stopped"] is True and pruned_state["epoch"] == 1


@pytest.mark.slow
def test_the_minutes_budget_stops_the_study_after_the_running_trial(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = _write_space(tmp_path / "space.toml")
    out = tmp_path / "tune"
    code = main(["tune", "--config", str(config_path), "--space", str(space), "--out", str(out), "--trials", "50",
                 "--minutes", "0.001", "--storage", "memory"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    listed = json.loads((out / "trials.json").read_text())
    assert [(t["number"], t["state"]) for t in listed["trials"]] == [(0, "COMPLETE")]
    assert listed["storage"] == "memory" and not (out / "study.db").exists()
