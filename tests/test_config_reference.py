"""`recfuse config-reference`: docs/config-reference.md is current and names every key of every section."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from recfuse_serving import config as server_config

from recfuse import config as cfg
from recfuse.cli import config_ref
from recfuse.cli.main import main
from recfuse.errors import ConfigError
from recfuse.evaluation import baselines, experiment_config

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "config-reference.md"


def _tables(text: str) -> dict[tuple[str, str], list[str]]:
    """``(file, table) -> keys`` of a rendered reference (``## file``, ``### table``, ``| `key` |`` rows)."""
    tables: dict[tuple[str, str], list[str]] = {}
    file = table = ""
    for line in text.splitlines():
        if line.startswith("## "):
            file = line[3:].strip()
        elif line.startswith("### "):
            table = line[4:].strip()
            tables[(file, table)] = []
        elif line.startswith("| `"):
            tables[(file, table)].append(line.split("`")[1])
    return tables


def _names(cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in skip]


def test_committed_reference_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-reference", "--check", "--out", str(REFERENCE)]) == 0, (
        "docs/config-reference.md is stale: run `recfuse config-reference`"
    )
    assert "is current" in capsys.readouterr().out


def test_every_field_of_every_section_is_in_the_reference() -> None:
    tables = _tables(REFERENCE.read_text(encoding="utf-8"))
    expected = {
        ("recfuse.toml", "top level"): ["modalities", *_names(cfg.RecfuseConfig, (
            "data", "modalities", "model", "train", "index", "eval", "bundle", "item_head"))],
        ("recfuse.toml", "[data]"): _names(cfg.DataConfig),
        ("recfuse.toml", "[[modalities]]"): _names(cfg.ModalityConfig),
        ("recfuse.toml", "[model]"): _names(cfg.ModelConfig),
        ("recfuse.toml", "[train]"): _names(cfg.TrainConfig),
        ("recfuse.toml", "[index]"): _names(cfg.IndexConfig),
        ("recfuse.toml", "[eval]"): _names(cfg.EvalConfig),
        ("recfuse.toml", "[bundle]"): _names(cfg.BundleConfig),
        ("recfuse.toml", "[item_head]"): _names(cfg.ItemHeadConfig),
        ("exp.toml", "[experiment]"): _names(experiment_config.ExperimentSettings),
        ("exp.toml", "[[variants]]"): _names(experiment_config.VariantSpec),
        ("exp.toml", "[baselines]"): _names(baselines.BaselineSettings),
        ("server.toml", "top level"): _names(server_config.ServerConfig, ("ab", "exposures", "tls", "auth")),
        ("server.toml", "[ab]"): _names(server_config.ABConfig),
        ("server.toml", "[exposures]"): _names(server_config.ExposureConfig),
        ("server.toml", "[tls]"): _names(server_config.TLSConfig),
        ("server.toml", "[auth]"): _names(server_config.AuthConfig),
    }  # fmt: skip
    assert tables == expected
    # the [experiment] table documents exactly the keys the parser accepts
    assert set(expected[("exp.toml", "[experiment]")]) == experiment_config._EXPERIMENT_KEYS
    # every section of the configs is covered
    assert {f.name for f in dataclasses.fields(cfg.RecfuseConfig)} - {"modalities"} == {
        t.strip("[]") for (file, t) in tables if file == "recfuse.toml" and t.startswith("[") and "modal" not in t
    }


def test_every_key_has_a_description() -> None:
    secs = config_ref.sections(config_ref.server_source(""))
    missing = [
        f"{s.file} {s.table} {k.name}"
        for s in secs
        for k in s.keys
        if k.doc == config_ref.NO_DOC or k.doc.startswith("(")  # "—" or a bare group label: "(image options)"
    ]
    assert not missing, f"document these keys (the dataclass docstring's Attributes, or a comment): {missing}"


def test_server_defaults_read_from_source_equal_the_dataclass_defaults() -> None:
    secs = config_ref.sections(config_ref.server_source(""))
    keys = {(s.table, k.name): k for s in secs if s.file == "server.toml" for k in s.keys}
    classes = {"top level": server_config.ServerConfig, "[ab]": server_config.ABConfig,
               "[exposures]": server_config.ExposureConfig, "[auth]": server_config.AuthConfig}  # fmt: skip
    for table, cls in classes.items():
        for f in dataclasses.fields(cls):
            if (table, f.name) not in keys:
                continue  # a nested table
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            assert keys[(table, f.name)].default == config_ref.toml_value(value), f.name


def test_check_fails_on_a_stale_or_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ref.md"
    assert main(["config-reference", "--check", "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["config-reference", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == REFERENCE.read_text(encoding="utf-8")
    out.write_text(out.read_text(encoding="utf-8").replace("| `dim` |", "| `width` |", 1), encoding="utf-8")
    assert main(["config-reference", "--check", "--out", str(out)]) == 1
    assert "is stale; regenerate it with `recfuse config-reference" in capsys.readouterr().err


def test_missing_server_source_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.py"
    assert main(["config-reference", "--out", str(tmp_path / "r.md"), "--server-source", str(missing)]) == 2
    assert "`--server-source`" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is not a file; pass the path of recfuse_serving/config.py"):
        config_ref.server_source(str(missing))
    other = tmp_path / "other.py"
    other.write_text("class Other:\n    x: int = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="defines no class ServerConfig"):
        config_ref.sections(other)


def test_field_docs_read_attributes_entries_and_comments() -> None:
    source = '''
class C:
    """Summary line.

    Attributes:
        a: first sentence (with a. period inside). Second sentence.
        b / c: shared
            over two lines, e.g. this. Not this.
        d, e: listed. f: inline entry. Not this.
    """

    a: int = 1
    b: int = 2
    c: int = 3
    d: int = 4
    e: int = 5
    f: int = 6
    # a comment over
    # two lines. Not this
    g: int = 7
    # image options
    h: int = 8
    i: int = 9

    j: int = 10
'''
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef)
    docs = config_ref.field_docs(node, source.splitlines())
    assert docs == {
        "a": "First sentence (with a. period inside).",
        "b": "Shared over two lines, e.g. this.",
        "c": "Shared over two lines, e.g. this.",
        "d": "Listed.",
        "e": "Listed.",
        "f": "Inline entry.",
        "g": "A comment over two lines.",
        "h": "(image options)",
        "i": "(image options)",
    }


def test_toml_values() -> None:
    assert [config_ref.toml_value(v) for v in (None, True, "a", 3, 1e-5, (16, 32), {"a": 0.5}, ())] == [
        "unset", "true", '"a"', "3", "1e-05", "[16, 32]", "{a = 0.5}", "[]",
    ]  # fmt: skip


def test_every_modality_key_names_the_kinds_it_applies_to() -> None:
    lines = REFERENCE.read_text(encoding="utf-8").split("### [[modalities]]", 1)[1].split("\n### ", 1)[0].splitlines()
    assert "| key | type | default | kinds | description |" in lines
    kinds = {row.split("`")[1]: row.split(" | ")[3] for row in lines if row.startswith("| `")}
    assert set(kinds) == set(_names(cfg.ModalityConfig))
    assert kinds["max_tokens"] == "text" and kinds["image_size"] == "image" and kinds["augment"] == "image"
    assert kinds["vocab_size"] == "text, categorical" and kinds["name"] == "all"
    # the column is the table the loader refuses keys by
    from recfuse.config.modality import KIND_KEYS

    assert {k: v for k, v in kinds.items() if v != "all"} == {k: ", ".join(v) for k, v in KIND_KEYS.items()}
