"""Variant comparison and report on synthetic runs with a known winner (no training needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recfuse.config import RecfuseConfig
from recfuse.errors import DataError
from recfuse.evaluation.compare import compare_runs
from recfuse.evaluation.experiment import RunRecord
from recfuse.evaluation.experiment_config import ExperimentSpec, VariantSpec
from recfuse.evaluation.fullrank import evaluate_embeddings
from recfuse.evaluation.report import write_report
from recfuse.evaluation.result import EvalResult, SegmentResult

N_ITEMS, N_USERS, DIM = 300, 400, 16


def _world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    truth = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    scores = truth @ items.T
    order = np.argsort(-scores, axis=1)
    train = [order[u, :5] for u in range(N_USERS)]
    test = [order[u, 5:8] for u in range(N_USERS)]
    return items, truth, train, test


def _runs(noise: dict[str, float], seeds: tuple[int, ...]) -> dict[str, dict[int, EvalResult]]:
    items, truth, train, test = _world()
    users = [f"u{i:04d}" for i in range(N_USERS)]
    cold = np.zeros(N_ITEMS, dtype=bool)
    cold[::10] = True
    out: dict[str, dict[int, EvalResult]] = {}
    for v, (name, scale) in enumerate(noise.items()):
        for seed in seeds:
            rng = np.random.default_rng(1000 * v + seed)
            q = truth + scale * rng.normal(size=truth.shape).astype(np.float32)
            out.setdefault(name, {})[seed] = evaluate_embeddings(
                q, items, users, train, test, ks=(5, 10), cold_mask=cold, item_counts=np.arange(N_ITEMS)
            )
    return out


def _spec(seeds: tuple[int, ...]) -> ExperimentSpec:
    return ExperimentSpec(
        name="synthetic",
        base=RecfuseConfig(),
        variants=(VariantSpec("control"), VariantSpec("good", {"model.dim": 32}), VariantSpec("same", {}, ("text",))),
        control="control",
        seeds=seeds,
        metric="recall@10",
        ks=(5, 10),
        n_boot=500,
        n_perm=1000,
    )


NOISE = {"control": 2.0, "good": 0.5, "same": 2.0}


def test_known_winner_is_better_and_equal_variant_is_not() -> None:
    runs = _runs(NOISE, seeds=(1, 2, 3))
    a = compare_runs(runs, "control", "recall@10", n_boot=500, n_perm=1000)
    good, same = a.comparison("good", "recall@10"), a.comparison("same", "recall@10")
    assert good.verdict == "better" and good.lo > 0 and good.p_holm < 0.01
    assert same.verdict in ("no significant difference", "within seed noise")
    assert good.n_users == N_USERS and a.users["all"] == N_USERS and a.dropped_users["all"] == 0
    assert {"all", "warm", "cold"} <= set(a.users)
    # summaries: mean over seeds of per-seed means, seed sd across seeds
    s = a.summary("good", "recall@10")
    per_seed = [runs["good"][k].means()["recall@10"] for k in (1, 2, 3)]
    assert s.mean == pytest.approx(np.mean(per_seed)) and s.seed_sd == pytest.approx(np.std(per_seed, ddof=1))
    assert s.lo <= s.mean <= s.hi
    # Holm adjusts within the family of challengers
    assert good.p_holm >= good.p_value and same.p_holm >= same.p_value
    # aggregates carry seed spread only
    assert math.isnan(a.summary("good", "gini@10").lo)


def _hand(values_by_seed: dict[int, list[float]]) -> dict[int, EvalResult]:
    users = [f"u{i}" for i in range(len(next(iter(values_by_seed.values()))))]
    return {
        seed: EvalResult((10,), {"all": SegmentResult(users, {"recall@10": np.array(v)})}, n_items=100)
        for seed, v in values_by_seed.items()
    }


def test_difference_below_seed_noise_is_called_so() -> None:
    # control's seed means are 0.1 and 0.3 (sd 0.141); the variant beats every user by 0.05 in both seeds
    control = _hand({1: [0.1] * 50, 2: [0.3] * 50})
    variant = _hand({1: [0.15] * 50, 2: [0.35] * 50})
    both = compare_runs({"c": control, "v": variant}, "c", "recall@10", n_boot=200, n_perm=200)
    c = both.comparison("v", "recall@10")
    assert c.delta == pytest.approx(0.05) and c.p_value < 0.01
    assert c.seed_spread == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert c.verdict == "within seed noise"
    # one seed: the spread is unknown (0) and the same paired difference is "better"
    one = compare_runs({"c": {1: control[1]}, "v": {1: variant[1]}}, "c", "recall@10", n_boot=200, n_perm=200)
    assert one.comparison("v", "recall@10").verdict == "better"


def test_same_inputs_same_numbers() -> None:
    runs = _runs(NOISE, seeds=(1, 2))
    one = compare_runs(runs, "control", "recall@10", n_boot=300, n_perm=300).to_dict()
    two = compare_runs(runs, "control", "recall@10", n_boot=300, n_perm=300).to_dict()
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_report_json_and_plots(tmp_path: Path) -> None:
    seeds = (1, 2)
    spec = _spec(seeds)
    runs = _runs(NOISE, seeds)
    analysis = compare_runs(runs, "control", "recall@10", n_boot=500, n_perm=1000)
    records = [
        RunRecord(v, s, f"fp-{v}-{s}", "trained", {"epochs_run": 2, "train_seconds": 1.5}, tmp_path / "x")
        for v in runs for s in seeds
    ]  # fmt: skip
    split = {"kind": "random", "seed": 42, "train": 2000, "val": 400, "test": 1200}
    results, report, plots = write_report(tmp_path, spec, records, runs, analysis, split)
    md = report.read_text()
    assert "| good | model.dim=32 |" in md and "**better**" in md
    assert "| **control** (control) | (base config) |" in md
    assert "modalities=text" in md and "Metrics@10 — cold-start items" in md
    doc = json.loads(results.read_text())
    assert len(doc["runs"]) == 6 and doc["control"] == "control"
    run = next(r for r in doc["runs"] if (r["variant"], r["seed"]) == ("good", 2))
    assert run["means"]["all"]["recall@10"] == pytest.approx(runs["good"][2].means()["recall@10"])
    assert {c["verdict"] for c in doc["analysis"]["comparisons"]} <= {
        "better", "worse", "no significant difference", "within seed noise"
    }  # fmt: skip
    assert sorted(p.name for p in plots) == ["ablation.png", "curves_all.png", "curves_cold.png", "curves_warm.png"]
    for p in plots:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size[0] > 200
        assert f"plots/{p.name}" in md
    # the ablation chart's right panel draws the paired Δ in the verdict's colour: "good" is better
    # than the control, so tab:green (44, 160, 44) marks appear there
    with Image.open(tmp_path / "plots" / "ablation.png") as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    green = (np.abs(rgb - np.array([44, 160, 44])).sum(axis=2) < 30).sum()
    assert green > 20 and rgb.shape[1] > 1.8 * rgb.shape[0]


def test_too_few_users_is_a_data_error() -> None:
    items, truth, train, test = _world()
    res = evaluate_embeddings(truth[:1], items, ["u"], train[:1], test[:1], ks=(5,))
    with pytest.raises(DataError, match="only 1 user"):
        compare_runs({"a": {1: res}, "b": {1: res}}, "a", "recall@5")
    with pytest.raises(ValueError, match="control 'z' has no runs"):
        compare_runs({"a": {1: res}}, "z", "recall@5")
