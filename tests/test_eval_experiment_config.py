"""exp.toml parsing: the shipped example, run configs, fingerprints, and every error path."""

from __future__ import annotations

from pathlib import Path

import pytest

from recfuse.errors import ConfigError
from recfuse.evaluation.experiment_config import higher_is_better, load_experiment

ROOT = Path(__file__).resolve().parents[1]

HEAD = """
[experiment]
control = "a"
seeds = [1, 2]
ks = [5, 10]
metric = "ndcg@5"
[model]
dim = 16
"""
VARIANTS = """
[[variants]]
name = "a"
[[variants]]
name = "b"
overrides = { "model.fusion" = "concat" }
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


def test_shipped_example_parses() -> None:
    spec = load_experiment(ROOT / "data_samples" / "experiment.toml")
    assert spec.control == "attention" and len(spec.variants) >= 2 and len(spec.seeds) >= 2
    assert spec.base.data.items == "data_samples/items.parquet"  # from the base file
    assert spec.base.model.dim == 32  # inline table overrides the base
    text_only = spec.run_config(spec.variant("text-only"), 7)
    assert [m.name for m in text_only.modalities] == ["text", "categories"]
    assert text_only.train.seed == 7 and text_only.variant == "text-only"


def test_run_config_and_fingerprint(tmp_path: Path) -> None:
    spec = load_experiment(_write(tmp_path, HEAD + VARIANTS))
    a, b = spec.variant("a"), spec.variant("b")
    cfg = spec.run_config(b, 2)
    assert (cfg.model.fusion, cfg.model.dim, cfg.train.seed, cfg.variant) == ("concat", 16, 2, "b")
    assert spec.base.data.split_seed == cfg.data.split_seed
    assert spec.fingerprint(a, 1) == spec.fingerprint(a, 1)
    assert len({spec.fingerprint(a, 1), spec.fingerprint(a, 2), spec.fingerprint(b, 1)}) == 3
    assert spec.name == "exp" and spec.metric == "ndcg@5" and spec.ks == (5, 10)


def test_metric_direction() -> None:
    assert higher_is_better("recall@10") and not higher_is_better("gini@10")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (VARIANTS, r"needs an \[experiment\] table"),
        (HEAD, r"needs \[\[variants\]\] tables"),
        (HEAD.replace('control = "a"', 'control = "z"') + VARIANTS, r"`experiment.control` 'z' is not a variant"),
        (HEAD.replace("seeds = [1, 2]", "seeds = []") + VARIANTS, "`experiment.seeds` must be a non-empty list"),
        (HEAD.replace("seeds = [1, 2]", "seeds = [1, 1]") + VARIANTS, "distinct integers"),
        (HEAD.replace('"ndcg@5"', '"ndcg@7"') + VARIANTS, r"`experiment.metric` must be NAME@K .* got 'ndcg@7'"),
        (HEAD.replace('"ndcg@5"', '"gini@5"') + VARIANTS, r"`experiment.metric` must be NAME@K"),
        (HEAD + "seed = 3\n" + VARIANTS, r"unknown key\(s\) \['seed'\] in `model`"),
        (HEAD.replace("[model]", "colour = 1\n[model]") + VARIANTS, r"unknown key\(s\) \['colour'\] in `experiment`"),
        (HEAD + VARIANTS.replace('name = "b"', 'name = "a"'), r"must be unique, got duplicates \['a'\]"),
        (HEAD + VARIANTS.replace('name = "b"', 'name = "b/c"'), r"`variants\[1\].name` must be letters"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\noverrides = { "data.split_seed" = 3 }\n',
         r"may not change \['data.split_seed'\]: every variant must train on the same split"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\noverrides = { "model.fusoin" = "max" }\n',
         r"variant 'c': override 'model.fusoin': unknown key 'fusoin'"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\noverrides = { "model.fusion" = "best" }\n',
         r"variant 'c': `model.fusion` must be one of"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\nmodalities = ["smell"]\n',
         r"variant 'c': `modalities` \['smell'\] not in the base config"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\nmodalities = []\n', "must be a non-empty list of modality"),
        (HEAD + '[[modalities]]\nname = "a"\nkind = "vector"\ndim = 4\nmax_tokens = 8\n' + VARIANTS,
         r"`modalities.a.max_tokens` applies to kind 'text' only, got kind 'vector'"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\ncolour = 1\n',
         r"unknown key\(s\) \['colour'\] in `variants\[2\]`"),
        (HEAD.replace("[experiment]", '[experiment]\nbase = "nope.toml"') + VARIANTS,
         "`experiment.base` .* does not exist"),
        (HEAD.replace("[experiment]", "[experiment]\nalpha = 1.5") + VARIANTS,
         r"`experiment.alpha` must be in \(0, 1\)"),
        (HEAD.replace("[experiment]", "[experiment]\nn_boot = 5") + VARIANTS, "must be >= 100"),
        (HEAD.replace("ks = [5, 10]", 'ks = ["x"]') + VARIANTS,
         r"`experiment.ks\[0\]` must be an integer, got 'x' \(str\)"),
        (HEAD.replace("seeds = [1, 2]", "seeds = 3") + VARIANTS,
         r"`experiment.seeds` must be a list of integers, got 3 \(int\)"),
        (HEAD.replace("seeds = [1, 2]\n", "") + VARIANTS,
         r"`experiment` is missing the required key\(s\) \['seeds'\]"),
        (HEAD.replace("[experiment]", "[experiment]\nalpha = \"0.05\"") + VARIANTS,
         r"`experiment.alpha` must be a number, got '0.05' \(str\)"),
        (HEAD.replace("[experiment]", "[experiment]\nmetrics = \"ndcg@5\"") + VARIANTS,
         r"unknown key\(s\) \['metrics'\] in `experiment` \('metrics' -> did you mean 'metric'\?\)"),
        (HEAD + VARIANTS + '[[variants]]\nkind = "model"\n',
         r"`variants\[2\]` is missing the required key\(s\) \['name'\]"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\noverride = { "model.dim" = 8 }\n',
         r"unknown key\(s\) \['override'\] in `variants\[2\]` \('override' -> did you mean 'overrides'\?\)"),
        (HEAD + VARIANTS + '[[variants]]\nname = "c"\noverrides = 3\n',
         r"`variants\[2\].overrides` must be a table, got 3"),
        (HEAD + '[[variants]]\nname = "a"\n', "at least 2 entries"),
    ],
)
def test_invalid_experiments_raise_naming_the_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_experiment(_write(tmp_path, text))


def test_errors_start_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^experiment file '.*exp.toml': unknown key\(s\) \['colour'\] in `exp"):
        load_experiment(_write(tmp_path, HEAD.replace("[model]", "colour = 1\n[model]") + VARIANTS))
    with pytest.raises(ConfigError, match=r"^experiment file '.*': `baselines.itemknn_shrink` must be a number"):
        load_experiment(_write(tmp_path, HEAD + VARIANTS + '\n[baselines]\nitemknn_shrink = "x"\n'))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="experiment file .* does not exist"):
        load_experiment(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_experiment(_write(tmp_path, "[experiment"))


def test_shipped_example_has_the_three_baselines() -> None:
    spec = load_experiment(ROOT / "data_samples" / "experiment.toml")
    baselines = [(v.name, v.baseline) for v in spec.variants if v.is_baseline]
    assert baselines == [("popularity", "popularity"), ("itemknn", "itemknn"), ("ease", "ease")]


def test_baseline_variants_parse_and_fingerprint_without_the_seed(tmp_path: Path) -> None:
    text = HEAD + VARIANTS + """
