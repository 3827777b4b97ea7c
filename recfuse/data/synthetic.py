"""Seeded multimodal synthetic dataset with planted structure where fusion matters.

Each item has a latent visual **style** (6: shape x colour family, visible only in its 32x32 PNG) and a
latent **topic** (6: visible only in its title/description; ~10% of items are in Chinese). Each user
prefers 1-2 (style, topic) combinations: ~80% of their interactions are items of those combinations
(weighted by a Zipf-like popularity), ~20% come from global popularity. So a model that sees only
images (or only text) can narrow a user's taste to one factor, while a fused model can pin down the
combination. Also: ~10% items without image, ~5% without text, categories (department + price band,
independent of style/topic), an ``audio_vec`` of dim 8 (weak noisy signal of style and topic), and
~5% "new" items that appear in the catalog only.

Columns ``latent_style``, ``latent_topic``, ``is_new`` and ``lang`` are kept in ``items.parquet`` for
tests and benchmarks; models must not read them. Same seed -> byte-identical files.

Example:
    >>> info = generate("data_samples", n_items=1500, n_users=800, seed=7)  # doctest: +SKIP
    >>> info.n_interactions  # doctest: +SKIP
    24xxx
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.data.synthetic_media import N_STYLES, N_TOPICS, TOPIC_NAMES, draw_style_png, make_text, style_parts
from recfuse.errors import ConfigError
from recfuse.fsio import atomic_write_bytes

logger = logging.getLogger(__name__)

T0 = 1_700_000_000  # 2023-11-14 UTC: fixed, so files never depend on "now"
DAY = 86_400
SPAN_DAYS = 180
AUDIO_DIM = 8
IMAGE_SIZE = 32
PREFERRED_SHARE = 0.8
ZIPF_EXPONENT = 0.9
NO_IMAGE_SHARE, NO_TEXT_SHARE, CHINESE_SHARE, NEW_SHARE = 0.10, 0.05, 0.10, 0.05
DEPARTMENTS = ("dept:home", "dept:sports", "dept:electronics", "dept:lifestyle", "dept:outlet")
PRICE_BANDS = ("price:low", "price:mid", "price:high")
EVENTS = ("view", "click", "purchase")
EVENT_P = (0.7, 0.2, 0.1)
EVENT_WEIGHT = {"view": 1.0, "click": 2.0, "purchase": 3.0}


@dataclass(frozen=True)
class SyntheticInfo:
    """What :func:`generate` wrote."""

    out_dir: Path
    seed: int
    n_items: int
    n_users: int
    n_interactions: int
    n_new_items: int
    n_without_image: int
    n_without_text: int
    n_chinese: int
    n_styles: int = N_STYLES
    n_topics: int = N_TOPICS

    @property
    def items_path(self) -> Path:
        return self.out_dir / "items.parquet"

    @property
    def interactions_path(self) -> Path:
        return self.out_dir / "interactions.parquet"

    @property
    def images_dir(self) -> Path:
        return self.out_dir / "images"


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=9, use_dictionary=True, row_group_size=1 << 20)
    return bytes(sink.getvalue().to_pybytes())


def _make_items(rng: np.random.Generator, n_items: int, img_dir: Path) -> tuple[pa.Table, dict[str, np.ndarray]]:
    style = rng.integers(0, N_STYLES, n_items)
    topic = rng.integers(0, N_TOPICS, n_items)
    has_image = rng.random(n_items) >= NO_IMAGE_SHARE
    has_text = rng.random(n_items) >= NO_TEXT_SHARE
    chinese = rng.random(n_items) < CHINESE_SHARE
    is_new = rng.random(n_items) < NEW_SHARE
    audio_style = rng.normal(size=(N_STYLES, AUDIO_DIM))
    audio_topic = rng.normal(size=(N_TOPICS, AUDIO_DIM))
    audio = 0.35 * audio_style[style] + 0.35 * audio_topic[topic] + rng.normal(size=(n_items, AUDIO_DIM))
    ids = [f"i{i + 1:05d}" for i in range(n_items)]
    titles: list[str] = []
    descriptions: list[str | None] = []
    images: list[str | None] = []
    categories: list[list[str]] = []
    for i in range(n_items):
        title, desc = make_text(rng, int(topic[i]), bool(chinese[i]))
        titles.append(title if has_text[i] else "")
        descriptions.append(desc if has_text[i] else None)
        png = draw_style_png(rng, int(style[i]), IMAGE_SIZE)  # drawn for every item: the stream stays aligned
        if has_image[i]:
            (img_dir / f"{ids[i]}.png").write_bytes(png)
            images.append(f"images/{ids[i]}.png")
        else:
            images.append(None)
        categories.append([DEPARTMENTS[int(rng.integers(0, len(DEPARTMENTS)))],
                           PRICE_BANDS[int(rng.integers(0, len(PRICE_BANDS)))]])  # fmt: skip
    table = pa.table({
        "item_id": pa.array(ids, pa.string()),
        "title": pa.array(titles, pa.string()),
        "description": pa.array(descriptions, pa.string()),
        "image": pa.array(images, pa.string()),
        "categories": pa.array(categories, pa.list_(pa.string())),
        "audio_vec": pa.array(audio.astype(np.float32).tolist(), pa.list_(pa.float32())),
        "latent_style": pa.array(style.astype(np.int64)),
        "latent_topic": pa.array(topic.astype(np.int64)),
        "is_new": pa.array(is_new),
        "lang": pa.array(np.where(chinese, "zh", "en").tolist(), pa.string()),
    })  # fmt: skip
    meta = {"style": style, "topic": topic, "is_new": is_new, "has_image": has_image, "has_text": has_text,
            "chinese": chinese}  # fmt: skip
    return table, meta


def _make_interactions(rng: np.random.Generator, n_users: int, meta: dict[str, np.ndarray]) -> pa.Table:
    n_items = len(meta["style"])
    combo = meta["style"] * N_TOPICS + meta["topic"]
    rank = rng.permutation(n_items)
    pop = 1.0 / (rank + 1.0) ** ZIPF_EXPONENT
    pop[meta["is_new"]] = 0.0
    global_p = pop / pop.sum()
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    events: list[str] = []
    for u in range(n_users):
        n_pref = 1 + int(rng.random() < 0.5)
        prefs = rng.choice(N_STYLES * N_TOPICS, size=n_pref, replace=False)
        pref_w = np.where(np.isin(combo, prefs), pop, 0.0)
        p = PREFERRED_SHARE * pref_w / pref_w.sum() + (1.0 - PREFERRED_SHARE) * global_p
        n = int(np.clip(round(rng.lognormal(np.log(25.0), 0.6)), 5, 150))
        n = min(n, int((p > 0).sum()))
        chosen = rng.choice(n_items, size=n, replace=False, p=p)
        start = T0 + int(rng.integers(0, 30 * DAY))
        span = int(rng.integers(20 * DAY, (SPAN_DAYS - 30) * DAY))
        offsets = np.sort(rng.integers(0, span, size=n)) + np.arange(n)  # strictly increasing
        users.extend([f"u{u + 1:04d}"] * n)
        items.extend(f"i{i + 1:05d}" for i in chosen)
        stamps.extend((start + offsets).tolist())
        events.extend(EVENTS[k] for k in rng.choice(len(EVENTS), size=n, p=EVENT_P))
    return pa.table({
        "user_id": pa.array(users, pa.string()),
        "item_id": pa.array(items, pa.string()),
        "timestamp": pa.array(stamps, pa.int64()),
        "event": pa.array(events, pa.string()),
        "weight": pa.array([EVENT_WEIGHT[e] for e in events], pa.float64()),
    })  # fmt: skip


def generate(out_dir: str | Path, n_items: int, n_users: int, seed: int) -> SyntheticInfo:
    """Write ``items.parquet``, ``interactions.parquet``, ``images/*.png``, ``README.md``, ``recfuse.toml``.

    Args:
        out_dir: target directory (created; files there are replaced atomically, stale images removed).
        n_items: catalog size (>= 50).
        n_users: number of users (>= 10).
        seed: random seed; the same arguments give byte-identical files.

    Returns:
        :class:`SyntheticInfo` with counts.

    Raises:
        ConfigError: sizes too small to plant the structure.

    Example:
        >>> info = generate(tmp_path / "d", n_items=200, n_users=100, seed=1)  # doctest: +SKIP
    """
    if n_items < 50:
        raise ConfigError(f"`n_items` must be >= 50 to plant 6 styles x 6 topics, got {n_items}")
    if n_users < 10:
        raise ConfigError(f"`n_users` must be >= 10, got {n_users}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    new_images = Path(tempfile.mkdtemp(prefix=".images.", dir=out))
    os.chmod(new_images, 0o755)
    try:
        items, meta = _make_items(rng, n_items, new_images)
        inter = _make_interactions(rng, n_users, meta)
        atomic_write_bytes(out / "items.parquet", _parquet_bytes(items))
        atomic_write_bytes(out / "interactions.parquet", _parquet_bytes(inter))
        old = out / "images"
        trash = out / f".images.old.{os.getpid()}"
        if old.exists():
            os.replace(old, trash)
        os.replace(new_images, old)
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(new_images, ignore_errors=True)
    info = SyntheticInfo(
        out_dir=out, seed=seed, n_items=n_items, n_users=n_users, n_interactions=inter.num_rows,
        n_new_items=int(meta["is_new"].sum()), n_without_image=int((~meta["has_image"]).sum()),
        n_without_text=int((~meta["has_text"]).sum()), n_chinese=int(meta["chinese"].sum()),
    )  # fmt: skip
    atomic_write_bytes(out / "README.md", readme_text(info).encode("utf-8"))
    atomic_write_bytes(out / "recfuse.toml", config_text(out).encode("utf-8"))
    logger.info("synthetic data: %d items, %d users, %d interactions in %s", n_items, n_users, info.n_interactions, out)
    return info


def config_text(out: Path) -> str:
    """A recfuse.toml for the generated files (paths as ``out`` was given: relative to the cwd of the run)."""
    return f"""# recfuse config for the synthetic sample (made by `recfuse sample-data`).
# Data paths are relative to the directory you run recfuse from.

[data]
items = "{(out / "items.parquet").as_posix()}"
interactions = "{(out / "interactions.parquet").as_posix()}"
split = "random"

[[modalities]]
name = "image"
kind = "image"
source = "raw"
image_size = {IMAGE_SIZE}

[[modalities]]
name = "text"
kind = "text"
columns = ["title", "description"]
# a token found in one item only is that item's id in disguise (and meaningless for a new item)
min_item_count = 2

[[modalities]]
name = "categories"
kind = "categorical"

[[modalities]]
name = "audio"
kind = "vector"
columns = ["audio_vec"]
dim = {AUDIO_DIM}
"""


def readme_text(info: SyntheticInfo) -> str:
    """README of a generated dataset: how it was made and what is planted."""
    styles = ", ".join(f"{s}={'/'.join(style_parts(s))}" for s in range(N_STYLES))
    topics = ", ".join(f"{t}={name}" for t, name in enumerate(TOPIC_NAMES))
    return f"""# Synthetic multimodal sample

Made by `recfuse sample-data --out {info.out_dir.as_posix()} --items {info.n_items} --users {info.n_users} \
--seed {info.seed}` (code: `recfuse/data/synthetic.py`, `recfuse/data/synthetic_media.py`). Running the same
command again gives byte-identical Parquet files and images.

## Files
- `items.parquet` — {info.n_items} items: `item_id`, `title`, `description`, `image` (path under this
  directory, null for {info.n_without_image} items), `categories` (department + price band), `audio_vec`
  (float32 x {AUDIO_DIM}), and the planted labels `latent_style`, `latent_topic`, `is_new`, `lang`
  (for tests and benchmarks only: models must not read them).
- `interactions.parquet` — {info.n_interactions} interactions of {info.n_users} users: `user_id`, `item_id`,
  `timestamp` (int64 unix seconds, increasing per user over up to {SPAN_DAYS} days from {T0}), `event`
  (view/click/purchase) and `weight` (1/2/3).
- `images/*.png` — {IMAGE_SIZE}x{IMAGE_SIZE} RGB.
- `recfuse.toml` — data paths and modalities (image raw {IMAGE_SIZE}px, text title+description,
  categories, audio vector dim {AUDIO_DIM}).

## What is planted
- **Style** (visible only in the image): {N_STYLES} styles = shape x colour family ({styles}), drawn with
  random position, size, rotation, hue jitter, background tint, pixel noise and a random distractor dot.
- **Topic** (visible only in the text): {N_TOPICS} topics ({topics}); titles/descriptions mix per-topic
  words with shared filler words and a few words of other topics. {info.n_chinese} items are written in
  Chinese (per-topic Chinese word pools, no spaces: character n-grams matter).
- **Users** prefer 1-2 (style, topic) combinations: {PREFERRED_SHARE:.0%} of their interactions come from
  items of those combinations, the rest from global popularity; item popularity is Zipf-like (exponent
  {ZIPF_EXPONENT}). Image-only or text-only models see only one factor of the preference; fusion is needed
  to rank well.
- **Missing modalities**: {info.n_without_image} items without image, {info.n_without_text} without text
  (empty title, null description).
- **New items**: {info.n_new_items} items (`is_new`) never appear in interactions (catalog only).
- `categories` and event types are independent of style/topic; `audio_vec` is a weak noisy signal
  (0.35 x style prototype + 0.35 x topic prototype + unit Gaussian noise).
"""
