"""Synthetic generator: determinism, planted structure (style only in images, topic only in text,
preferences over style x topic combinations), dataset properties, and the shipped sample."""

from __future__ import annotations

import collections
import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recfuse.config import RecfuseConfig
from recfuse.data.splits import split_interactions
from recfuse.data.synthetic import AUDIO_DIM, SPAN_DAYS, generate
from recfuse.data.synthetic_media import N_STYLES, N_TOPICS
from recfuse.data.validate import load_dataset
from recfuse.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth")
    generate(out, n_items=400, n_users=200, seed=1)
    return out, pd.read_parquet(out / "items.parquet"), pd.read_parquet(out / "interactions.parquet")


def _tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 120, 30, seed=3)
    generate(b, 120, 30, seed=3)
    generate(c, 120, 30, seed=4)
    files = _tree(a)
    assert {"items.parquet", "interactions.parquet", "README.md", "recfuse.toml"} <= set(files)
    assert sum(f.startswith("images/") for f in files) > 90
    assert files == _tree(b)
    _, mismatch, errors = filecmp.cmpfiles(
        a, b, [f for f in files if f not in ("README.md", "recfuse.toml")], shallow=False
    )
    assert mismatch == [] and errors == []
    assert (a / "items.parquet").read_bytes() != (c / "items.parquet").read_bytes()
    # regenerating in place replaces files and removes stale images
    (a / "images" / "stale.png").write_bytes(b"x")
    generate(a, 120, 30, seed=3)
    assert _tree(a) == files and (a / "items.parquet").read_bytes() == (b / "items.parquet").read_bytes()


def _nn_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy (cosine on centred features)."""
    x = x - x.mean(axis=0)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return float((y[sim.argmax(axis=1)] == y).mean())


def test_style_is_visible_only_in_images(synth: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    out, items, _ = synth
    with_img = items[items["image"].notna()]
    pixels = np.stack(
        [np.asarray(Image.open(out / p).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR), np.float32).ravel()
         for p in with_img["image"]]
    )  # fmt: skip
    chance = 1.0 / N_STYLES
    assert _nn_accuracy(pixels, with_img["latent_style"].to_numpy()) > 2.0 * chance
    assert _nn_accuracy(pixels, with_img["latent_topic"].to_numpy()) < 1.6 * chance


def _bag(texts: list[str]) -> np.ndarray:
    """Bag of lower-cased words plus character bigrams of non-ASCII words (Chinese has no spaces)."""
    docs = []
    for t in texts:
        words = t.lower().replace(".", " ").replace("。", " ").split()
        c = collections.Counter(words)
        for w in words:
            if not w.isascii():
                c.update(w[i : i + 2] for i in range(len(w) - 1))
        docs.append(c)
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    out = np.zeros((len(docs), len(vocab)), np.float32)
    for i, d in enumerate(docs):
        for w, n in d.items():
            out[i, vocab[w]] = n
    return out


def test_topic_is_visible_only_in_text(synth: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, items, _ = synth
    text = (items["title"].fillna("") + " " + items["description"].fillna("")).str.strip()
    has = text != ""
    bag = _bag(text[has].tolist())
    chance = 1.0 / N_TOPICS
    assert _nn_accuracy(bag, items.loc[has, "latent_topic"].to_numpy()) > 3.0 * chance
    assert _nn_accuracy(bag, items.loc[has, "latent_style"].to_numpy()) < 1.6 * chance
    zh = has & (items["lang"] == "zh")
    assert zh.sum() > 10 and not items.loc[zh, "title"].str.contains(" ").any()
    assert not items.loc[zh, "description"].str.contains(" ").any()
    assert _nn_accuracy(_bag(text[zh].tolist()), items.loc[zh, "latent_topic"].to_numpy()) > 2.0 * chance


def _hit_rate(items: pd.DataFrame, inter: pd.DataFrame, key: np.ndarray, k: int = 10) -> float:
    """HR@k of scoring each item by how often the user's train items share its ``key``."""
    split = split_interactions(inter, "random", seed=0)
    index = {item: i for i, item in enumerate(items["item_id"])}
    pop = np.bincount([index[i] for i in split.train["item_id"]], minlength=len(items)).astype(float)
    train = split.train.groupby("user_id")["item_id"].apply(lambda s: [index[i] for i in s]).to_dict()
    test = split.test.groupby("user_id")["item_id"].apply(lambda s: {index[i] for i in s}).to_dict()
    hits = total = 0
    for user, seen in train.items():
        score = np.bincount(key[seen], minlength=int(key.max()) + 1)[key] + pop / (pop.max() + 1.0)
        score[seen] = -1.0
        top = set(np.argsort(-score, kind="stable")[:k].tolist())
        hits += len(top & test.get(user, set()))
        total += len(test.get(user, set()))
    return hits / total


