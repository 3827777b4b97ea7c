"""`recfuse experiment` end to end on the shipped sample, and `recfuse ab analyze`, through the real CLI entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recfuse.cli.main import main
from recfuse.variants import Exposure, ExposureLogger, VariantAssigner

ROOT = Path(__file__).resolve().parents[1]

FAST_EXPERIMENT = f"""
[experiment]
name = "e2e"
base = "{ROOT / 'data_samples' / 'recfuse.toml'}"
control = "attention"
seeds = [1, 2]
ks = [10, 20]
metric = "recall@10"
n_boot = 300
n_perm = 500

[model]
dim = 16

[train]
epochs = 1
batch_size = 1024

# cheap modalities only, so four training runs stay well under a minute on two cores
[[modalities]]
name = "categories"
kind = "categorical"

[[modalities]]
name = "audio"
kind = "vector"
columns = ["audio_vec"]
dim = 8

[[variants]]
name = "attention"

[[variants]]
name = "concat"
overrides = {{ "model.fusion" = "concat" }}
"""

BASELINE_VARIANTS = """
[[variants]]
name = "popularity"
kind = "baseline"

[[variants]]
name = "itemknn"
kind = "baseline"

[[variants]]
name = "ease"
kind = "baseline"

[baselines]
ease_lambdas = [50.0, 500.0]
"""


@pytest.mark.slow
def test_experiment_end_to_end_writes_report_json_plots_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the sample config's data paths are relative to the repository root
    exp = tmp_path / "exp.toml"
    exp.write_text(FAST_EXPERIMENT + BASELINE_VARIANTS)
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(exp), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "5 variants x 2 seeds = 10 runs" in printed and "concat" in printed and "ease" in printed

    report = (out / "report.md").read_text()
    assert "## Verdict on recall@10" in report and "| **attention** (control) |" in report
    assert "| concat | model.fusion=concat |" in report
    assert "ranking excludes each user's train items; the query reads train" in report
    for name in ("popularity", "itemknn", "ease"):  # a row per baseline, with the paired test beside it
        assert f"| {name} | baseline `{name}`" in report
    assert "(lambda=" in report or "(l2=" in report or "chosen on valid" in report
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in results["runs"] if r["variant"] in ("attention", "concat")) == [
        ("attention", 1), ("attention", 2), ("concat", 1), ("concat", 2)
    ]  # fmt: skip
    ease_runs = [r for r in results["runs"] if r["variant"] == "ease"]
    # a baseline is fit once and stands for every seed: both seeds carry the same numbers
    assert [r["seed"] for r in ease_runs] == [1, 2] and ease_runs[0]["means"] == ease_runs[1]["means"]
    assert (out / "runs" / "ease" / "baseline" / "eval.json").exists()
    pop = next(r for r in results["runs"] if r["variant"] == "popularity")
    assert 0.0 < pop["means"]["all"]["recall@10"] < 1.0
    assert any(c["variant"] == "ease" and c["metric"] == "recall@10" for c in results["analysis"]["comparisons"])
    assert results["split"]["kind"] == "random" and results["analysis"]["users"]["all"] > 100
    for r in results["runs"]:
        assert 0.0 <= r["means"]["all"]["recall@10"] <= 1.0
        assert r["train"]["epochs_run"] == 1 if r["variant"] in ("attention", "concat") else "params" in r["train"]
    concat = next(c for c in results["analysis"]["comparisons"] if c["metric"] == "recall@10" and c["segment"] == "all")
    assert concat["verdict"] in ("better", "worse", "no significant difference", "within seed noise")
    assert concat["lo"] <= concat["delta"] <= concat["hi"]
    for name in ("curves_all.png", "ablation.png"):
        with Image.open(out / "plots" / name) as img:
            assert img.format == "PNG"
    # per-run per-user metrics were saved as each run finished
    assert (out / "runs" / "concat" / "seed-2" / "eval.json").exists()

    # `recfuse evaluate` on one run's model directory recomputes the same split and the same numbers,
    # and scores the baselines beside it on that split (the same numbers as the experiment's baseline runs)
    eval_json = tmp_path / "eval.json"
    model_dir = out / "runs" / "concat" / "seed-1" / "model"
    args = ["evaluate", "--model", str(model_dir), "--ks", "10,20", "--out", str(eval_json)]
    assert main([*args, "--baselines", "popularity"]) == 0
    printed = capsys.readouterr().out
    assert "[all] " in printed and "protocol: ranking excludes each user's train items" in printed
    pop_line = next(line for line in printed.splitlines() if line.strip().startswith("popularity "))
    assert f"{pop['means']['all']['hit@10']:.4f}" in pop_line and "model / best baseline" in printed
    from recfuse.evaluation.result import EvalResult

    run = next(r for r in results["runs"] if (r["variant"], r["seed"]) == ("concat", 1))
    assert EvalResult.load(eval_json).means("all") == run["means"]["all"]

    # what the exported bundle serves (its Recommender and index, k as served) beside the exact ranking:
    # a Flat index serves the exact ranking, so every metric is within 1% (served recall 1.0)
    bundles = tmp_path / "bundles"
    assert main(["export", "--model", str(model_dir), "--out", str(bundles)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_dir), "--bundle", str(bundles), "--ks", "10,20"]) == 0
    printed = capsys.readouterr().out
    assert "(exact ranking)" in printed and "(as served: Flat, " in printed
    assert "factory auto: chosen of 1 candidate(s), served recall@10 1.0000)" in printed
    lines = printed.splitlines()
    ratios = lines[lines.index("served / exact (all test items):") + 2].split()
    assert len(ratios) == 6 and all(0.99 <= float(r.rstrip("x")) <= 1.01 for r in ratios), ratios
    # the bundle alone: its stored training config gives the data, the split and the protocol
    assert main(["evaluate", "--bundle", str(bundles), "--ks", "10"]) == 0
    alone = capsys.readouterr().out
    assert "(as served: Flat" in alone and "served / exact" not in alone
    recall_line = next(line for line in alone.splitlines() if line.strip().startswith("recall@10"))
    assert f"{run['means']['all']['recall@10']:.4f}" in recall_line  # the experiment's number for this model
    assert main(["evaluate", "--ks", "10"]) == 2
    assert "give --model" in capsys.readouterr().err
    from recfuse.errors import ConfigError
    from recfuse.evaluation.bundle_eval import evaluate_bundle
    from recfuse.inference import Recommender

    with pytest.raises(ConfigError, match=r"`ks` max 5000 exceeds the bundle's max_k 1000; use smaller cut-offs"):
        evaluate_bundle(Recommender.from_bundle(bundles), None, ks=(10, 5000))  # type: ignore[arg-type]

    # a model whose recorded split differs from what the data gives now is refused, not scored
    moved = tmp_path / "moved-model"
    import shutil

    shutil.copytree(model_dir, moved)
    info = json.loads((moved / "model.json").read_text())
    info["split"]["fingerprint"] = "0" * 64
    (moved / "model.json").write_text(json.dumps(info))
    assert main(["evaluate", "--model", str(moved), "--ks", "10"]) == 4
    assert "was trained on a 'random' split" in capsys.readouterr().err

    # second call: every run is reused and the numbers are identical
    assert main(["experiment", "--config", str(exp), "--out", str(out), "--no-progress"]) == 0
    assert "10 of 10 runs reused" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == results

    # a run made by another config (fingerprint mismatch) is deleted and retrained; the others are reused,
    # and retraining with the same config and seed reproduces the same numbers
    meta_path = out / "runs" / "concat" / "seed-2" / "run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "fingerprint": "edited-config"}))
    assert main(["experiment", "--config", str(exp), "--out", str(out), "--no-progress"]) == 0
    assert "9 of 10 runs reused" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    means = {(r["variant"], r["seed"]): r["means"] for r in again["runs"]}
    assert means == {(r["variant"], r["seed"]): r["means"] for r in results["runs"]}


@pytest.mark.slow
@pytest.mark.parametrize("once", [False, True], ids=["selection-run", "refit-epochs"])
def test_experiment_scores_a_variant_with_its_head_refitted_with_the_model(
    once: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from recfuse.evaluation.result import EvalResult
    from recfuse.itemitem import load_item_head

    monkeypatch.chdir(ROOT)
    exp = tmp_path / "exp.toml"
    concat = 'overrides = { "model.fusion" = "concat" }'
    assert concat in FAST_EXPERIMENT
    fixed = (', "train.refit_epochs" = 1, "item_head.history_decays" = [1.0], "item_head.betas" = [0.5], '
             '"item_head.content_betas" = [1.0]') if once else ""  # fmt: skip
    # with a content term: the experiment hands the head its catalog's audio vectors
    with_head = concat.replace(' }', ', "item_head.method" = "itemknn", "item_head.knn_neighbors" = [5], '
                                     '"item_head.content_modality" = "audio", "item_head.content_neighbors" = 4, '
                                     f'"train.refit" = true, "train.min_epochs" = 0{fixed} }}')  # fmt: skip
    exp.write_text(FAST_EXPERIMENT.replace("seeds = [1, 2]", "seeds = [1]").replace(concat, with_head))
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(exp), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    model_dir = out / "runs" / "concat" / "seed-1" / "model"
    served = load_item_head(model_dir / "item_head")
    if once:  # train.refit_epochs: one training, and the head's choices are the config's
        assert not (model_dir / "selection").exists()
        assert [r["stage"] for r in served.selection] == ["fixed"] and served.selection[0]["multiplier"] == 0.5
        assert served.selection[0]["content_multiplier"] == 1.0 and served.params["content_multiplier"] == 1.0
    else:
        chosen = load_item_head(model_dir / "selection" / "item_head")
        assert served.selection[:-1] == chosen.selection and served.selection[-1]["stage"] == "refit"
        assert [r["multiplier"] for r in chosen.selection if r["stage"] == "content"] == [0.0, 0.02, 0.04, 0.08, 0.16]
        assert served.params["content_multiplier"] == chosen.params["content_multiplier"]
    # the run was scored with the refitted head, as `recfuse train` would serve it; the control has none
    info = EvalResult.load(out / "runs" / "concat" / "seed-1" / "eval.json").info["item_head"]
    assert info["params"] == served.params and info["beta"] == served.beta
    assert info["params"]["neighbors"] == 5 and info["params"]["content_neighbors"] == 4
    assert "item_head" not in EvalResult.load(out / "runs" / "attention" / "seed-1" / "eval.json").info
    assert not (out / "runs" / "attention" / "seed-1" / "model" / "item_head").exists()


def test_evaluate_rejects_bad_ks_and_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(tmp_path), "--ks", "10,x"]) == 2
    assert "--ks must be comma-separated integers" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "none")]) == 5
    assert "model.json" in capsys.readouterr().err


def test_experiment_with_a_bad_config_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(FAST_EXPERIMENT.replace('control = "attention"', 'control = "gated"'))
    assert main(["experiment", "--config", str(exp)]) == 3
    assert "`experiment.control` 'gated' is not a variant" in capsys.readouterr().err


def _write_log(directory: Path, n_users: int, lose_concat: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shares = {"attention": 0.5, "concat": 0.5}
    users = [f"u{i}" for i in range(n_users)]
    clicks = []
    with ExposureLogger(directory, rotate_rows=500) as log:
        for user, variant in zip(users, VariantAssigner("cli", shares).assign_many(users)):
            if variant == "concat" and rng.random() < lose_concat:
                continue
            rid = f"{user}-0"
            items = [f"i{j}" for j in range(5)]
            log.log(Exposure(rid, user, variant, items, [1.0] * 5, ts=100.0))
            for item in np.array(items)[rng.random(5) < (0.1 if variant == "attention" else 0.2)]:
                clicks.append({"request_id": rid, "item_id": str(item)})
    return pd.DataFrame(clicks)


def test_ab_analyze_reports_ctr_and_a_fair_srm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clicks = _write_log(tmp_path / "exp", 2000, lose_concat=0.0)
    clicks.to_parquet(tmp_path / "clicks.parquet")
    out_json = tmp_path / "ab.json"
    code = main(["ab", "analyze", "--exposures", str(tmp_path / "exp"), "--feedback", str(tmp_path / "clicks.parquet"),
                 "--shares", "attention=0.5,concat=0.5", "--out", str(out_json), "--strict"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "SAMPLE RATIO MISMATCH" not in captured.err
    assert "concat - attention" in captured.out and "SRM check ok" in captured.out
    doc = json.loads(out_json.read_text())
    by = {v["variant"]: v for v in doc["variants"]}
    assert by["attention"]["ctr"]["lo"] < 0.1 < by["attention"]["ctr"]["hi"]
    assert by["concat"]["ctr"]["lo"] < 0.2 < by["concat"]["ctr"]["hi"]
    assert doc["counts"]["unmatched_feedback"] == 0


def test_ab_analyze_warns_loudly_on_srm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clicks = _write_log(tmp_path / "exp", 2000, lose_concat=0.2, seed=1)
    clicks.to_csv(tmp_path / "clicks.csv", index=False)
    argv = ["ab", "analyze", "--exposures", str(tmp_path / "exp"), "--feedback", str(tmp_path / "clicks.csv"),
            "--shares", "attention=0.5,concat=0.5"]  # fmt: skip
    assert main(argv) == 0
    assert "!!! SAMPLE RATIO MISMATCH" in capsys.readouterr().err
    assert main([*argv, "--strict"]) == 1


def test_ab_analyze_errors_exit_with_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clicks.csv").write_text("request_id,item_id\nr1,i1\n")
    feedback = str(tmp_path / "clicks.csv")
    assert main(["ab", "analyze", "--exposures", str(tmp_path / "none"), "--feedback", feedback]) == 4
    assert "does not exist; pass the directory" in capsys.readouterr().err
    _write_log(tmp_path / "exp", 50, 0.0)
    code = main(["ab", "analyze", "--exposures", str(tmp_path / "exp"), "--feedback", str(tmp_path / "clicks.csv"),
                 "--shares", "attention=0.7"])  # fmt: skip
    assert code == 3 and "`shares` must sum to 1" in capsys.readouterr().err
