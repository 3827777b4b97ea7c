"""Structured JSON logs with request ids (configured only by the server entry point).

Every record becomes one JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and
``request_id`` (from :data:`REQUEST_ID`, set per RPC by the observability interceptor), plus any
``extra={...}`` fields a caller adds (``rpc``, ``code``, ``ms``, ``variant``, ``peer``).

Example:
    >>> import logging
    >>> rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    >>> '"msg": "hello you"' in JsonFormatter().format(rec)
    True
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("recfuse_request_id", default="")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; extra fields and the current request id included."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            out["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_json_logging(level: int | str = logging.INFO) -> None:
    """Send all logs as JSON lines to stderr (entry points only; replaces existing root handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.Formatter.converter = time.gmtime
