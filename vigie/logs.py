"""Logging: a human format by default, JSON lines on request; secrets redacted always."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

from vigie.secrets import redact_text

__all__ = ["setup_logging"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


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


def setup_logging(level: str = "info", fmt: str = "human") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(_Redacting("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho and asyncpg chatter at debug level is rarely what an operator wants.
    for noisy in ("aiohttp.access", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # While PostgreSQL is away asyncpg's pool logs a traceback at each attempt to reconnect
    # its idle connections; the store says once that the database is unreachable.
    logging.getLogger("asyncpg.pool").setLevel(max(logging.ERROR, root.level))
