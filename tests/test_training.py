"""Trainer end to end on a tiny generated dataset: loss, model dir, load, resume, early stopping, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from recfuse.config import RecfuseConfig  # noqa: E402
from recfuse.errors import ConfigError, DataError, SchemaError  # noqa: E402

pytestmark = pytest.mark.slow


def _cfg(data_dir: Path, **train: object) -> RecfuseConfig:
    raw = {
        "data": {
            "items": str(data_dir / "items.parquet"),
            "interactions": str(data_dir / "interactions.parquet"),
            "max_history": 8,
        },
        "modalities": [
            {"name": "image", "kind": "image", "source": "raw", "image_size": 16},
            {"name": "text", "kind": "text", "columns": ["title", "description"], "vocab_size": 500, "max_tokens": 16,
             "embedding_dim": 16},
            {"name": "audio", "kind": "vector", "columns": ["audio_vec"], "dim": 8},
        ],
        "model": {"dim": 16, "fusion": "attention", "query_hidden": [32], "fusion_hidden": [32]},
        "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.01, "seed": 3, **train},
    }  # fmt: skip
    return RecfuseConfig.from_dict(raw)


def _decided(cfg: RecfuseConfig, **model: object) -> RecfuseConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))


def _schedule_cfg(cfg: RecfuseConfig) -> RecfuseConfig:
    """``cfg`` with only its cheapest modality (the 8-wide audio vector): for the tests of the
    trainer's epoch loop (early stopping, min_epochs, evaluation cadence, EMA, LR cuts, determinism),
    which do not depend on the branches. A run costs about half of the full config's (its image and
    text branches, built and traced on every run); the `trained` fixture covers all three branches."""
    raw = cfg.to_dict()
    raw["modalities"] = [m for m in raw["modalities"] if m["name"] == "audio"]
    assert len(raw["modalities"]) == 1, raw["modalities"]
    return RecfuseConfig.from_dict(raw)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset

    root = tmp_path_factory.mktemp("syn")
    generate(root, n_items=150, n_users=80, seed=1)
    cfg = _cfg(root)
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 42)
    return root, cfg, ds, split


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory: pytest.TempPathFactory):
    from recfuse.training.trainer import train

    _root, cfg, ds, split = data
    out = tmp_path_factory.mktemp("run") / "model"
    result = train(cfg, ds, split, out, progress=False)
    return cfg, ds, split, out, result


def test_training_lowers_the_loss_and_writes_the_model_dir(trained) -> None:
    cfg, ds, split, out, result = trained
    assert result.model_dir == out.resolve()
    assert result.epochs_run == 2 and len(result.history) == 2
    assert result.history[1]["loss"] < result.history[0]["loss"]
    assert result.best_metric is not None and 0.0 <= result.best_metric <= 1.0
    for name in ("model.json", "config.json", "vocab_items.json", "vocab_users.json", "query_tower.npz",
                 "item_embeddings.parquet", "user_history.parquet", "popularity.parquet", "train_items.parquet",
                 "history.json", "train_state.json", "candidate_vocabularies.json", "weights/ckpt.index"):  # fmt: skip
        assert (out / name).exists(), name
    assert (out / "checkpoints").is_dir() and any((out / "tensorboard").rglob("events.*"))
    # the stored config is the one trained: "auto" settings decided (80 users with ~19 training items each)
    stored = RecfuseConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.model.user_id_embedding == "auto" and stored.model.user_id_embedding is True
    assert stored == _decided(cfg, user_id_embedding=True)
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pickle"))
    # the split it was trained on is recorded, so evaluation can check it scores the same one
    from recfuse.models.trained import TrainedModel

    record = TrainedModel.load(out).split_record
    assert record is not None and record["fingerprint"] == split.fingerprint()
    assert (record["kind"], record["seed"], record["train"]) == ("random", 42, len(split.train))


def test_trained_model_loads_with_identical_embeddings_and_queries(trained, tmp_path: Path) -> None:
    from recfuse.models.trained import TrainedModel

    cfg, ds, split, out, _result = trained
    m = TrainedModel.load(out)
    assert m.config == _decided(cfg, user_id_embedding=True)
    assert m.item_ids == [str(x) for x in ds.items["item_id"]]
    assert m.item_embeddings.shape == (len(ds.items), 16)
    np.testing.assert_allclose(np.linalg.norm(m.item_embeddings, axis=1), 1.0, atol=1e-4)
    # candidate tower rebuilt from the dir reproduces the stored catalog embeddings
    again = m.embed_items(ds.items, ds.images_dir)
    assert np.max(np.abs(again - m.item_embeddings)) <= 1e-5
    users = sorted(m.user_histories)[:5]
    hists = [m.user_histories[u] for u in users]
    q = m.query_embeddings([*users, None], [*hists, hists[0][:2]])
    assert q.shape == (6, 16) and np.all(np.isfinite(q))
    # TF query tower (through the SavedModel with its documented signature) == numpy forward
    from recfuse.models.history import history_arrays

    path = m.export_query_savedmodel(tmp_path / "qsm")
    loaded = tf.saved_model.load(str(path))
    hist, pos = history_arrays([*hists, hists[0][:2]], m.item_vocab, cfg.data.max_history)
    uidx = m.user_indices([*users, None])
    got = loaded.signatures["serving_default"](user_idx=tf.constant(uidx), hist_idx=tf.constant(hist),
                                               hist_pos=tf.constant(pos))["query"].numpy()  # fmt: skip
    assert np.max(np.abs(got - q)) <= 1e-5
    # a second load gives the same numbers
    m2 = TrainedModel.load(out)
    np.testing.assert_array_equal(m2.item_embeddings, m.item_embeddings)
    np.testing.assert_array_equal(m2.query_embeddings(users, hists), q[:5])


def test_sparse_users_train_without_a_user_id_embedding_by_default(data, tmp_path: Path) -> None:
    from recfuse.data.splits import Split
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    _root, cfg, ds, split = data
    # at most 4 training interactions per user: below the median of 10 that "auto" keeps the row for
    sparse = split.train.groupby("user_id", group_keys=False).head(4)
    small = Split(train=sparse, val=split.val, test=split.test, cold_items=split.cold_items, kind=split.kind,
                  seed=split.seed)  # fmt: skip
    light = RecfuseConfig.from_dict({**cfg.to_dict(), "modalities": [cfg.to_dict()["modalities"][1]],
                                     "train": {**cfg.to_dict()["train"], "epochs": 1}})  # fmt: skip
    train(light, ds, small, tmp_path / "m", progress=False)
    m = TrainedModel.load(tmp_path / "m")
    assert m.config.model.user_id_embedding is False
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["user_id_embedding"] is False
    # the query is the history alone: a known user's query equals an anonymous one with the same history
    users = sorted(m.user_histories)[:4]
    hists = [m.user_histories[u] for u in users]
    np.testing.assert_allclose(m.query_embeddings(users, hists), m.query_embeddings([None] * 4, hists), atol=1e-6)


def test_same_config_and_seed_give_the_same_model(trained, tmp_path: Path) -> None:
    """train.deterministic (default): a second run is identical to the fixture's, bit for bit."""
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    cfg, ds, split, _out, result = trained
    again = train(cfg, ds, split, tmp_path / "again", progress=False)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in result.history]
    first, second = TrainedModel.load(result.model_dir), TrainedModel.load(again.model_dir)
    assert np.array_equal(first.item_embeddings, second.item_embeddings)
    assert first.item_embeddings.std() > 0


