"""Logging: a human format by default, JSON lines on request; secrets redacted always."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

from vigie.secrets import redact_text

__all__ = ["REQUEST_ID", "RequestIdFilter", "setup_logging"]

# The API request being served (set by the API's middleware): every line logged while
# serving it carries its id, as does the response (X-Request-Id).
REQUEST_ID: ContextVar[str | None] = ContextVar("vigie_request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to records logged while an API request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Structured extras: log.info("...", extra={"alert_id": ...}).
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact_text(orjson.dumps(entry, default=str).decode())


def setup_logging(level: str = "info", fmt: str = "human", prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(
            _Redacting(f"%(asctime)s {prefix}%(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho and asyncpg chatter at debug level is rarely what an operator wants.
    for noisy in ("aiohttp.access", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # While PostgreSQL is away asyncpg's pool logs a traceback at each attempt to reconnect
    # its idle connections; the store says once that the database is unreachable.
    logging.getLogger("asyncpg.pool").setLevel(max(logging.ERROR, root.level))
