"""`recfuse config-reference`: write (or check) docs/config-reference.md, a table of every config key.

The tables are generated from the config dataclasses themselves: each key's type and default from
the dataclass field, its description from the first sentence of the field's documentation (the
class docstring's ``Attributes:`` entry, else the ``#`` comment block right above the field). Three
files are covered: the training config (``recfuse.toml``: :class:`recfuse.config.RecfuseConfig`
and its sections), the experiment file (``exp.toml``: ``recfuse.evaluation.experiment_config``) and
the server config (``server.toml``). The library never imports the serving package, so the server
tables are read from the source file of ``recfuse_serving.config`` (``--server-source``) with
:mod:`ast`, not imported.

Example:
    $ recfuse config-reference                 # rewrite docs/config-reference.md
    $ recfuse config-reference --check         # exit 1 when the file is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import operator
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recfuse.cli.field_docs import NO_DOC, field_docs, paragraph

DEFAULT_OUT = "docs/config-reference.md"
# where recfuse_serving/config.py lies relative to the folder holding the recfuse package: a source
# checkout (serving/ beside recfuse/) or an installed wheel (both packages in site-packages)
_SERVER_SOURCES = ("serving/recfuse_serving/config.py", "recfuse_serving/config.py")
_SERVER_SECTIONS = {"ab": "ABConfig", "exposures": "ExposureConfig", "tls": "TLSConfig", "auth": "AuthConfig"}
_REQUIRED = "required"


@dataclass(frozen=True)
class Key:
    """One config key: its name, type, default (as TOML would write it) and one-sentence description."""

    name: str
    type: str
    default: str
    doc: str
    literal: bool = True  # ``default`` is a TOML value (else words: "required", "the file's stem")
    kinds: str = ""  # a modality key: the kinds it applies to ("image, text"; "all")


@dataclass(frozen=True)
class Section:
    """One table of a config file (``[model]``, ``[[variants]]``, the top level …)."""

    file: str
    table: str
    summary: str
    keys: tuple[Key, ...]


def register(sub: Any) -> None:
    """Add `config-reference` to the `recfuse` parser."""
    p = sub.add_parser(
        "config-reference",
        help="write the reference of every config key (docs/config-reference.md), or check it is current",
        description="Generate a Markdown table per config section (recfuse.toml, exp.toml, server.toml) with each "
        "key's type, default and description, from the config dataclasses and their docs.",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"Markdown file to write or check (default {DEFAULT_OUT})")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when --out differs from the output")
    p.add_argument(
        "--server-source",
        default="",
        help="path of recfuse_serving/config.py (default: found beside the recfuse package)",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    secs = sections(server_source(args.server_source))
    text = render(secs)
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else None
        if current == text:
            print(f"{out} is current")
            return 0
        why = "does not exist" if current is None else "is stale"
        print(f"{out} {why}; regenerate it with `recfuse config-reference --out {out}`", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {len(secs)} sections, {sum(len(s.keys) for s in secs)} keys")
    return 0


def server_source(given: str) -> Path:
    """The server config's source file: ``given``, else the first of the usual places that exists.

    Raises:
        ConfigError: ``given`` does not exist, or no usual place holds the file.
    """
    from recfuse.errors import ConfigError, UsageError

    if given:
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"`--server-source` {given!r} is not a file; pass the path of recfuse_serving/config.py")
        return path
    import recfuse

    base = Path(recfuse.__file__).resolve().parent.parent
    for rel in _SERVER_SOURCES:
        if (base / rel).is_file():
            return base / rel
    raise ConfigError(
        f"recfuse_serving/config.py is not under {str(base)!r} (looked for {list(_SERVER_SOURCES)}); "
        "pass --server-source PATH"
    )


# ------------------------------------------------------------------------------------ sections
def sections(server_config: Path) -> list[Section]:
    """Every section of the three config files, in the order the reference prints them."""
    from recfuse import config as cfg
    from recfuse.evaluation import baselines, experiment_config

    lib = "recfuse.toml"
    top = [f for f in dataclasses.fields(cfg.RecfuseConfig) if f.name not in _nested(cfg.RecfuseConfig)]
    modalities = Key(
        "modalities",
        "array of tables",
        "[" + ", ".join(f'"{m.name}"' for m in cfg.default_modalities()) + "]",
        "The item tower's branches, one `[[modalities]]` table each; without the key: image, text and "
        "categories (with a warning); `modalities = []` trains an item-id-only model.",
    )
    out = [Section(lib, "top level", _summary(cfg.RecfuseConfig), (modalities, *_keys(cfg.RecfuseConfig, top)))]
    for table, cls in (
        ("[data]", cfg.DataConfig),
        ("[model]", cfg.ModelConfig),
        ("[train]", cfg.TrainConfig),
        ("[index]", cfg.IndexConfig),
        ("[eval]", cfg.EvalConfig),
        ("[bundle]", cfg.BundleConfig),
        ("[item_head]", cfg.ItemHeadConfig),
    ):
        out.append(Section(lib, table, _summary(cls), _keys(cls)))
        if table == "[data]":
            out.append(Section(lib, "[[modalities]]", _summary(cfg.ModalityConfig), _modality_keys()))
    exp, settings = "exp.toml", experiment_config.ExperimentSettings
    # an unset `name` is the file's stem
    overrides = {"name": ("str", "the file's stem", None)}
    out.append(
        Section(exp, "[experiment]", _summary(experiment_config.ExperimentSpec), _keys(settings, None, overrides))
    )
    out.append(Section(exp, "[[variants]]", _summary(experiment_config.VariantSpec),
                       _keys(experiment_config.VariantSpec)))  # fmt: skip
    out.append(Section(exp, "[baselines]", _summary(baselines.BaselineSettings), _keys(baselines.BaselineSettings)))
    out.extend(_server_sections(server_config))
    return out


def _modality_keys() -> tuple[Key, ...]:
    """The keys of ``[[modalities]]``, each with the modality kinds it applies to."""
    from recfuse.config.modality import MODALITY_KINDS, ModalityConfig, key_kinds

    def kinds(name: str) -> str:
        return "all" if key_kinds(name) == MODALITY_KINDS else ", ".join(key_kinds(name))

    return tuple(dataclasses.replace(k, kinds=kinds(k.name)) for k in _keys(ModalityConfig))


def _nested(cls: type) -> set[str]:
    """Fields of ``cls`` that are tables of their own (a dataclass or a tuple of dataclasses)."""
    names = set()
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if factory is not dataclasses.MISSING:
            value = factory()
            items = value if isinstance(value, tuple) else (value,)
            if items and all(dataclasses.is_dataclass(v) for v in items):
                names.add(f.name)
    return names


def _summary(cls: type) -> str:
    return paragraph(inspect.getdoc(cls) or "")


def _keys(
    cls: type,
    fields: Iterable[dataclasses.Field[Any]] | None = None,
    overrides: Mapping[str, tuple[str, str, str | None]] | None = None,
) -> tuple[Key, ...]:
    source = textwrap.dedent(inspect.getsource(cls))
    node = ast.parse(source).body[0]
    if not isinstance(node, ast.ClassDef):
        raise TypeError(f"`cls` must be a class defined by a class statement, got {cls!r}")
    docs = field_docs(node, source.splitlines())
    keys = []
    for f in dataclasses.fields(cls) if fields is None else fields:
        if f.default is not dataclasses.MISSING:
            default = toml_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = toml_value(f.default_factory())
        else:
            default = _REQUIRED
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        doc = docs.get(f.name, NO_DOC)
        overridden = bool(overrides and f.name in overrides)
        if overrides and overridden:
            type_name, default, new_doc = overrides[f.name]
            doc = new_doc or doc
        keys.append(Key(f.name, type_name, default, doc, literal=default != _REQUIRED and not overridden))
    return tuple(keys)


def _server_sections(path: Path) -> list[Section]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    classes = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}
    file = "server.toml"
    root = classes.get("ServerConfig")
    if root is None:
        from recfuse.errors import ConfigError

        raise ConfigError(f"{str(path)!r} defines no class ServerConfig; pass the path of recfuse_serving/config.py")
    tables = {name: classes[cls] for name, cls in _SERVER_SECTIONS.items() if cls in classes}
    out = [Section(file, "top level", _node_summary(root), _node_keys(root, lines, skip=set(tables)))]
    out.extend(Section(file, f"[{name}]", _node_summary(n), _node_keys(n, lines)) for name, n in tables.items())
    return out


def _node_summary(node: ast.ClassDef) -> str:
    return paragraph(ast.get_docstring(node) or "")


def _node_keys(node: ast.ClassDef, lines: list[str], skip: set[str] | None = None) -> tuple[Key, ...]:
    docs = field_docs(node, lines)
    keys = []
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        if skip and name in skip:
            continue
        default = _REQUIRED if stmt.value is None else toml_value(_literal(stmt.value))
        doc = docs.get(name, NO_DOC)
        keys.append(Key(name, ast.unparse(stmt.annotation), default, doc, literal=stmt.value is not None))
    return tuple(keys)


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
}  # fmt: skip


class _Source(str):
    """A default that is not a literal, printed as its source text."""


def _literal(node: ast.expr) -> Any:
    """The value of a default written as a literal, arithmetic on literals or ``field(default_factory=...)``."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "field":
        for kw in node.keywords:
            if kw.arg == "default":
                return _literal(kw.value)
            if kw.arg == "default_factory" and isinstance(kw.value, ast.Name):
                factories: dict[str, Any] = {"dict": {}, "list": [], "tuple": (), "set": set()}
                return factories.get(kw.value.id, _Source(f"{kw.value.id}()"))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, (int, float)) and isinstance(right, (int, float)):
            return _BINOPS[type(node.op)](left, right)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _Source(ast.unparse(node))


