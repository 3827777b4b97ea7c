"""Training throughput per fusion variant, on cached features and on raw images, vs an id-only two-tower.

All models train on the same examples of the shipped sample in one process run. Cached features:
``image_vec`` (64-d) and ``text_vec`` (64-d) columns computed once here (a fixed random projection of
8x8 downsampled pixels, and of hashed token counts) — content quality is irrelevant for speed.
Raw: the sample's config (small CNN over decoded 32x32 images + TextVectorization text branch).
Id-only: no modalities, item-id embedding only (the cheapest two-tower).

Measured: steady-state examples/s of ``fit`` (epochs after the first, which includes tracing),
memory-bank refreshes included, validation excluded. Ratio = cost per example relative to id-only
(goal: fused on cached features <= 2x).

Usage:
    python bench/train_speed.py [--config data_samples/recfuse.toml] [--epochs 3] [--batch 256]
        [--fusions attention,concat] [--raw-fusions attention] [--set model.modality_loss_weight=0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import recfuse  # noqa: E402,F401
from recfuse.config import FUSIONS, ModalityConfig, RecfuseConfig  # noqa: E402


def cached_columns(items, images_dir: Path, dim: int = 64, seed: int = 0):
    """Add ``image_vec`` and ``text_vec`` columns (deterministic random projections)."""
    from recfuse.data.images import load_image

    rng = np.random.default_rng(seed)
    proj_img = rng.normal(size=(8 * 8 * 3, dim)).astype(np.float32) / np.sqrt(192)
    buckets = 2048
    proj_txt = rng.normal(size=(buckets, dim)).astype(np.float32) / np.sqrt(16)
    img_vecs, txt_vecs = [], []
    for row in items.itertuples(index=False):
        if row.image is None:
            img_vecs.append(None)
        else:
            img = load_image(row.image, images_dir, 8)
            img_vecs.append((img.reshape(-1) @ proj_img).tolist())
        text = f"{row.title} {getattr(row, 'description', '')}".lower().split()
        counts = np.zeros(buckets, np.float32)
        for tok in text:
            counts[zlib.crc32(tok.encode()) % buckets] += 1.0
        txt_vecs.append((counts @ proj_txt).tolist())
    out = items.copy()
    out["image_vec"] = img_vecs
    out["text_vec"] = txt_vecs
    return out


def measure(cfg: RecfuseConfig, ds, split, epochs: int) -> tuple[float, float, int]:
    """(steady-state examples/s, seconds to build the model + feature table, n examples)."""
    import tensorflow as tf

    from recfuse.data.vocab import IdVocab
    from recfuse.training.callbacks import MemoryBankRefresh
    from recfuse.training.examples import build_examples
    from recfuse.training.pipeline import make_dataset
    from recfuse.training.setup import build_model, user_vocabulary

    tf.keras.utils.set_random_seed(cfg.train.seed)
    t0 = time.perf_counter()
    item_vocab = IdVocab.build(ds.items["item_id"].tolist(), num_oov=0)
    user_vocab = user_vocabulary(cfg, sorted(set(split.train["user_id"])))
    ex = build_examples(split.train, item_vocab, user_vocab, cfg.data.max_history)
    counts = np.bincount(ex.item_idx, minlength=len(item_vocab)).astype(np.float64)
    warm = frozenset(item_vocab.ids[i] for i in np.flatnonzero(counts))
    built = build_model(cfg, ds.items, ds.images_dir, item_vocab, user_vocab, warm, counts / counts.sum(), counts)
    build_s = time.perf_counter() - t0
    model = built.model
    model.compile(tf.keras.optimizers.Adam(cfg.train.learning_rate))
    data = make_dataset(ex, user_vocab, cfg.train.batch_size, cfg.train.seed, cfg.train.user_dropout)

    times: list[float] = []

    class Timer(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    # the refresh callback runs inside the timed epoch (its cost is part of training)
    model.fit(
        data, epochs=epochs, verbose=0, callbacks=[Timer(), MemoryBankRefresh(model, cfg.train.memory_refresh_steps)]
    )
    steady = times[1:] or times
    return len(ex) * len(steady) / sum(steady), build_s, len(ex)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="data_samples/recfuse.toml")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per variant (the first is warm-up)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--fusions", default=",".join(FUSIONS))
    ap.add_argument("--raw-fusions", default=",".join(FUSIONS), help="fusions also measured on raw images ('' = none)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every model, e.g. --set model.modality_loss_weight=0")  # fmt: skip
    args = ap.parse_args(argv)

    import tensorflow as tf

    from recfuse.data.splits import split_interactions
    from recfuse.data.validate import load_dataset

    base = RecfuseConfig.from_toml(args.config).with_overrides({"train.batch_size": args.batch})
    if args.set:
        from recfuse.cli.train_cmds import parse_overrides

        base = base.with_overrides(parse_overrides(args.set))
    ds = load_dataset(base.data, base.modalities)
    split = split_interactions(ds.interactions, base.data.split, base.data.split_seed)
    t0 = time.perf_counter()
    cached_items = cached_columns(ds.items, ds.images_dir)
    cache_s = time.perf_counter() - t0
    cached_ds = dataclasses.replace(ds, items=cached_items)
    others = tuple(m for m in base.modalities if m.kind not in ("image", "text"))
    cached_mods = (
        ModalityConfig(name="image", kind="image", source="vector", columns=("image_vec",), dim=64),
        ModalityConfig(name="text", kind="text", source="vector", columns=("text_vec",), dim=64),
        *others,
    )
    print(f"sample: {len(ds.items)} items, {len(split.train)} training examples, batch {args.batch}, "
          f"{args.epochs} epochs per variant (first = warm-up); TF {tf.__version__}, "
          f"{os.cpu_count()} CPUs; cached columns computed in {cache_s:.1f}s")  # fmt: skip

    id_cfg = dataclasses.replace(base, modalities=(), variant="id_only")
    id_eps, id_build, _n = measure(id_cfg, ds, split, args.epochs)
    rows = [("id-only", "-", id_eps, id_build)]
    print(f"  id-only: {id_eps:,.0f} ex/s", flush=True)
    for fusion in args.fusions.split(","):
        fcfg = base.with_overrides({"model.fusion": fusion})
        cached_cfg = dataclasses.replace(fcfg, modalities=cached_mods)
        eps, build_s, _ = measure(cached_cfg, cached_ds, split, args.epochs)
        rows.append((fusion, "cached vectors", eps, build_s))
        print(f"  {fusion} cached: {eps:,.0f} ex/s", flush=True)
        if fusion in args.raw_fusions.split(","):
            eps, build_s, _ = measure(fcfg, ds, split, args.epochs)
            rows.append((fusion, "raw images", eps, build_s))
            print(f"  {fusion} raw: {eps:,.0f} ex/s", flush=True)

    print("\n| model | item features | examples/s | cost per example vs id-only | goal (cached) | build s |")
    print("|---|---|---:|---:|---:|---:|")
    for name, feats, eps, build_s in rows:
        ratio = id_eps / eps
        goal = "<= 2x " + ("yes" if ratio <= 2 else "NO") if feats == "cached vectors" else ""
        print(f"| {name} | {feats} | {eps:,.0f} | {ratio:.2f}x | {goal} | {build_s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
