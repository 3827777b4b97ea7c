"""Every `recfuse` command and option has help, and every option with a default shows it."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from recfuse.cli.main import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _walk(child, f"{path} {name}")
    return found


PARSERS = _walk(build_parser(), "recfuse")


def _shown(value: object) -> list[str]:
    """How a default may be written in help: as is, or a float without its trailing .0 (3600.0 -> 3600)."""
    forms = [str(value)]
    if isinstance(value, float):
        forms.append(f"{value:g}")
    return forms


def test_the_walk_reaches_every_command() -> None:
    paths = {path for path, _ in PARSERS}
    assert {"recfuse train", "recfuse export", "recfuse add-items", "recfuse features", "recfuse ab analyze"} <= paths


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=[p for p, _ in PARSERS])
def test_every_command_and_option_has_help_and_shows_its_default(path: str, parser: argparse.ArgumentParser) -> None:
    formatter = parser._get_formatter()
    missing, no_default = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip() or action.help is argparse.SUPPRESS:
            missing.append(name)
            continue
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"{path} {c.dest}" for c in action._choices_actions if not (c.help or "").strip()]
            continue
        default = action.default
        # a flag's default is its absence (store_true, count); None means unset
        if default is None or default is argparse.SUPPRESS or action.nargs == 0:
            continue
        rendered = formatter._expand_help(action)  # the help text as --help prints it, before wrapping
        shows_value = isinstance(default, (list, bool)) or not default or any(f in rendered for f in _shown(default))
        if "default" not in rendered or not shows_value:
            no_default.append(f"{name} (default {default!r}): {rendered!r}")
    assert not missing, f"{path}: no help for {missing}"
    assert not no_default, f"{path}: help does not show the default: {no_default}"
    assert parser.format_help()  # every help string formats (no stray %)


def test_add_items_help_shows_the_on_existing_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["add-items", "--help"])
    assert exc.value.code == 0
    assert "(default: skip)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["export"], 2),  # usage: a required option is missing
        (["no-such-command"], 2),
        (["train", "--config", "/nonexistent/recfuse.toml", "--out", "/tmp/x"], 3),  # config
        (["recommend", "--bundle", "/nonexistent/bundles"], 5),  # artifact
    ],
)
def test_documented_exit_codes(argv: list[str], code: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "recfuse", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
