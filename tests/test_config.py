"""Config: TOML < overrides, validation messages name the field, round-trip through to_dict."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from recfuse.config import IndexConfig, ModalityConfig, ModelConfig, RecfuseConfig
from recfuse.errors import ConfigError


def test_defaults_round_trip() -> None:
    cfg = RecfuseConfig()
    assert RecfuseConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.variant == cfg.bundle.variant == "default"  # never the fusion's name implicitly
    assert [m.name for m in cfg.modalities] == ["image", "text", "categories"]


def test_from_toml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(
        """
variant = "att-v2"
[model]
fusion = "gated"
dim = 32
query_hidden = [64, 32]
[[modalities]]
name = "audio"
kind = "vector"
dim = 8
[[modalities]]
name = "text"
kind = "text"
columns = ["title"]
""",
        encoding="utf-8",
    )
    cfg = RecfuseConfig.from_toml(path)
    assert cfg.model.fusion == "gated" and cfg.model.dim == 32 and cfg.model.query_hidden == (64, 32)
    assert cfg.modality("audio").columns == ("audio_vec",) and cfg.modality("audio").source == "vector"
    assert cfg.modality("text").columns == ("title",)
    over = cfg.with_overrides({"model.fusion": "max", "train.epochs": 3})
    assert over.model.fusion == "max" and over.train.epochs == 3 and over.variant == "att-v2"
    assert RecfuseConfig.from_dict(over.to_dict()) == over


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"model": {"fusion": "mean"}}, r"`model.fusion` must be one of .*'attention'.*got 'mean'"),
        ({"model": {"dim": "64"}}, r"`model.dim` must be an integer, got '64'"),
        ({"model": {"fuson": "max"}}, r"unknown key\(s\) \['fuson'\] in `model` \('fuson' -> did you mean 'fusion'"),
        ({"modl": {"dim": 8}}, r"unknown key\(s\) \['modl'\] in the top level \('modl' -> did you mean 'model'\?\)"),
        ({"model": {"query_hidden": [64, "32"]}}, r"`model.query_hidden\[1\]` must be an integer, got '32' \(str\)"),
        ({"model": {"query_hidden": 64}}, r"`model.query_hidden` must be a list of integers, got 64 \(int\)"),
        ({"model": {"temperature": "0.1"}}, r"`model.temperature` must be a number, got '0.1' \(str\)"),
        ({"model": {"temperature": float("nan")}}, r"`model.temperature` must be a finite number, got nan \(float\)"),
        ({"index": {"latency_bound_ms": float("inf")}}, r"`index.latency_bound_ms` must be a finite number, got inf"),
        ({"model": 3}, r"`model` must be a table, got 3 \(int\)"),
        ({"modalities": [{"kind": "text"}]}, r"`modalities\[0\]` is missing the required key\(s\) \['name'\]"),
        ({"modalities": [{"name": "audio", "kind": "vector"}]}, r"`modalities.audio.dim` must be the width"),
        ({"modalities": [{"name": "x", "kind": "sound"}]}, r"`modalities.x.kind` must be one of"),
        (
            {"modalities": [{"name": "a", "kind": "text"}, {"name": "a", "kind": "image"}]},
            r"must be unique, got duplicates \['a'\]",
        ),
        ({"index": {"metric": "cosine"}}, r"`index.metric` must be one of \['ip', 'l2'\], got 'cosine'"),
        ({"train": {"epochs": 0}}, r"`train.epochs` must be in \[1, 100000\], got 0"),
        (
            {"model": {"attention_user_conditioned": True}},
            r"`model.attention_user_conditioned` = True is not supported: .*indexed by FAISS.*remove the key",
        ),
        ({"model": {"item_id_embedding": False}, "modalities": []}, r"the item tower has no input"),
        ({"data": {"split": "weird"}}, r"`data.split` must be one of"),
        ({"train": {"history_encoding": "stale"}}, r"`train.history_encoding` must be one of \[.live."),
        ({"train": {"epochs": 5, "min_epochs": 9}}, r"`train.min_epochs` must be in \[0, 5\], got 9"),
        ({"model": {"popularity_prior": -0.1}}, r"`model.popularity_prior` must be in \[0.0, 10.0\], got -0.1"),
        ({"model": {"new_item_scale": 0.0}}, r"`model.new_item_scale` must be in \[0.1, 10.0\], got 0.0"),
        ({"train": {"lr_decay_factor": 1.5}}, r"`train.lr_decay_factor` must be in \[0.01, 0.99\], got 1.5"),
        ({"train": {"lr_decay_patience": -1}}, r"`train.lr_decay_patience` must be in \[0, 100000\], got -1"),
        ({"train": {"min_learning_rate": -0.1}}, r"`train.min_learning_rate` must be in \[0.0, 10.0\], got -0.1"),
        (
            {"modalities": [{"name": "text", "kind": "text", "min_item_count": 0}]},
            r"`modalities.text.min_item_count` must be in \[1, 1000000\], got 0",
        ),
        (
            {"modalities": [{"name": "img", "kind": "image", "cnn_convs_per_block": 0}]},
            r"`modalities.img.cnn_convs_per_block` must be in \[1, 8\], got 0",
        ),
        (
            {"modalities": [{"name": "img", "kind": "image", "augment": "yes"}]},
            r"`modalities\[0\].augment` must be true or false, got 'yes'",
        ),
        (
            {"modalities": [{"name": "img", "kind": "image", "source": "vector", "dim": 4, "augment": True}]},
            r"`modalities.img.augment` applies to the raw-image CNN only .*source 'vector'; remove it",
        ),
        (
            {"modalities": [{"name": "t", "kind": "text", "source": "vector", "dim": 4, "min_item_count": 2}]},
            r"`modalities.t.min_item_count` applies to token text only .*source 'vector'; remove it",
        ),
        (
            {"modalities": [{"name": "text", "kind": "text", "token_dropout": 0.95}]},
            r"`modalities.text.token_dropout` must be in \[0.0, 0.9\], got 0.95",
        ),
        (
            {"modalities": [{"name": "cats", "kind": "categorical", "token_dropout": 0.2}]},
            r"`modalities.cats.token_dropout` applies to token text only .*kind 'categorical'.*; remove it",
        ),
    ],
)
def test_invalid_config_names_the_field(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RecfuseConfig.from_dict(raw)


def test_bad_overrides_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"override 'model.nope': unknown key 'nope'"):
        RecfuseConfig().with_overrides({"model.nope": 1})
    with pytest.raises(ConfigError, match=r"override 'zzz.fusion': unknown section 'zzz'"):
        RecfuseConfig().with_overrides({"zzz.fusion": 1})
    with pytest.raises(ConfigError, match=r"does not exist"):
        RecfuseConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nfusion=", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        RecfuseConfig.from_toml(bad)
    with pytest.raises(ConfigError, match=r"no modality named 'audio'"):
        RecfuseConfig().modality("audio")


def test_file_errors_start_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text("[train]\nepoch = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^config file '.*cfg.toml': unknown key\(s\) \['epoch'\] in `train` "
                       r"\('epoch' -> did you mean 'epochs'\?\)"):  # fmt: skip
        RecfuseConfig.from_toml(path)
    path.write_text("[model]\ndim = 3.5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^config file '.*cfg.toml': `model.dim` must be an integer, got 3.5 "
                       r"\(float\)$"):  # fmt: skip
        RecfuseConfig.from_toml(path)


def test_a_written_modality_table_refuses_keys_of_another_kind(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text('[[modalities]]\nname = "img"\nkind = "image"\nmax_tokens = 16\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^config file '.*': `modalities.img.max_tokens` applies to kind 'text' "
                       r"only, got kind 'image'; remove it$"):  # fmt: skip
        RecfuseConfig.from_toml(path)
    path.write_text('[[modalities]]\nname = "tags"\nkind = "categorical"\nembedding_dim = 8\nimage_size = 32\n')
    with pytest.raises(ConfigError, match=r"`modalities.tags.image_size` applies to kind 'image' only"):
        RecfuseConfig.from_toml(path)
    cfg = RecfuseConfig()  # image, text, categories
    with pytest.raises(ConfigError, match=r"`modalities.categories.encoder` applies to kind 'text' only"):
        cfg.with_overrides({"modalities.categories.encoder": "transformer"})
    assert cfg.with_overrides({"modalities.categories.embedding_dim": 8}).modality("categories").embedding_dim == 8
    # a stored config holds every key of every modality: from_dict loads it; a file holds to_written_dict
    assert RecfuseConfig.from_dict(cfg.to_dict()) == cfg == RecfuseConfig.from_written_dict(cfg.to_written_dict())
    assert "max_tokens" not in cfg.to_written_dict()["modalities"][0]  # the image modality
    with pytest.raises(ConfigError, match=r"`modalities.image.encoder` applies to kind 'text' only"):
        RecfuseConfig.from_written_dict(cfg.to_dict())


@pytest.mark.parametrize(
    ("table", "match"),
    [
        # written at the default value: refused all the same, the key is in the file
        ('name = "body"\nkind = "text"\nimage_size = 64\n',
         r"`modalities.body.image_size` applies to kind 'image' only, got kind 'text'; remove it"),
        ('name = "body"\nkind = "text"\naugment = false\n',
         r"`modalities.body.augment` applies to kind 'image' only, got kind 'text'; remove it"),
        ('name = "img"\nkind = "image"\ntoken_dropout = 0.0\n',
         r"`modalities.img.token_dropout` applies to kind 'text' only, got kind 'image'; remove it"),
        ('name = "img"\nkind = "image"\nembedding_dim = 64\n',
         r"`modalities.img.embedding_dim` applies to kind 'text' and 'categorical' only, got kind 'image'"),
        ('name = "v"\nkind = "vector"\ndim = 4\nmin_item_count = 1\n',
         r"`modalities.v.min_item_count` applies to kind 'text' only, got kind 'vector'; remove it"),
    ],
)  # fmt: skip
def test_a_key_of_another_kind_is_refused_even_at_its_default(tmp_path: Path, table: str, match: str) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(f"[[modalities]]\n{table}", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^config file '.*cfg.toml': {match}"):
        RecfuseConfig.from_toml(path)


def test_keys_of_the_modalitys_own_kind_load() -> None:
    raw = {
        "modalities": [
            {"name": "img", "kind": "image", "image_size": 32, "augment": False, "cnn_filters": [8, 16]},
            {"name": "body", "kind": "text", "max_tokens": 16, "vocab_size": 100, "token_dropout": 0.1},
            {"name": "tags", "kind": "categorical", "vocab_size": 50, "embedding_dim": 8},
            {"name": "v", "kind": "vector", "dim": 4, "columns": ["v_vec"]},
        ]
    }
    cfg = RecfuseConfig.from_written_dict(raw)
    assert cfg.modality("body").max_tokens == 16 and cfg.modality("tags").embedding_dim == 8
    assert RecfuseConfig.from_written_dict(cfg.to_written_dict()) == cfg


def test_every_shipped_config_loads() -> None:
    from recfuse.data.synthetic import config_text
    from recfuse.evaluation.experiment_config import parse_experiment

    samples = Path(__file__).resolve().parent.parent / "data_samples"
    assert RecfuseConfig.from_toml(samples / "recfuse.toml").modalities
    assert parse_experiment(tomllib.loads((samples / "experiment.toml").read_text(encoding="utf-8")), samples).variants
    assert len(RecfuseConfig.from_written_dict(tomllib.loads(config_text(Path("sample")))).modalities) == 4


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # a key of another table: named with the table it was found in and the one it belongs to
        ("[model]\nlearning_rate = 0.01\n",
         r"\['learning_rate'\] in `model` \('learning_rate' -> did you mean \[train\] learning_rate\?\)"),
        ("[model]\nlearning_rat = 0.01\n",
         r"\['learning_rat'\] in `model` \('learning_rat' -> did you mean \[train\] learning_rate\?\)"),
        ("learning_rate = 0.01\n",
         r"\['learning_rate'\] in the top level \('learning_rate' -> did you mean \[train\] learning_rate\?\)"),
        ("[train]\nmax_tokens = 8\n",
         r"\['max_tokens'\] in `train` \('max_tokens' -> did you mean \[\[modalities\]\] max_tokens\?\)"),
        ('[[modalities]]\nname = "t"\nkind = "text"\nepochs = 2\n',
         r"\['epochs'\] in `modalities\[0\]` \('epochs' -> did you mean \[train\] epochs\?\)"),
        ("[model]\nseed = 1\n", r"\['seed'\] in `model` \('seed' -> did you mean \[train\] seed or \[index\] seed\?\)"),
        # a close key of the same table still wins
        ("[train]\nlearning_rat = 0.01\n",
         r"\['learning_rat'\] in `train` \('learning_rat' -> did you mean 'learning_rate'\?\)"),
    ],
)  # fmt: skip
def test_a_key_in_the_wrong_table_names_the_table_it_belongs_to(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^config file '.*cfg.toml': unknown key\(s\) {match}; known keys: "):
        RecfuseConfig.from_toml(path)


def test_an_override_of_a_key_in_the_wrong_section_names_its_section() -> None:
    cfg = RecfuseConfig()
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'; did you mean 'train.learning_rate'\?"):
        cfg.with_overrides({"model.learning_rate": 0.01})
    with pytest.raises(ConfigError, match=r"unknown key 'max_tokens'; did you mean 'modalities.text.max_tokens'\?"):
        cfg.with_overrides({"train.max_tokens": 8})
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'; did you mean 'epochs'\?"):
        cfg.with_overrides({"train.epoch": 2})


def test_attention_heads_resolve_from_dim_and_are_stored() -> None:
    heads = {d: RecfuseConfig.from_dict({"model": {"dim": d}}).model.attention_heads for d in (8, 16, 47, 48, 64, 512)}
    assert heads == {8: 2, 16: 2, 47: 2, 48: 3, 64: 4, 512: 4}
    cfg = RecfuseConfig.from_dict({"model": {"dim": 16, "attention_heads": 4}})
    assert cfg.model.attention_heads == 4  # an explicit value is kept
    # stored resolved, so a model trained at dim 64 reloads with 4 heads even if the rule changes
    assert RecfuseConfig().to_dict()["model"]["attention_heads"] == 4
    with pytest.raises(ConfigError, match=r"`model.attention_heads` must be in \[1, 64\], got 0"):
        RecfuseConfig.from_dict({"model": {"attention_heads": 0}})
    with pytest.raises(ConfigError, match=r"`model.attention_layers` must be in \[0, 8\], got 9"):
        RecfuseConfig.from_dict({"model": {"attention_layers": 9}})


def test_min_epochs_unset_is_a_quarter_of_the_cap_and_follows_it() -> None:
    cfg = RecfuseConfig()
    assert cfg.train.min_epochs is None and cfg.train.effective_min_epochs == 12  # 50 // 4
    # resolved when used, not stored: overriding the cap alone moves it, and a stored config keeps "unset"
    assert cfg.with_overrides({"train.epochs": 6}).train.effective_min_epochs == 1
    assert RecfuseConfig.from_dict(cfg.to_dict()).train.min_epochs is None
    assert cfg.with_overrides({"train.min_epochs": 0}).train.effective_min_epochs == 0
    assert cfg.with_overrides({"train.min_epochs": 30}).train.effective_min_epochs == 30


def test_augment_defaults_on_for_the_raw_image_cnn_only() -> None:
    cfg = RecfuseConfig.from_dict(
        {"modalities": [
            {"name": "img", "kind": "image"},
            {"name": "clip", "kind": "image", "source": "vector", "dim": 4},
            {"name": "text", "kind": "text"},
            {"name": "plain", "kind": "image", "augment": False},
        ]}
    )  # fmt: skip
    assert [m.augment for m in cfg.modalities] == [True, False, False, False]
    # the resolved value is what a stored config.json holds, so a reload builds the same CNN
    assert [m.augment for m in RecfuseConfig.from_dict(cfg.to_dict()).modalities] == [True, False, False, False]


def test_overrides_address_a_modality_by_name() -> None:
    cfg = RecfuseConfig()  # default modalities: image, text, categories
    over = cfg.with_overrides({"modalities.text.token_dropout": 0.2, "modalities.image.image_size": 32})
    assert over.modality("text").token_dropout == 0.2 and over.modality("image").image_size == 32
    assert cfg.modality("text").token_dropout == 0.0  # the original is untouched
    with pytest.raises(ConfigError, match=r"no modality named 'txt'; configured: \['image', 'text', 'categories'\]"):
        cfg.with_overrides({"modalities.txt.token_dropout": 0.2})
    with pytest.raises(ConfigError, match=r"name a modality, e.g. 'modalities.text.token_dropout'"):
        cfg.with_overrides({"modalities.token_dropout": 0.2})
    with pytest.raises(
        ConfigError, match=r"`modalities.image.token_dropout` applies to kind 'text' only, got kind 'image'"
    ):
        cfg.with_overrides({"modalities.image.token_dropout": 0.2})


def test_dataclass_validation_direct() -> None:
    with pytest.raises(ConfigError, match=r"`index.factory` must be a faiss factory string"):
        IndexConfig(factory=" ")
    with pytest.raises(ConfigError, match=r"`modalities\[\].name` must be a non-empty string"):
        ModalityConfig(name="", kind="text")
    with pytest.raises(ConfigError, match=r"`model.temperature` must be in"):
        ModelConfig(temperature=0.0)


def test_a_config_without_modalities_says_which_defaults_it_got(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="recfuse.config"):
        cfg = RecfuseConfig.from_dict({"data": {"split": "temporal"}})
    assert [m.name for m in cfg.modalities] == ["image", "text", "categories"]
    assert "declares no [[modalities]], so the default ones are used: image (image, columns ['image'])" in caplog.text
    assert "`modalities = []` (top level) for an item-id-only model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="recfuse.config"):
        ids_only = RecfuseConfig.from_dict({"modalities": []})
    assert ids_only.modalities == () and ids_only.variant == "default" and not caplog.text


def test_eval_protocol_config() -> None:
    from recfuse.config import EvalConfig

    assert RecfuseConfig().eval == EvalConfig(mask="train", history="auto")
    assert EvalConfig().resolved_history("temporal") == "train+valid" == EvalConfig().resolved_history("column")
    assert EvalConfig().resolved_history("random") == "train" == EvalConfig().resolved_history("cold_start")
    assert EvalConfig(history="train").resolved_history("temporal") == "train"
    cfg = RecfuseConfig.from_dict({"modalities": [], "eval": {"mask": "train+valid"}})
    assert cfg.eval.mask == "train+valid" and RecfuseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"`eval.mask` must be one of \['train', 'train\+valid'\], got 'all'"):
        RecfuseConfig.from_dict({"modalities": [], "eval": {"mask": "all"}})
    with pytest.raises(ConfigError, match=r"`eval.history` must be one of \['auto', 'train', 'train\+valid'\]"):
        RecfuseConfig.from_dict({"modalities": [], "eval": {"history": "test"}})


def test_a_stored_config_with_a_removed_key_still_loads_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw = RecfuseConfig().to_dict()
    raw["model"]["attention_user_conditioned"] = False  # what configs stored before its removal hold
    with caplog.at_level(logging.WARNING, logger="recfuse.config"):
        cfg = RecfuseConfig.from_dict(raw)
    assert "attention_user_conditioned` is no longer a setting" in caplog.text
    assert cfg == RecfuseConfig() and "attention_user_conditioned" not in cfg.to_dict()["model"]


def test_the_bundle_variant_is_explicit_and_old_configs_migrate(caplog: pytest.LogCaptureFixture) -> None:
    cfg = RecfuseConfig.from_dict({"modalities": [], "bundle": {"variant": "text-only"}})
    assert cfg.variant == "text-only" and cfg.to_dict()["bundle"] == {"variant": "text-only"}
    assert "variant" not in cfg.to_dict()  # one place for the name
    # a stored config from before [bundle] keeps publishing under its name, with a warning
    with caplog.at_level("WARNING", logger="recfuse.config"):
        old = RecfuseConfig.from_dict({"modalities": [], "variant": "attention"})
    assert old.variant == "attention" and RecfuseConfig.from_dict(old.to_dict()) == old
    assert "top-level `variant` is now `[bundle] variant`; read as bundle.variant = 'attention'" in caplog.text
    with pytest.raises(ConfigError, match=r"`variant` = 'a' and `bundle.variant` = 'b' are both set"):
        RecfuseConfig.from_dict({"modalities": [], "variant": "a", "bundle": {"variant": "b"}})
    with pytest.raises(ConfigError, match=r"`bundle.variant` must be 1-128 letters.*got '\.\./x'"):
        RecfuseConfig.from_dict({"modalities": [], "bundle": {"variant": "../x"}})
    assert cfg.with_overrides({"bundle.variant": "v2"}).variant == "v2"