def test_users_prefer_style_topic_combinations(synth: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, items, inter = synth
    style, topic = items["latent_style"].to_numpy(), items["latent_topic"].to_numpy()
    combo = _hit_rate(items, inter, style * N_TOPICS + topic)
    style_only = _hit_rate(items, inter, style)
    topic_only = _hit_rate(items, inter, topic)
    popular = _hit_rate(items, inter, np.zeros(len(items), dtype=np.int64))
    assert combo > 1.8 * max(style_only, topic_only, popular)


def test_dataset_properties(synth: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    out, items, inter = synth
    n = len(items)
    assert n == 400 and inter["user_id"].nunique() == 200
    assert 0.05 < items["image"].isna().mean() < 0.16
    no_text = (items["title"] == "") & items["description"].isna()
    assert 0.01 < no_text.mean() < 0.10
    assert 0.05 < (items["lang"] == "zh").mean() < 0.16
    new = set(items.loc[items["is_new"], "item_id"])
    assert len(new) > 5 and not new & set(inter["item_id"])
    assert all(len(v) == AUDIO_DIM for v in items["audio_vec"]) and all(len(c) == 2 for c in items["categories"])
    assert all(c[0].startswith("dept:") and c[1].startswith("price:") for c in items["categories"])
    assert set(items["latent_style"]) == set(range(N_STYLES)) and set(items["latent_topic"]) == set(range(N_TOPICS))
    assert inter["timestamp"].dtype == np.int64 and set(inter["event"]) == {"view", "click", "purchase"}
    for _, g in inter.groupby("user_id"):
        ts = g["timestamp"].to_numpy()
        assert (np.diff(ts) > 0).all() and ts[-1] - ts[0] <= SPAN_DAYS * 86_400
    assert inter.duplicated(["user_id", "item_id"]).sum() == 0
    # the generated config validates the generated data with no rejections
    cfg = RecfuseConfig.from_toml(out / "recfuse.toml")
    ds = load_dataset(cfg.data, cfg.modalities)
    assert ds.report.rejected == 0 and len(ds.items) == n and len(ds.interactions) == len(inter)
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "--items 400 --users 200 --seed 1" in readme and "What is planted" in readme


def test_generator_rejects_tiny_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`n_items` must be >= 50 to plant 6 styles x 6 topics, got 10"):
        generate(tmp_path, n_items=10, n_users=20, seed=0)
    with pytest.raises(ConfigError, match=r"`n_users` must be >= 10, got 2"):
        generate(tmp_path, n_items=100, n_users=2, seed=0)


def test_shipped_sample_is_valid_and_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = RecfuseConfig.from_toml(SAMPLE / "recfuse.toml")
    assert cfg.data.items == "data_samples/items.parquet"
    assert [(m.name, m.kind) for m in cfg.modalities] == [
        ("image", "image"), ("text", "text"), ("categories", "categorical"), ("audio", "vector"),
    ]  # fmt: skip
    ds = load_dataset(cfg.data, cfg.modalities)
    assert len(ds.items) == 1500 and ds.report.users == 800 and 20_000 <= len(ds.interactions) <= 30_000
    assert ds.report.rejected == 0
    apparent = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert apparent < 3 * 1024 * 1024
    assert "recfuse sample-data --out data_samples --items 1500 --users 800 --seed 7" in (
        SAMPLE / "README.md"
    ).read_text(encoding="utf-8")


@pytest.mark.slow
def test_shipped_sample_regenerates_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    generate("data_samples", n_items=1500, n_users=800, seed=7)
    fresh = tmp_path / "data_samples"
    # Other files may live beside the sample (experiment configs); recfuse.toml may be tuned by hand.
    generated = [f for f in _tree(fresh) if f != "recfuse.toml"]
    shipped = {f for f in _tree(SAMPLE) if f.startswith("images/")}
    assert {f for f in generated if f.startswith("images/")} == shipped
    _, mismatch, errors = filecmp.cmpfiles(fresh, SAMPLE, generated, shallow=False)
    assert mismatch == [] and errors == []
