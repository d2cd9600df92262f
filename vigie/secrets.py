"""Secrets that cannot leak by accident: repr, str and logs show `***`."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["Secret", "redact_text", "redact_url"]

_USERINFO: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s]*)@")


class Secret:
    """A string that must not appear in responses, logs, metric labels or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The clear value, for the one place that needs it (a connection)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact_url(url: str) -> str:
    """`rtsp://user:pass@host:554/path` → `rtsp://***@host:554/path`; query strings dropped
    too, since some cameras take credentials there."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}***@", url, count=1)
    return out.split("?", 1)[0]


def redact_text(text: str) -> str:
    """Redact every URL's credentials in free text (library error messages, tracebacks)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
