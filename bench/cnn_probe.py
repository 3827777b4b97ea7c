"""How much of the sample's planted image style can the raw-image CNN read? (prints a table; no asserts)

The sample's ``latent_style`` (shape x colour family, 6 classes) is visible only in the 32x32 image.
This probe trains :class:`recfuse.layers.image.ImageCNN` plus one softmax layer *on those labels*
(supervised, which no recfuse model ever sees) and reports held-out accuracy: an upper bound on what
the image branch can contribute, per CNN shape. It is how the default ``cnn_filters`` was chosen: a
retrieval model cannot use a style its image branch cannot see.

Usage:
    python bench/cnn_probe.py [--filters 16,32,64 16,32,64,128] [--convs-per-block 1 2] [--seeds 1,2]
        [--epochs 40] [--augment]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _load(sample: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd
    import tensorflow as tf

    items = pd.read_parquet(sample / "items.parquet")
    items = items[items["image"].notna()]
    images = np.stack([tf.io.decode_png(tf.io.read_file(str(sample / p))).numpy() for p in items["image"]])
    return images, items["latent_style"].to_numpy()


def probe(
    images: np.ndarray,
    labels: np.ndarray,
    filters: tuple[int, ...],
    seed: int,
    epochs: int,
    augment: bool,
    convs: int = 1,
):
    """Held-out accuracy (mean of the last 10 epochs, and best) of CNN + softmax on a fixed 80/20 split."""
    import tensorflow as tf

    from recfuse.layers.image import ImageCNN

    tf.keras.utils.set_random_seed(seed)
    held_out = np.random.default_rng(0).random(len(labels)) < 0.2
    inputs = tf.keras.Input(images.shape[1:], dtype=tf.uint8)
    cnn = ImageCNN(filters, augment=augment, convs_per_block=convs)
    logits = tf.keras.layers.Dense(int(labels.max()) + 1)(cnn(inputs))
    model = tf.keras.Model(inputs, logits)
    model.compile(
        tf.keras.optimizers.Adam(3e-3),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    t0 = time.perf_counter()
    hist = model.fit(
        images[~held_out],
        labels[~held_out],
        validation_data=(images[held_out], labels[held_out]),
        epochs=epochs,
        batch_size=64,
        verbose=0,
    )
    acc = hist.history["val_accuracy"]
    return float(np.mean(acc[-10:])), float(np.max(acc)), time.perf_counter() - t0, model.count_params()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=str(ROOT / "data_samples"))
    ap.add_argument("--filters", nargs="+", default=["16,32,64", "16,32,64,128"])
    ap.add_argument("--convs-per-block", type=int, nargs="+", default=[1])
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--augment", action="store_true", help="train with ImageCNN's flips and shifts")
    args = ap.parse_args(argv)

    images, labels = _load(Path(args.sample))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    chance = np.bincount(labels).max() / len(labels)
    print(f"{len(labels)} images, {len(np.unique(labels))} styles, chance {chance:.2f}; "
          f"80/20 split, {args.epochs} epochs, augment={args.augment}\n")  # fmt: skip
    print("| cnn_filters | convs/block | params | held-out accuracy, mean of last 10 epochs (per seed) "
          "| best epoch's | s/run |")  # fmt: skip
    print("|---|---:|---:|---|---|---:|")
    for spec, convs in [(f, c) for f in args.filters for c in args.convs_per_block]:
        filters = tuple(int(f) for f in spec.split(","))
        runs = [probe(images, labels, filters, s, args.epochs, args.augment, convs) for s in seeds]
        last = " / ".join(f"{r[0]:.3f}" for r in runs)
        best = " / ".join(f"{r[1]:.3f}" for r in runs)
        print(f"| {list(filters)} | {convs} | {runs[0][3]:,} | {np.mean([r[0] for r in runs]):.3f} ({last}) | {best} | "
              f"{np.mean([r[2] for r in runs]):.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
