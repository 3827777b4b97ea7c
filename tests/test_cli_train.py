"""`recfuse train` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recfuse.cli.main import main
from recfuse.cli.train_cmds import parse_overrides
from recfuse.errors import ConfigError
from recfuse.itemitem import load_item_head


def test_overrides_are_parsed_as_toml_values() -> None:
    got = parse_overrides(["model.dim=32", 'model.fusion="max"', "model.fusion=gated", "model.query_hidden=[8, 4]",
                           "model.normalize=false", "train.learning_rate=1e-3"])  # fmt: skip
    assert got == {"model.dim": 32, "model.fusion": "gated", "model.query_hidden": [8, 4], "model.normalize": False,
                   "train.learning_rate": 0.001}  # fmt: skip
    with pytest.raises(ConfigError, match="KEY=VALUE.*'model.dim'"):
        parse_overrides(["model.dim"])


def _config_text(root: Path) -> str:
    return f"""
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
epochs = 1
batch_size = 128
"""


def _write_config(root: Path) -> Path:
    cfg = root / "cfg.toml"
    cfg.write_text(_config_text(root), encoding="utf-8")
    return cfg


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recfuse.data.synthetic import generate

    root = tmp_path_factory.mktemp("cli_data")
    generate(root, n_items=120, n_users=60, seed=2)
    return _write_config(root)


@pytest.mark.slow
def test_train_command_prints_progress_recall_and_model_dir(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_path
    out = tmp_path / "model"
    code = main(["train", "--config", str(cfg), "--out", str(out), "--epochs", "1", "--set", "model.fusion=gated",
                 "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    text = captured.out
    assert code == 0, text
    assert "epoch 1:" in text and "epoch 2:" not in text and "val_recall@10=" in text
    # the live line of each validated epoch, on stderr, carries the same figure as the summary
    live = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert len(live) == 1 and live[0].startswith("epoch 1/1: val_recall@10 = ")
    summary = next(line for line in text.splitlines() if line.startswith("epoch 1:"))
    assert f"val_recall@10={float(live[0].split(' = ')[1].split()[0]):.4f}" in summary
    assert "val Recall@10:" in text and f"model directory: {out.resolve()}" in text
    assert '"fusion": "gated"' in (out / "config.json").read_text()


@pytest.mark.slow
def test_train_command_refits_on_validation_and_serves_the_head_chosen_before(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    code = main(["train", "--config", str(config_path), "--out", str(out), "--epochs", "2", "--no-progress",
                 "--set", "train.refit=true", "--set", "train.min_epochs=0", "--set", "item_head.method='itemknn'",
                 "--set", "item_head.knn_neighbors=[5]"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    state = json.loads((out / "train_state.json").read_text())
    epochs = state["refit"]["epochs"]
    assert epochs in (1, 2) and f"refit on train + val for {epochs} epochs" in text
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == epochs
    assert f"model directory: {out.resolve()}" in text
    # the head was chosen with the selection run and is refitted for the refit model: the same choices,
    # weights from train + val rows, beta at the refit towers' scale
    chosen = load_item_head(out / "selection" / "item_head")
    served = load_item_head(out / "item_head")
    assert (served.method, served.params, served.decay) == ("itemknn", {"neighbors": 5, "keep": 200}, chosen.decay)
    assert served.selection[:-1] == chosen.selection and served.selection[-1]["stage"] == "refit"
    assert (served.weights != chosen.weights).nnz > 0
    assert f"item head itemknn (neighbors 5, keep 200, decay {served.decay:g}), beta {served.beta:.4g}: " in text
    assert ", refitted on train + val (" in text


@pytest.mark.slow
def test_train_command_with_refit_epochs_trains_once_and_fits_the_configured_head(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    code = main(["train", "--config", str(config_path), "--out", str(out), "--no-progress", "--set", "train.refit=true",
                 "--set", "train.refit_epochs=2", "--set", "item_head.method='itemknn'", "--set",
                 "item_head.knn_neighbors=[5]", "--set", "item_head.history_decays=[1.0]",
                 "--set", "item_head.betas=[0.5]"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert not (out / "selection").exists()
    assert json.loads((out / "train_state.json").read_text())["refit"]["epochs"] == 2
    assert "trained on train + val for train.refit_epochs = 2 epochs (" in text and "; no selection run" in text
    assert "val Recall@10: n/a (train.refit_epochs: it trains on the validation rows)" in text
    head = load_item_head(out / "item_head")
    record = head.selection[-1]
    assert (head.method, head.params, head.decay) == ("itemknn", {"neighbors": 5, "keep": 200}, 1.0)
    assert record["stage"] == "fixed" and record["multiplier"] == 0.5
    assert head.beta == pytest.approx(record["scale"] * 0.5) and head.beta > 0
    assert f"item head itemknn (neighbors 5, keep 200, decay 1), beta {head.beta:.4g}: fixed by the config" in text


def test_a_misspelled_key_is_named_with_its_likely_meaning_before_tensorflow_loads(
    config_path: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text(config_path.read_text().replace("batch_size = 128", "batch_sise = 128"), encoding="utf-8")
    code = (
        "import sys\nfrom recfuse.cli.main import main\n"
        f"rc = main(['train', '--config', {str(bad)!r}, '--out', {str(tmp_path / 'm')!r}])\n"
        "print('rc', rc, 'tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("rc 3 False"), done.stdout + done.stderr
    assert "unknown key(s) ['batch_sise'] in `train` ('batch_sise' -> did you mean 'batch_size'?)" in done.stderr
    assert not (tmp_path / "m").exists()


def test_misspelled_overrides_suggest_the_key() -> None:
    from recfuse.config import RecfuseConfig

    cfg = RecfuseConfig()
    with pytest.raises(ConfigError, match="unknown section 'trian'; did you mean 'train'\\?"):
        cfg.with_overrides({"trian.epochs": 1})
    with pytest.raises(ConfigError, match="unknown key 'epoch'; did you mean 'epochs'\\?; known: "):
        cfg.with_overrides({"train.epoch": 1})
    with pytest.raises(ConfigError, match="unknown key 'zzz'; known: "):  # nothing close: no guess
        cfg.with_overrides({"train.zzz": 1})


@pytest.mark.slow
def test_train_command_rejects_bad_config_with_exit_code(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_path
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "m"), "--set", "model.fusion=nope"])
    assert code == 3
    assert "model.fusion" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_a_given_split_column_goes_through_validate_train_and_evaluate(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    root = config_path.parent
    inter = pd.read_parquet(root / "interactions.parquet")
    # the data's own split: each user's last row by time is test, the one before valid, the rest train
    order = inter.sort_values(["user_id", "timestamp"], kind="stable")
    rank_from_end = order.groupby("user_id").cumcount(ascending=False)
    inter.loc[order.index, "split"] = rank_from_end.map(lambda r: "test" if r == 0 else "valid" if r == 1 else "train")
    path = tmp_path / "interactions.parquet"
    inter.to_parquet(path)
    cfg = tmp_path / "cfg.toml"
    text = config_path.read_text().replace(str(root / "interactions.parquet"), str(path))
    cfg.write_text(text.replace("max_history = 5", 'max_history = 5\nsplit = "column"'))
    n_users = inter["user_id"].nunique()

    assert main(["validate", "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert f"split column (seed 42): train {len(inter) - 2 * n_users}, val {n_users}, test {n_users}" in printed

    out = tmp_path / "model"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "(column split)" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out), "--ks", "10"]) == 0
    printed = capsys.readouterr().out
    # a column split reads train + valid in the test query (leave-one-out) and masks train items
    assert "protocol: ranking excludes each user's train items; the query reads train+valid" in printed
    assert f"[all] {n_users} users evaluated" in printed

    bad = inter.assign(split=inter["split"].replace({"valid": "validation"}))
    bad.to_parquet(path)
    assert main(["validate", "--config", str(cfg)]) == 4
    err = capsys.readouterr().err
    assert f"{n_users} row(s) have a value other than ['train', 'valid', 'test']: 'validation' ({n_users} rows)" in err


@pytest.mark.slow
def test_train_streams_a_prepared_folder_and_rejects_one_of_other_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import split_for

    samples = Path(__file__).resolve().parents[1] / "data_samples"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(_config_text(samples).replace("batch_size = 128", "batch_size = 512"), encoding="utf-8")
    conf = RecfuseConfig.from_toml(cfg)
    inter = pd.read_parquet(conf.data.interactions)
    split = split_for(inter, conf.data)
    split.train.to_parquet(tmp_path / "train.parquet")
    assert main(["prepare", "--interactions", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "p"),
                 "--rows-per-shard", "5000"]) == 0  # fmt: skip
    capsys.readouterr()

    out = tmp_path / "model"
    code = main(["train", "--config", str(cfg), "--out", str(out), "--prepared", str(tmp_path / "p"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "epoch 1:" in printed and "throughput:" in printed and f"model directory: {out.resolve()}" in printed
    assert (out / "model.json").exists() and not (out / "stream_examples").exists()

    # a folder prepared from all interactions (not the training split), or no folder: exit code 3, flag named
    assert main(["prepare", "--interactions", str(conf.data.interactions), "--out", str(tmp_path / "all")]) == 0
    capsys.readouterr()
    for folder, why in ((tmp_path / "all", f"holds {len(inter)} usable interactions but the training split has "
                         f"{len(split.train)}"), (tmp_path / "none", "is not a prepared folder")):  # fmt: skip
        code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "x"), "--prepared", str(folder)])
        err = capsys.readouterr().err
        assert code == 3 and f"--prepared {str(folder)!r}" in err and why in err, err
    assert not (tmp_path / "x").exists()


def test_prepared_is_refused_with_the_ray_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = Path(__file__).resolve().parents[1] / "data_samples" / "recfuse.toml"
    out = tmp_path / "m"
    code = main(["train", "--config", str(cfg), "--out", str(out), "--engine", "ray", "--prepared", str(tmp_path)])
    assert code == 2, code  # usage, before any Ray or TensorFlow start
    err = capsys.readouterr().err
    assert "--prepared streams in processes started by hand (TF_CONFIG), not with --engine ray" in err
    assert not out.exists()


@pytest.mark.slow
def test_train_on_a_folder_prepared_with_the_split_loads_no_interactions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import pandas as pd

    import recfuse.data.splits as splits_mod
    import recfuse.data.validate as validate_mod
    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import check_same_split, split_for

    samples = Path(__file__).resolve().parents[1] / "data_samples"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(_config_text(samples).replace("batch_size = 128", "batch_size = 512"), encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "mem"), "--no-progress"]) == 0
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "p"), "--rows-per-shard", "5000"]) == 0
    printed = capsys.readouterr().out
    assert "split random (seed 42): " in printed, printed

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the interactions were loaded into memory")

    # a guard, not a stand-in: the streamed path must not build a frame of the interactions
    monkeypatch.setattr(validate_mod, "load_dataset", refuse)
    monkeypatch.setattr(splits_mod, "split_for", refuse)
    out = tmp_path / "streamed"
    code = main(["train", "--config", str(cfg), "--out", str(out), "--prepared", str(tmp_path / "p"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "epoch 1:" in printed and f"model directory: {out.resolve()}" in printed
    monkeypatch.undo()

    mem, streamed = (json.loads((tmp_path / d / "model.json").read_text()) for d in ("mem", "streamed"))
    assert streamed["split"] == mem["split"] and streamed["num_users"] == mem["num_users"]
    assert abs(streamed["best_metric"] - mem["best_metric"]) <= 0.02, (streamed["best_metric"], mem["best_metric"])
    # evaluation's check accepts the model: the data split in memory gives the recorded split
    conf = RecfuseConfig.from_toml(cfg)
    check_same_split(split_for(pd.read_parquet(conf.data.interactions), conf.data), streamed["split"], "model")
    for name in ("user_history.parquet", "train_items.parquet", "popularity.parquet"):
        a, b = (pd.read_parquet(tmp_path / d / name) for d in ("mem", "streamed"))
        key = a.columns[0]
        a, b = (x.sort_values(key).reset_index(drop=True) for x in (a, b))
        assert a.astype(str).equals(b.astype(str)), name


def test_prepared_split_errors_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = Path(__file__).resolve().parents[1] / "data_samples"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(_config_text(samples), encoding="utf-8")
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "p"), "--set", "data.split_seed=7"]) == 0
    capsys.readouterr()
    # another seed (or kind) than the config's: exit 3, both named, before TensorFlow or any output
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "x"), "--prepared", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "was split with data.split = 'random', data.split_seed = 7 but the config asks for data.split = " in err
    assert "'random', data.split_seed = 42; re-run `recfuse prepare --config`" in err
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "x"), "--prepared", str(tmp_path / "p"),
                 "--set", "data.split=temporal", "--set", "data.split_seed=7"])  # fmt: skip
    assert code == 3 and "the config asks for data.split = 'temporal'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["prepare", "--out", str(tmp_path / "q")]) == 2
    assert "give --interactions FILE_OR_DIR, or --config" in capsys.readouterr().err
    assert main(["prepare", "--interactions", str(samples / "items.parquet"), "--set", "a.b=1", "--out", "q"]) == 2
    assert "--set needs --config" in capsys.readouterr().err
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n1,2,3\n", encoding="utf-8")
    assert main(["prepare", "--interactions", str(tmp_path / "i.csv"), "--out", str(tmp_path / "q")]) == 4
    assert "is not a Parquet file; `recfuse prepare` streams Parquet only" in capsys.readouterr().err
