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


@pytest.mark.slow
def test_experiment_end_to_end_writes_report_json_plots_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the sample config's data paths are relative to the repository root
    exp = tmp_path / "exp.toml"
    exp.write_text(FAST_EXPERIMENT)
    out = tmp_path / "out"
    assert main(["experiment", "--config", str(exp), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 variants x 2 seeds = 4 runs" in printed and "concat" in printed

    report = (out / "report.md").read_text()
    assert "## Verdict on recall@10" in report and "| **attention** (control) |" in report
    assert "| concat | model.fusion=concat |" in report
    results = json.loads((out / "results.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in results["runs"]) == [
        ("attention", 1), ("attention", 2), ("concat", 1), ("concat", 2)
    ]  # fmt: skip
    assert results["split"]["kind"] == "random" and results["analysis"]["users"]["all"] > 100
    for r in results["runs"]:
        assert 0.0 <= r["means"]["all"]["recall@10"] <= 1.0 and r["train"]["epochs_run"] == 1
    concat = next(c for c in results["analysis"]["comparisons"] if c["metric"] == "recall@10" and c["segment"] == "all")
    assert concat["verdict"] in ("better", "worse", "no significant difference", "within seed noise")
    assert concat["lo"] <= concat["delta"] <= concat["hi"]
    for name in ("curves_all.png", "ablation.png"):
        with Image.open(out / "plots" / name) as img:
            assert img.format == "PNG"
    # per-run per-user metrics were saved as each run finished
    assert (out / "runs" / "concat" / "seed-2" / "eval.json").exists()

    # `recfuse evaluate` on one run's model directory recomputes the same split and the same numbers
    eval_json = tmp_path / "eval.json"
    model_dir = out / "runs" / "concat" / "seed-1" / "model"
    assert main(["evaluate", "--model", str(model_dir), "--ks", "10,20", "--out", str(eval_json)]) == 0
    assert "[all] " in capsys.readouterr().out
    from recfuse.evaluation.result import EvalResult

    run = next(r for r in results["runs"] if (r["variant"], r["seed"]) == ("concat", 1))
    assert EvalResult.load(eval_json).means("all") == run["means"]["all"]

    # second call: every run is reused and the numbers are identical
    assert main(["experiment", "--config", str(exp), "--out", str(out), "--no-progress"]) == 0
    assert "4 of 4 runs reused" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == results

    # a run made by another config (fingerprint mismatch) is deleted and retrained; the others are reused,
    # and retraining with the same config and seed reproduces the same numbers
    meta_path = out / "runs" / "concat" / "seed-2" / "run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "fingerprint": "edited-config"}))
    assert main(["experiment", "--config", str(exp), "--out", str(out), "--no-progress"]) == 0
    assert "3 of 4 runs reused" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    means = {(r["variant"], r["seed"]): r["means"] for r in again["runs"]}
    assert means == {(r["variant"], r["seed"]): r["means"] for r in results["runs"]}


def test_evaluate_rejects_bad_ks_and_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(tmp_path), "--ks", "10,x"]) == 2
    assert "--ks must be comma-separated integers" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "none")]) == 5
    assert "model.json" in capsys.readouterr().err


def test_experiment_with_a_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(FAST_EXPERIMENT.replace('control = "attention"', 'control = "gated"'))
    assert main(["experiment", "--config", str(exp)]) == 2
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
    assert main(["ab", "analyze", "--exposures", str(tmp_path / "none"), "--feedback", feedback]) == 3
    assert "does not exist; pass the directory" in capsys.readouterr().err
    _write_log(tmp_path / "exp", 50, 0.0)
    code = main(["ab", "analyze", "--exposures", str(tmp_path / "exp"), "--feedback", str(tmp_path / "clicks.csv"),
                 "--shares", "attention=0.7"])  # fmt: skip
    assert code == 2 and "`shares` must sum to 1" in capsys.readouterr().err
