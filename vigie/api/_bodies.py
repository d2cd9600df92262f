"""Reading JSON bodies: each field checked with a message that names it (422), unknown
fields refused, so a typo is an error rather than a setting silently ignored."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vigie.api._errors import ApiError

__all__ = ["MAX_TEXT", "Body", "read_body"]

MAX_TEXT = 4000


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_body", message)


class Body:
    """A JSON object body; `prefix` names where it sits in the request (`matchers.`)."""

    def __init__(self, fields: dict[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
        self.fields = fields
        self.prefix = prefix
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise _invalid(f"unknown field(s): {', '.join(prefix + u for u in unknown)}")

    def text(self, name: str, *, required: bool = False, max_length: int = MAX_TEXT,
             blank: bool = True) -> str | None:
        """A string; None when left out (or null) and not `required`."""
        value = self.fields.get(name)
        where = self.prefix + name
        if value is None:
            if required:
                raise _invalid(f"{where}: required")
            return None
        if not isinstance(value, str):
            raise _invalid(f"{where}: expected a string")
        if "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise _invalid(f"{where}: must not contain NUL characters")
        if len(value) > max_length:
            raise _invalid(f"{where}: at most {max_length} characters")
        if not blank and not value.strip():
            raise _invalid(f"{where}: must not be empty")
        return value

    def choice(self, name: str, options: Iterable[str], *, required: bool = False
               ) -> str | None:
        options = tuple(options)
        value = self.text(name, required=required, max_length=64)
        if value is not None and value not in options:
            raise _invalid(f"{self.prefix}{name}: expected one of {', '.join(options)}")
        return value

    def timestamp(self, name: str, *, required: bool = False) -> datetime | None:
        raw = self.text(name, required=required, max_length=64)
        if raw is None:
            return None
        where = self.prefix + name
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(f"{where}: expected an RFC 3339 timestamp, "
                           "e.g. 2026-11-28T08:00:00Z") from None
        if parsed.tzinfo is None:
            raise _invalid(f"{where}: timestamp needs a time zone (Z or +01:00)")
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise _invalid(f"{where}: timestamp out of range") from None

    def object(self, name: str, allowed: Iterable[str], *, required: bool = False) -> Body:
        value = self.fields.get(name)
        if value is None:
            if required:
                raise _invalid(f"{self.prefix}{name}: required")
            value = {}
        if not isinstance(value, dict):
            raise _invalid(f"{self.prefix}{name}: expected an object")
        return Body(value, allowed, f"{self.prefix}{name}.")


async def read_body(request: web.Request, allowed: Iterable[str], *, required: bool = False
                    ) -> Body:
    """The request's JSON object (an empty one when there is no body and none is needed)."""
    from vigie.api._routes import _read_json_object

    fields = await _read_json_object(request)
    if fields is None:
        if required:
            raise ApiError(400, "invalid_body", "expected a JSON object body")
        fields = {}
    return Body(fields, allowed)
