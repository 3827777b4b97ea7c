"""Quality bars on the shipped sample (prints tables; no asserts).

1. Held-out test split (``data.split`` of the config, default per-user random 8:1:1): Recall@10 and
   NDCG@10 by full ranking over the catalog, each user's train+val items masked, the query built
   from the user's train+val history.

   *What each modality brings* is measured on **content towers** (item-id embedding off, everything
   else the config's): the ``attention`` fusion over every modality vs the same model restricted
   to the image only and to the text only, and a popularity baseline. Bars: attention >= 1.2x
   image-only and text-only, >= 2x popularity. With an item-id embedding in every model the
   comparison measures the ids instead: on warm items with ~15 interactions each, ids alone learn
   the collaborative signal (see the second table), which hides what the content branches add.

   *As deployed* (item-id embedding on, with the config's id dropout): the attention model over
   every modality plus ids, next to an id-only two-tower (no content at all) and, on request, the
   image+ids / text+ids models.
2. ``cold_start`` split: items never seen in training; the attention content tower (``cold``) and
   the deployed attention model with ids (``cold_ids``; cold items have no trained id, so they are
   ranked from content alone) rank only the cold items for each test user; Recall@10 vs the
   expectation of a random ranking (10 / #cold items). Bar: >= 5x.

Same hyper-parameters for every variant (the config's), nothing tuned to the sample.

Usage:
    python bench/quality.py [--config data_samples/recfuse.toml] [--epochs 50] [--out runs/bench_quality]
        [--variants attention,image,text,attention_ids,id_only,cold,cold_ids] [--seeds 42,7]

``--seeds`` trains every chosen variant once per ``train.seed`` and ends with a table of means and the
bars computed on them (one run per cell varies by about ±0.015 Recall@10 on the sample).

``--epochs`` is the cap; early stopping on validation Recall@10 (``train.early_stopping_patience``,
``train.min_epochs``) picks the epoch of every variant, so a larger cap only lets slow learners
finish. ``--variants`` runs a subset (e.g. two processes in parallel on a small machine; extra
choices ``image_ids`` and ``text_ids``); the popularity baseline always runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import recfuse  # noqa: E402,F401
from recfuse.config import BundleConfig, RecfuseConfig  # noqa: E402
from recfuse.ranking import masked_topk  # noqa: E402

K = 10


def _metrics(top: np.ndarray, relevant: list[np.ndarray]) -> tuple[float, float]:
    recalls, ndcgs = [], []
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    for r, rel in enumerate(relevant):
        hits = np.isin(top[r, :K], rel)
        recalls.append(hits.sum() / len(rel))
        ideal = disc[: min(len(rel), K)].sum()
        ndcgs.append(float((hits * disc[: hits.shape[0]]).sum() / ideal))
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def _queries(split, item_vocab, candidates: set[str] | None = None):
    """Per test user: relevant test items (optionally restricted) and train+val items to mask."""
    import pandas as pd

    seen = pd.concat([split.train, split.val], ignore_index=True)
    seen_by_user = seen.groupby("user_id")["item_id"].apply(list).to_dict()
    users, relevant, exclude = [], [], []
    for user, group in split.test.groupby("user_id", sort=True):
        ids = [i for i in group["item_id"].astype(str) if candidates is None or i in candidates]
        idx = item_vocab.lookup(ids)
        idx = np.unique(idx[idx >= 0])
        if len(idx) == 0:
            continue
        users.append(str(user))
        relevant.append(idx)
        ex = item_vocab.lookup(seen_by_user.get(user, []))
        exclude.append(np.unique(ex[ex >= 0]))
    return users, relevant, exclude


def _train(cfg: RecfuseConfig, ds, split, out: Path):
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    t0 = time.perf_counter()
    result = train(cfg, ds, split, out, progress=False)
    model = TrainedModel.load(result.model_dir)
    return model, result, time.perf_counter() - t0


def _eval_model(model, split, candidates: set[str] | None = None) -> tuple[float, float, int]:
    users, relevant, exclude = _queries(split, model.item_vocab, candidates)
    q = model.query_embeddings(users, [model.user_histories.get(u, []) for u in users])
    items = model.ranking_embeddings
    if candidates is not None:
        # rank only the candidate items: mask every other item too
        allowed = np.zeros(len(model.item_ids), bool)
        allowed[model.item_vocab.lookup(sorted(candidates))] = True
        others = np.flatnonzero(~allowed)
        exclude = [np.union1d(e, others) for e in exclude]
    top = masked_topk(q, items, K, exclude=exclude).rows
    rec, ndcg = _metrics(top, relevant)
    return rec, ndcg, len(users)


def _popularity(model, split) -> tuple[float, float]:
    users, relevant, exclude = _queries(split, model.item_vocab)
    counts = np.array([model.popularity.get(i, 0) for i in model.item_ids], np.float32)
    scores = np.tile(counts[None, :], (len(users), 1))
    top = _rank_scores(scores, exclude)
    return _metrics(top, relevant)


def _planted_oracle(model, split, items) -> tuple[float, float]:
    """Reference ceiling from the sample's planted labels (never visible to models): each user's
    (style, topic) combinations that hold >= 15% of their train+val items (at least 2), items of
    those combinations ranked by training popularity, then everything else by popularity."""
    import pandas as pd

    users, relevant, exclude = _queries(split, model.item_vocab)
    lab = items.set_index(items["item_id"].astype(str)).loc[list(model.item_ids)]
    combo = lab["latent_style"].to_numpy() * 100 + lab["latent_topic"].to_numpy()
    counts = np.array([model.popularity.get(i, 0) for i in model.item_ids], np.float64)
    pop = counts / max(counts.max(), 1.0)
    seen = pd.concat([split.train, split.val], ignore_index=True).groupby("user_id")["item_id"].apply(list).to_dict()
    scores = np.empty((len(users), len(model.item_ids)))
    for r, user in enumerate(users):
        idx = model.item_vocab.lookup(list(map(str, seen.get(user, []))))
        c, n = np.unique(combo[idx[idx >= 0]], return_counts=True)
        liked = c[n >= max(2, 0.15 * n.sum())]
        scores[r] = np.isin(combo, liked) + 0.5 * pop
    return _metrics(_rank_scores(scores, exclude), relevant)


def _rank_scores(scores: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    s = scores.copy()
    for r, ex in enumerate(exclude):
        s[r, ex] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :K]


def _subset(cfg: RecfuseConfig, kinds: tuple[str, ...], variant: str) -> RecfuseConfig:
    mods = tuple(m for m in cfg.modalities if m.kind in kinds)
    if len(mods) == 1 and mods[0].token_dropout:
        # A text-only tower has no auxiliary loss to lift it off the early plateau; with word dropout
        # it stalls there until early stopping ends it (sample: 0.11 vs 0.22-0.25). The baseline is
        # trained without it, its stronger setting, so the ratio to it is not flattered.
        mods = (dataclasses.replace(mods[0], token_dropout=0.0),)
    return dataclasses.replace(cfg, modalities=mods, bundle=BundleConfig(variant=variant))


VARIANTS = ("attention", "image", "text", "attention_ids", "image_ids", "text_ids", "id_only", "cold", "cold_ids")


def _with_ids(cfg: RecfuseConfig, on: bool) -> RecfuseConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, item_id_embedding=on))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="data_samples/recfuse.toml")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--out", default="runs/bench_quality")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every variant, e.g. --set model.contrastive_weight=0")  # fmt: skip
    ap.add_argument("--seeds", default="",
                    help="comma list of train.seed values: every variant per seed, then means (e.g. 42,7)")  # fmt: skip
    ap.add_argument("--variants", default="attention,image,text,attention_ids,id_only,cold,cold_ids",
                    help=f"comma list of variants to train, from {', '.join(VARIANTS)}")  # fmt: skip
    args = ap.parse_args(argv)

    from recfuse.data.splits import split_interactions
    from recfuse.data.validate import load_dataset

    cfg = RecfuseConfig.from_toml(args.config)
    if args.epochs:
        cfg = cfg.with_overrides({"train.epochs": args.epochs})
    cfg = cfg.with_overrides({"model.fusion": "attention"})
    if args.set:
        from recfuse.cli.train_cmds import parse_overrides

        cfg = cfg.with_overrides(parse_overrides(args.set))
    out = Path(args.out)
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, cfg.data.split, cfg.data.split_seed)
    print(f"sample: {len(ds.items)} items, {ds.interactions['user_id'].nunique()} users, "
          f"{len(split.train)}/{len(split.val)}/{len(split.test)} train/val/test ({cfg.data.split} split)")  # fmt: skip
    print(f"config: dim={cfg.model.dim} epochs={cfg.train.epochs} batch={cfg.train.batch_size} "
          f"lr={cfg.train.learning_rate} temperature={cfg.model.temperature}")  # fmt: skip

    chosen = {v.strip() for v in args.variants.split(",") if v.strip()}
    unknown = sorted(chosen - set(VARIANTS))
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [cfg.train.seed]
    per_seed: list[dict[str, float]] = []
    for seed in seeds:
        if len(seeds) > 1:
            print(f"\n# train.seed = {seed}", flush=True)
        scfg = cfg.with_overrides({"train.seed": seed})
        sout = out / f"seed{seed}" if len(seeds) > 1 else out
        per_seed.append(_one_seed(scfg, args, chosen, ds, split, sout))
    if len(seeds) > 1:
        _print_means(seeds, per_seed)
    return 0


def _one_seed(  # type: ignore[no-untyped-def]
    cfg: RecfuseConfig, args: argparse.Namespace, chosen: set[str], ds, split, out: Path
) -> dict[str, float]:
    """Train and evaluate the chosen variants once; prints the tables, returns Recall@10 by row name."""
    from recfuse.data.splits import split_interactions

    content = _with_ids(cfg, False)
    deployed = _with_ids(cfg, True)
    plans = {
        "attention": ("content", "attention (all modalities)", dataclasses.replace(content, variant="attention")),
        "image": ("content", "image-only", _subset(content, ("image",), "image_only")),
        "text": ("content", "text-only", _subset(content, ("text",), "text_only")),
        "attention_ids": ("deployed", "attention (all modalities) + ids",
                          dataclasses.replace(deployed, variant="attention_ids")),
        "image_ids": ("deployed", "image + ids", _subset(deployed, ("image",), "image_ids")),
        "text_ids": ("deployed", "text + ids", _subset(deployed, ("text",), "text_ids")),
        "id_only": ("deployed", "id-only (no content)", _subset(deployed, (), "id_only")),
    }  # fmt: skip
    rows: dict[str, list[tuple[str, float, float, int, int, float]]] = {"content": [], "deployed": []}
    results: dict[str, float] = {}
    ref_model = None
    for key in VARIANTS:
        if key not in chosen or key not in plans:
            continue
        table, name, vcfg = plans[key]
        model, res, secs = _train(vcfg, ds, split, out / vcfg.variant)
        rec, ndcg, n = _eval_model(model, split)
        results[name] = rec
        rows[table].append((name, rec, ndcg, n, res.best_epoch, secs))
        ref_model = ref_model or model
        print(f"  trained {name}: val recall {res.best_metric:.4f} (best epoch {res.best_epoch}), {secs:.0f}s",
              flush=True)  # fmt: skip
    if ref_model is not None:
        pop_rec, pop_ndcg = _popularity(ref_model, split)
        results["popularity"] = pop_rec
        n_users = (rows["content"] or rows["deployed"])[0][3]
        rows["content"].append(("popularity", pop_rec, pop_ndcg, n_users, 0, 0.0))
        if {"latent_style", "latent_topic"} <= set(ds.items.columns):
            o_rec, o_ndcg = _planted_oracle(ref_model, split, ds.items)
            rows["content"].append(("reference: planted labels x popularity (not a model)", o_rec, o_ndcg, n_users,
                                    0, 0.0))  # fmt: skip

    titles = {
        "content": "Held-out test split, content towers (no item-id embedding): what each modality brings",
        "deployed": "Held-out test split, as deployed (item-id embedding on)",
    }
    for table, title in titles.items():
        if not rows[table]:
            continue
        print(f"\n## {title}; full ranking over the catalog, train+val items masked\n")
        print("| model | Recall@10 | NDCG@10 | users | best epoch | train s |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, rec, ndcg, n, be, secs in rows[table]:
            print(f"| {name} | {rec:.4f} | {ndcg:.4f} | {n} | {be} | {secs:.0f} |")
    print("\n| bar | ratio | goal | met |")
    print("|---|---:|---:|---|")
    for model_name, other, goal in (
        ("attention (all modalities)", "image-only", 1.2),
        ("attention (all modalities)", "text-only", 1.2),
        ("attention (all modalities)", "popularity", 2.0),
        ("attention (all modalities) + ids", "popularity", 2.0),
    ):
        if other not in results or model_name not in results:
            continue
        ratio = results[model_name] / results[other] if results[other] > 0 else float("inf")
        print(f"| {model_name} / {other} | {ratio:.2f}x | >= {goal}x | {'yes' if ratio >= goal else 'NO'} |")
    for model_name, other in (("attention (all modalities) + ids", "id-only (no content)"),
                              ("attention (all modalities) + ids", "attention (all modalities)")):  # fmt: skip
        if other in results and model_name in results and results[other] > 0:
            print(f"| {model_name} / {other} (context) | {results[model_name] / results[other]:.2f}x | – | – |")

    cold_plans = [(key, name, vcfg) for key, name, vcfg in (
        ("cold", "attention, content tower", content),
        ("cold_ids", "attention + ids (cold items: content only)", deployed),
    ) if key in chosen and not args.skip_cold]  # fmt: skip
    if cold_plans:
        cold_split = split_interactions(ds.interactions, "cold_start", cfg.data.split_seed,
                                        cold_item_fraction=cfg.data.cold_item_fraction)  # fmt: skip
        print("\n## Cold-start split: test users rank the cold items (never seen in training) from content\n")
        print("| model | Recall@10 | NDCG@10 | users | cold items | random Recall@10 | ratio | goal | met |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for key, name, vcfg in cold_plans:
        model, res, secs = _train(dataclasses.replace(vcfg, variant=f"cold_start_{key}"), ds, cold_split,
                                  out / f"cold_start_{key}")  # fmt: skip
        cold = {str(i) for i in cold_split.cold_items} & set(model.item_ids)
        rec, ndcg, n = _eval_model(model, cold_split, candidates=cold)
        rand = min(K, len(cold)) / max(len(cold), 1)
        ratio = rec / rand if rand > 0 else float("inf")
        results[f"cold: {name}"], results["cold: random"] = rec, rand
        print(f"| {name} | {rec:.4f} | {ndcg:.4f} | {n} | {len(cold)} | {rand:.4f} "
              f"| {ratio:.1f}x | >= 5x | {'yes' if ratio >= 5 else 'NO'} |", flush=True)  # fmt: skip
    return results


def _print_means(seeds: list[int], per_seed: list[dict[str, float]]) -> None:
    """Mean (and per-seed values) of every row and bar over the seeds."""
    names = [n for n in per_seed[0] if all(n in r for r in per_seed)]
    print(f"\n## Mean over seeds {', '.join(map(str, seeds))}: Recall@10\n")
    print("| model | mean | per seed |")
    print("|---|---:|---|")
    for name in names:
        vals = [r[name] for r in per_seed]
        print(f"| {name} | {np.mean(vals):.4f} | {' / '.join(f'{v:.4f}' for v in vals)} |")
    print("\n| bar (on the means) | ratio | per seed | goal | met |")
    print("|---|---:|---|---:|---|")
    bars = [
        ("attention (all modalities)", "image-only", 1.2),
        ("attention (all modalities)", "text-only", 1.2),
        ("attention (all modalities)", "popularity", 2.0),
        ("attention (all modalities) + ids", "popularity", 2.0),
        ("cold: attention, content tower", "cold: random", 5.0),
        ("cold: attention + ids (cold items: content only)", "cold: random", 5.0),
    ]
    for a, b, goal in bars:
        if a not in names or b not in names:
            continue
        ratio = np.mean([r[a] for r in per_seed]) / max(np.mean([r[b] for r in per_seed]), 1e-12)
        each = " / ".join(f"{r[a] / max(r[b], 1e-12):.2f}x" for r in per_seed)
        print(f"| {a} / {b} | {ratio:.2f}x | {each} | >= {goal}x | {'yes' if ratio >= goal else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
