"""Entry point of the ``recfuse`` command.

Each command group lives in its own module exposing ``register(subparsers)``; handlers import heavy
modules (TensorFlow, faiss) lazily so ``recfuse --help`` stays fast. Domain errors are translated
here, once, into a one-line message on stderr and an exit code (see :mod:`recfuse.errors`).
TensorFlow's import banner is filtered out of stderr (:mod:`recfuse._tfquiet`); ``RECFUSE_TF_LOGS=1``
shows it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from recfuse import __version__, _tfquiet
from recfuse.errors import RecfuseError, exit_code_for

# Command-group modules, each with ``register(subparsers) -> None``.
COMMAND_MODULES = (
    "recfuse.cli.data_cmds",
    "recfuse.cli.prepare_cmds",
    "recfuse.cli.features_cmds",
    "recfuse.cli.train_cmds",
    "recfuse.cli.embed_cmds",
    "recfuse.cli.index_cmds",
    "recfuse.cli.bundle_cmds",
    "recfuse.cli.eval_cmds",
    "recfuse.cli.tune_cmds",
    "recfuse.cli.config_ref",
)

Handler = Callable[[argparse.Namespace], int]


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default: appends ``(default: X)`` to its help unless the help already says
    what the default is. Flags (``--json``) and options whose default is unset (None, '', []) add nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        unset = default is None or default is argparse.SUPPRESS or (isinstance(default, (str, list)) and not default)
        if "default" in text or unset or action.nargs == 0:
            return action.help
        return f"{text} (default: %(default)s)"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every subparser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += _parsers(child)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recfuse",
        description="Multimodal two-tower recommendation: data, training, export, index, evaluation.",
        epilog="exit codes: 0 ok, 1 unexpected error, 2 usage, 3 config, 4 data, 5 artifact, 6 not found, "
        "7 resource exhausted, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"recfuse {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="one of the commands below; `recfuse COMMAND --help` shows its options"
    )
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for each in _parsers(parser):
        each.formatter_class = HelpFormatter
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (:data:`recfuse.errors.EXIT_CODES`: 0 ok, 2 usage,
    3 config, 4 data, 5 artifact, 6 not found, 7 resource exhausted, 130 interrupted)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("RECFUSE_TF_LOGS", "") in ("", "0"):
        _tfquiet.install()  # TensorFlow's import banner (absl/oneDNN/cuda lines) is dropped; errors pass
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except RecfuseError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code_for(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
