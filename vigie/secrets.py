"""Secrets that cannot leak by accident: repr, str and logs show `***`.

Two nets, because a secret can reach a log line or an error message in more than one way:
URL credentials (`scheme://user:pass@host`) are masked by their shape wherever they appear,
and the value of every Secret built in this process (and the password inside a URL secret)
is masked wherever it appears, whatever surrounds it (a library's error message, a
traceback, a payload echoed back).
"""

from __future__ import annotations

import re
import threading
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = ["Secret", "known_secrets", "redact_text", "redact_url", "register_secret"]

_USERINFO: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s]*)@")
# Shorter values are masked by shape only: masking every "admin" or "1234" of every log line
# would make logs unreadable, and such a password protects nothing anyway.
MIN_MASKED = 6
MASK: Final = "***"

_known: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Mask `value` (and its URL-encoded spelling) in every text redacted from now on."""
    forms = {value, unquote(value)}
    with _lock:
        for form in forms:
            if len(form) >= MIN_MASKED:
                _known.add(form)


def known_secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_known)


class Secret:
    """A string that must not appear in responses, logs, metric labels or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if "://" in value:  # a URL: its credentials are the secret, not the host and path
            password = _url_password(value)
            if password:
                register_secret(password)
        else:
            register_secret(value)

    def reveal(self) -> str:
        """The clear value, for the one place that needs it (a connection)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _url_password(value: str) -> str | None:
    if "://" not in value or "@" not in value:
        return None
    try:
        return urlsplit(value).password
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """`rtsp://user:pass@host:554/path` → `rtsp://***@host:554/path`; query strings dropped
    too, since some cameras take credentials there."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url, count=1)
    return out.split("?", 1)[0]


def redact_text(text: str) -> str:
    """Redact every URL's credentials and every known secret in free text (library error
    messages, tracebacks, log lines)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    with _lock:
        present = [s for s in _known if s in text]
    # Longest first: a secret that contains another is masked whole.
    for secret in sorted(present, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