[[variants]]
name = "strong"
kind = "baseline"
baseline = "ease"

[baselines]
ease_lambdas = [10.0, 20.0]
itemknn_neighbors = [5]
"""
    spec = load_experiment(_write(tmp_path, text))
    v = spec.variant("strong")
    assert v.is_baseline and v.baseline == "ease" and spec.baselines.ease_lambdas == (10.0, 20.0)
    assert spec.fingerprint(v, 1) == spec.fingerprint(v, 2) != spec.fingerprint(spec.variant("a"), 1)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ('name = "x"\nkind = "baseline"', r"baseline 'x' is not one of \['popularity', 'itemknn', 'ease'\]"),
        ('name = "ease"\nkind = "baseline"\nmodalities = ["text"]', r"is a baseline: \['modalities'\] do not apply"),
        ('name = "m"\nkind = "tower"', r"`variants\[2\].kind` must be 'model' or 'baseline', got 'tower'"),
        ('name = "m"\nbaseline = "ease"', r"`variants\[2\].baseline` needs `kind = \"baseline\"`"),
    ],
)
def test_bad_baseline_variants(tmp_path: Path, variant: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment(_write(tmp_path, HEAD + VARIANTS + "\n[[variants]]\n" + variant + "\n"))


def test_bad_baselines_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lambdas'\] in `baselines`"):
        load_experiment(_write(tmp_path, HEAD + VARIANTS + "\n[baselines]\nlambdas = [1.0]\n"))
    with pytest.raises(ConfigError, match=r"`baselines`: `ease_lambdas` must be a non-empty tuple"):
        load_experiment(_write(tmp_path, HEAD + VARIANTS + "\n[baselines]\nease_lambdas = []\n"))