def test_deterministic_flag_turns_on_tensorflow_op_determinism(data, tmp_path: Path) -> None:
    """In a fresh process (the switch is process-wide): off after a run with `false`, on after one
    with `true` (the default). Small runs like the one above happen to be reproducible anyway; on the
    sample, two runs without it differed from the third epoch's loss (bench/README.md, "Quality")."""
    import subprocess
    import sys

    _root, full, ds, split = data
    cfg = _schedule_cfg(full)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    script = f"""
import json, sys
import recfuse
from tensorflow.python.framework import config as tf_config
from recfuse.config import RecfuseConfig
from recfuse.data.splits import split_interactions
from recfuse.data.validate import load_dataset
from recfuse.training.trainer import train
cfg = RecfuseConfig.from_dict(json.load(open({str(tmp_path / "cfg.json")!r})))
ds = load_dataset(cfg.data, cfg.modalities)
split = split_interactions(ds.interactions, "random", 42)
seen = []
for flag in (False, True):
    run = cfg.with_overrides({{"train.deterministic": flag, "train.epochs": 1}})
    train(run, ds, split, {str(tmp_path)!r} + f"/m{{flag}}", progress=False)
    seen.append(tf_config.is_op_determinism_enabled())
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, True]


def test_resume_continues_from_the_saved_epoch(trained) -> None:
    from recfuse.training.trainer import train

    cfg, ds, split, out, first = trained
    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=3))
    result = train(more, ds, split, out, progress=False)
    assert result.epochs_run == 3
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[:2] == first.history  # epochs 1-2 were restored, not retrained
    assert np.isfinite(result.examples_per_second)
    # re-running a finished run trains nothing and rewrites the same model
    again = train(more, ds, split, out, progress=False)
    assert again.epochs_run == 3 and np.isnan(again.examples_per_second)
    # checkpoints of other settings are not continued as if they were this config's
    other = dataclasses.replace(more, train=dataclasses.replace(more.train, batch_size=64, epochs=4))
    changed = r"holds checkpoints of a run with other settings \(train.batch_size: 128 -> 64\)"
    with pytest.raises(ConfigError, match=changed):
        train(other, ds, split, out, progress=False)
    from recfuse.data.splits import split_interactions

    with pytest.raises(ConfigError, match=r"other settings \(split: '[0-9a-f]+' -> '[0-9a-f]+'\)"):
        train(dataclasses.replace(more, train=dataclasses.replace(more.train, epochs=4)), ds,
              split_interactions(ds.interactions, "random", 7), out, progress=False)  # fmt: skip


def _tower_arrays(cfg: RecfuseConfig, n_users: int, prefix: Path, nested: bool) -> dict[str, np.ndarray]:
    """Query-tower arrays stored in a best (``nested=False``) or per-epoch (``True``) checkpoint."""
    from recfuse.models.query_tower import build_query_tower

    ref = build_query_tower(cfg, n_users)
    ref.build_for(16)
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(query_tower=ref)) if nested else tf.train.Checkpoint(
        query_tower=ref)  # fmt: skip
    root.read(str(prefix)).expect_partial()
    return ref.export_arrays()


def test_early_stopping_keeps_the_best_epoch(data, tmp_path: Path) -> None:
    from recfuse.models.trained import TrainedModel
    from recfuse.training import trainer

    _root, full, ds, split = data
    cfg = _schedule_cfg(full)
    # scripted validation metric: improves to epoch 2, then falls for `patience` evaluations
    scores = iter([0.2, 0.5, 0.1, 0.05, 0.3, 0.3])
    calls: list[int] = []

    def scripted(q: np.ndarray, items: np.ndarray, vq: object, k: int) -> float:
        calls.append(k)
        return next(scores)

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "recall_at_k", scripted)
    try:
        run = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=6, early_stopping_patience=2))
        result = trainer.train(run, ds, split, tmp_path / "m", progress=False)
    finally:
        mp.undo()
    assert result.epochs_run == 4 and len(calls) == 4  # 0.1 and 0.05 did not beat 0.5: stop after epoch 4
    assert result.best_epoch == 2 and result.best_metric == pytest.approx(0.5)
    state = json.loads((tmp_path / "m" / "train_state.json").read_text())
    assert state["stopped"] is True
    # the kept weights are the best epoch's (checkpoints/best), not the last epoch's (ckpt-4)
    m = TrainedModel.load(tmp_path / "m")
    kept = m.query_tower.to_arrays()
    best = _tower_arrays(run, m.user_vocab.size, tmp_path / "m" / "checkpoints" / "best" / "ckpt", nested=False)
    last = _tower_arrays(run, m.user_vocab.size, tmp_path / "m" / "checkpoints" / "ckpt-4", nested=True)
    for name, arr in best.items():
        np.testing.assert_array_equal(arr, kept[name])
    assert any(not np.array_equal(last[n], kept[n]) for n in kept)
    # resuming a run that stopped early does not train again
    again = trainer.train(run, ds, split, tmp_path / "m", progress=False)
    assert again.epochs_run == 4


# --- bad input: stops before training, naming the field -------------------------------------------------


def _run(cfg: RecfuseConfig, ds, split, tmp_path: Path):
    from recfuse.training.trainer import train

    return train(cfg, ds, split, tmp_path / "bad", progress=False)


def test_unknown_fusion_is_rejected(data) -> None:
    _root, cfg, _ds, _split = data
    with pytest.raises(ConfigError, match=r"model\.fusion.*'nope'"):
        cfg.with_overrides({"model.fusion": "nope"})


def test_modality_without_column_is_rejected(data, tmp_path: Path) -> None:
    _root, cfg, ds, split = data
    raw = cfg.to_dict()
    raw["modalities"].append({"name": "brand", "kind": "vector", "columns": ["brand_vec"], "dim": 4})
    with pytest.raises(SchemaError, match=r"modality 'brand'.*'brand_vec'"):
        _run(RecfuseConfig.from_dict(raw), ds, split, tmp_path)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_wrong_vector_width_is_rejected(data, tmp_path: Path) -> None:
    _root, cfg, ds, split = data
    raw = cfg.to_dict()
    raw["modalities"][2]["dim"] = 5
    with pytest.raises(SchemaError, match=r"'audio_vec'.*width 5.*got width 8"):
        _run(RecfuseConfig.from_dict(raw), ds, split, tmp_path)


def test_nan_in_vector_column_is_rejected(data, tmp_path: Path) -> None:
    _root, cfg, ds, split = data
    items = ds.items.copy()
    vec = list(items["audio_vec"].iloc[3])
    vec[2] = float("nan")
    items["audio_vec"] = [vec if i == 3 else v for i, v in enumerate(items["audio_vec"])]
    bad = dataclasses.replace(ds, items=items)
    with pytest.raises(SchemaError, match=r"'audio_vec'.*NaN.*" + str(items["item_id"].iloc[3])):
        _run(cfg, bad, split, tmp_path)


def test_empty_training_split_is_rejected(data, tmp_path: Path) -> None:
    _root, cfg, ds, split = data
    empty = dataclasses.replace(split, train=split.train.iloc[:0])
    with pytest.raises(DataError, match="training split is empty"):
        _run(cfg, ds, empty, tmp_path)
    assert isinstance(split.train, pd.DataFrame)


def test_min_epochs_holds_off_early_stopping(data, tmp_path: Path) -> None:
    from recfuse.training import trainer

    _root, full, ds, split = data
    cfg = _schedule_cfg(full)
    scores = iter([0.2, 0.5, 0.1, 0.05, 0.3, 0.3])
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "recall_at_k", lambda q, items, vq, k: next(scores))
    try:
        train_cfg = dataclasses.replace(cfg.train, epochs=6, early_stopping_patience=2, min_epochs=5)
        result = trainer.train(dataclasses.replace(cfg, train=train_cfg), ds, split, tmp_path / "m", progress=False)
    finally:
        mp.undo()
    # patience alone would stop after epoch 4 (see above); min_epochs=5 runs epoch 5, which still
    # does not beat epoch 2, so the run stops there and keeps epoch 2
    assert result.epochs_run == 5 and result.best_epoch == 2
    assert result.best_metric == pytest.approx(0.5)


@pytest.mark.parametrize(("min_epochs", "runs"), [(None, 3), (0, 2)])
def test_unset_min_epochs_holds_off_early_stopping_for_a_quarter_of_the_cap(
    data, tmp_path: Path, min_epochs: int | None, runs: int
) -> None:
    """Unset, ``min_epochs`` is ``epochs // 4`` (3 of 12), so a run whose validation recall drops
    right after epoch 1 still trains to epoch 3; 0 restores plain patience (stop after epoch 2)."""
    from recfuse.training import trainer

    _root, full, ds, split = data
    cfg = _schedule_cfg(full)
    scores = iter([0.5] + [0.1] * 11)
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "recall_at_k", lambda q, items, vq, k: next(scores))
    try:
        train_cfg = dataclasses.replace(cfg.train, epochs=12, early_stopping_patience=1, min_epochs=min_epochs)
        result = trainer.train(dataclasses.replace(cfg, train=train_cfg), ds, split, tmp_path / "m", progress=False)
    finally:
        mp.undo()
    assert result.epochs_run == runs and result.best_epoch == 1


def test_epochs_between_evaluations_leave_the_best_weights_alone(data, tmp_path: Path) -> None:
    from recfuse.models.trained import TrainedModel
    from recfuse.training import trainer

    _root, full, ds, split = data
    cfg = _schedule_cfg(full)
    scores = iter([0.5, 0.2, 0.1])  # evaluated after epochs 2, 4, 6
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "recall_at_k", lambda q, items, vq, k: next(scores))
    try:
        train_cfg = dataclasses.replace(cfg.train, epochs=6, early_stopping_patience=0, eval_every_epochs=2)
        run = dataclasses.replace(cfg, train=train_cfg)
        result = trainer.train(run, ds, split, tmp_path / "m", progress=False)
    finally:
        mp.undo()
    assert result.epochs_run == 6 and (result.best_epoch, result.best_metric) == (2, pytest.approx(0.5))
    assert [("val_recall@10" in r) for r in result.history] == [False, True] * 3
    m = TrainedModel.load(tmp_path / "m")
    kept, n_users = m.query_tower.to_arrays(), m.user_vocab.size
    last = _tower_arrays(run, n_users, tmp_path / "m" / "checkpoints" / "ckpt-6", nested=True)
    assert any(not np.array_equal(last[n], kept[n]) for n in kept)  # epoch 2's weights, not the last ones


@pytest.mark.parametrize("momentum", [1e-6, 0.9])
def test_moving_average_of_the_weights_is_validated_and_kept(data, tmp_path: Path, momentum: float) -> None:
    """With train.ema_momentum the best checkpoint and the exported model hold the optimizer's
    average of the weights (a tiny momentum: the weights themselves), while the per-epoch checkpoint
    that training resumes from holds the trained weights."""
    from recfuse.models.trained import TrainedModel
    from recfuse.training import trainer

    _root, full, ds, split = data
    cfg = _schedule_cfg(full)
    scores = iter([0.1, 0.5, 0.2])
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "recall_at_k", lambda q, items, vq, k: next(scores))
    try:
        train_cfg = dataclasses.replace(cfg.train, epochs=3, early_stopping_patience=0, ema_momentum=momentum)
        run = dataclasses.replace(cfg, train=train_cfg)
        result = trainer.train(run, ds, split, tmp_path / "m", progress=False)
    finally:
        mp.undo()
    assert result.best_epoch == 2
    m = TrainedModel.load(tmp_path / "m")
    kept, n_users = m.query_tower.to_arrays(), m.user_vocab.size
    best = _tower_arrays(run, n_users, tmp_path / "m" / "checkpoints" / "best" / "ckpt", nested=False)
    trained_at_2 = _tower_arrays(run, n_users, tmp_path / "m" / "checkpoints" / "ckpt-2", nested=True)
    for name in kept:
        np.testing.assert_array_equal(best[name], kept[name])
    gap = max(float(np.abs(best[n] - trained_at_2[n]).max()) for n in kept)
    if momentum < 1e-3:
        assert gap < 1e-4  # the average of the last step is that step's weights
    else:
        assert gap > 1e-3  # an average over ~10 steps is not the last step's weights
    with pytest.raises(ConfigError, match=r"`train.ema_momentum` must be in \[0.0, 0.9999\], got 1.0"):
        RecfuseConfig.from_dict({"train": {"ema_momentum": 1.0}})


def test_learning_rate_is_cut_on_a_plateau_and_kept_on_resume(data, tmp_path: Path) -> None:
    from recfuse.training import trainer

    _root, full, ds, split = data
    cfg = _schedule_cfg(full)
    out = tmp_path / "m"
    mp = pytest.MonkeyPatch()

    def run(epochs: int, scores: list[float]) -> object:
        it = iter(scores)
        mp.setattr(trainer, "recall_at_k", lambda q, items, vq, k: next(it))
        train_cfg = dataclasses.replace(
            cfg.train, epochs=epochs, early_stopping_patience=0, lr_decay_patience=2, lr_decay_factor=0.5,
            min_learning_rate=0.004,
        )  # fmt: skip
        return trainer.train(dataclasses.replace(cfg, train=train_cfg), ds, split, out, progress=False)

    try:
        first = run(4, [0.2, 0.5, 0.1, 0.05])
        # two evaluations below 0.5 (epochs 3, 4): 0.01 -> 0.005 after epoch 4
        assert [r["learning_rate"] for r in first.history] == pytest.approx([0.01] * 4)
        state = json.loads((out / "train_state.json").read_text())
        assert state["learning_rate"] == pytest.approx(0.005) and state["lr_wait"] == 0
        # resumed: epoch 5 trains at 0.005; an improvement (epoch 6) restarts the count; epochs 7, 8
        # are flat again, and the next cut stops at min_learning_rate (0.004, not 0.0025)
        second = run(8, [0.3, 0.6, 0.1, 0.1])
    finally:
        mp.undo()
    lrs = [r["learning_rate"] for r in second.history]
    assert lrs == pytest.approx([0.01] * 4 + [0.005] * 4)
    state = json.loads((out / "train_state.json").read_text())
    assert state["learning_rate"] == pytest.approx(0.004)
    assert second.best_epoch == 6 and second.best_metric == pytest.approx(0.6)
