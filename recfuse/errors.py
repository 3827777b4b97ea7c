"""Domain errors. Every message names the field, shows the value and suggests the fix.

Boundaries translate these once: the CLI maps them to exit codes (:data:`EXIT_CODES`), the gRPC
service maps them to status codes through one table in ``recfuse_serving.status``.
"""

from __future__ import annotations


class RecfuseError(Exception):
    """Base class of every error recfuse raises on purpose."""


class ConfigError(RecfuseError, ValueError):
    """A configuration value is invalid or inconsistent."""


class UsageError(ConfigError):
    """A command-line argument is invalid (exit code 2, like argparse's own errors)."""


class SchemaError(RecfuseError, ValueError):
    """Input data does not match the data contract (columns, types, widths, ids)."""


class DataError(RecfuseError, ValueError):
    """Input data is unusable as a whole (e.g. empty training split, all rows rejected)."""


class ArtifactError(RecfuseError):
    """An artifact (model directory, bundle, index file) is missing, corrupt or incompatible."""


class InvalidRequestError(RecfuseError, ValueError):
    """A recommendation request is malformed (k too large, id too long, unknown variant)."""


class NotFoundError(RecfuseError, KeyError):
    """A referenced entity (item, user, bundle version) does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ResourceExhaustedError(RecfuseError):
    """A bounded resource (queue, concurrency slots) is full."""


#: The CLI's exit codes (``recfuse`` and ``recfuse-serve``), documented in docs/usage.md:
#: 0 ok, 1 an unexpected error, 2 usage (argparse, or a bad command argument), 3 config,
#: 4 data, 5 artifact, 6 not found, 7 resource exhausted, 130 interrupted.
EXIT_USAGE, EXIT_CONFIG, EXIT_DATA, EXIT_ARTIFACT, EXIT_NOT_FOUND, EXIT_EXHAUSTED = 2, 3, 4, 5, 6, 7

EXIT_CODES: dict[type[RecfuseError], int] = {
    UsageError: EXIT_USAGE,
    InvalidRequestError: EXIT_USAGE,
    ConfigError: EXIT_CONFIG,
    SchemaError: EXIT_DATA,
    DataError: EXIT_DATA,
    ArtifactError: EXIT_ARTIFACT,
    NotFoundError: EXIT_NOT_FOUND,
    ResourceExhaustedError: EXIT_EXHAUSTED,
}


def exit_code_for(error: RecfuseError) -> int:
    """Exit code for a domain error (most specific class wins, 1 for unknown subclasses)."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