def toml_value(value: Any) -> str:
    """``value`` written the way a TOML file would hold it (``unset`` for None)."""
    if isinstance(value, _Source):
        return str(value)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


# ------------------------------------------------------------------------------------ Markdown
_FILES = {
    "recfuse.toml": "Training config (`recfuse.toml`): `recfuse train --config`, `validate`, `evaluate`, `tune`; "
    "every model directory and bundle stores the config that made it. `--set SECTION.KEY=VALUE` overrides a key "
    "on the command line (a modality by name: `--set modalities.text.token_dropout=0.2`). Unknown keys are errors.",
    "exp.toml": "Experiment file (`recfuse experiment --config`): the experiment's own tables below, plus any "
    "training-config table, which overrides the base config for every variant.",
    "server.toml": "Server config (`recfuse-serve --config`); command-line flags override it. Unknown keys are errors.",
}


_KINDS_NOTE = (
    "The `kinds` column names the modality kinds a key applies to. A config file that sets a key in a table of "
    "another kind is refused, even at the key's default value."
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(secs: Iterable[Section]) -> str:
    """The whole reference as Markdown: one ``##`` per file, one ``###`` table per section."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `recfuse config-reference` from the config dataclasses and their docs: do not edit by hand.",
        "`recfuse config-reference --check` (run by the test suite) fails when this file is stale. Why each",
        "default has its value: [decisions.md](decisions.md).",
        "",
        "The three files are read by one loader (`recfuse.config.parse`), so they fail alike: an unknown key is an",
        "error that names it with a did-you-mean hint (a close key of the same table, else the table the key belongs",
        "to: `learning_rate` under `[model]` gets `did you mean [train] learning_rate?`), a value of the wrong type is",
        "named with its key, value and expected type, and every message starts with the file's path.",
    ]
    file = ""
    for sec in secs:
        if sec.file != file:
            file = sec.file
            out += ["", f"## {file}", "", _FILES.get(file, "")]
        out += ["", f"### {sec.table}", ""]
        if sec.summary and sec.summary != NO_DOC:
            out += [sec.summary, ""]
        kinds = any(key.kinds for key in sec.keys)
        if kinds:
            out += [_KINDS_NOTE, ""]
        out += ["| key | type | default | " + ("kinds | " if kinds else "") + "description |"]
        out += ["|---|---|---|" + ("---|" if kinds else "") + "---|"]
        for key in sec.keys:
            default = f"`{_cell(key.default)}`" if key.literal and key.default != "unset" else _cell(key.default)
            kind = f" {_cell(key.kinds)} |" if kinds else ""
            out.append(f"| `{key.name}` | `{_cell(key.type)}` | {default} |{kind} {_cell(key.doc)} |")
    return "\n".join(out) + "\n"
