"""Domain errors. Every message names the field, shows the value and suggests the fix.

Boundaries translate these once: the CLI maps them to exit codes (:data:`EXIT_CODES`), the gRPC
service maps them to status codes through one table in ``recfuse_serving.status``.
"""

from __future__ import annotations


class RecfuseError(Exception):
    """Base class of every error recfuse raises on purpose."""


class ConfigError(RecfuseError, ValueError):
    """A configuration value is invalid or inconsistent."""


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


EXIT_CODES: dict[type[RecfuseError], int] = {
    ConfigError: 2,
    SchemaError: 3,
    DataError: 3,
    InvalidRequestError: 2,
    NotFoundError: 4,
    ArtifactError: 5,
    ResourceExhaustedError: 6,
}


def exit_code_for(error: RecfuseError) -> int:
    """Exit code for a domain error (most specific class wins, 1 for unknown subclasses)."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
