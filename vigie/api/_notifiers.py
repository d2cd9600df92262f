"""Notifiers as an SRE sees them: how far behind each one is, and the notifications it gave
up on (dead letters), to read and dismiss once dealt with by hand.

Receivers' URLs and secrets are configuration secrets: they never appear here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._errors import ApiError
from vigie.api._spec import Endpoint, Param, audit_site, id_cursor, list_schema
from vigie.store import _notify as notify_q
from vigie.store._alerts import encode_cursor

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["NOTIFIER_SCHEMAS", "notifier_endpoints"]

_ADMIN = frozenset({"admin"})


async def list_notifiers(request: web.Request, ctx: ApiContext, p: Principal,
                         q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    if p.sites is not None:
        # Each notifier's figures count every site's alerts.
        raise ApiError(403, "forbidden", "notifiers need an admin token for every site")
    async with ctx.store.connection() as conn:
        progress = await notify_q.notifier_progress(conn)
    items = []
    for n in ctx.config.notifiers:
        seen = progress.get(n.name, {})
        items.append({
            "name": n.name, "type": n.type, "severities": list(n.severities),
            "sites": list(n.sites) if n.sites is not None else None,
            "cursor": seen.get("seq"), "cursor_moved_at": seen.get("updated_at"),
            "behind": seen.get("behind"),
            "dead_letters": seen.get("dead_letters") or 0,
            "last_dead_letter_at": seen.get("last_failed_at"),
        })
    return ok({"items": items, "next_cursor": None})


async def list_notifier_dead_letters(request: web.Request, ctx: ApiContext, p: Principal,
                                     q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    name = q["notifier"]
    if name is not None and all(n.name != name for n in ctx.config.notifiers):
        raise ApiError(400, "invalid_query", "notifier: no notifier of that name")
    limit = q["limit"]
    cursor = id_cursor(q["cursor"])
    async with ctx.store.connection() as conn:
        items = await notify_q.list_dead_letters(conn, name, p.sites, limit + 1,
                                                 cursor[1] if cursor else None)
    more = len(items) > limit
    items = items[:limit]
    last = items[-1] if more else None
    return ok({"items": items, "next_cursor": encode_cursor(last["failed_at"], str(last["id"]))
               if last else None})


async def dismiss_notifier_dead_letter(request: web.Request, ctx: ApiContext, p: Principal,
                                       q: dict[str, Any]) -> web.Response:
    async with ctx.store.connection() as conn:
        site = await notify_q.delete_dead_letter(conn, q["letter"], p.sites)
    if site is None:
        raise ApiError(404, "not_found", f"dead letter {q['letter']} not found")
    audit_site(request, site)
    return web.Response(status=204)


_TS = {"type": "string", "format": "date-time", "nullable": True}
NOTIFIER_SCHEMAS: dict[str, Any] = {
    "Notifier": {
        "type": "object",
        "required": ["name", "type", "severities", "sites", "cursor", "behind",
                     "dead_letters"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["webhook", "alertmanager"]},
            "severities": {"type": "array", "items": {"type": "string"}},
            "sites": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "cursor": {"type": "integer", "nullable": True,
                       "description": "the last feed seq it dealt with; null: never ran"},
            "cursor_moved_at": _TS,
            "behind": {"type": "integer", "nullable": True,
                       "description": "alert changes in the feed after its cursor"},
            "dead_letters": {"type": "integer"},
            "last_dead_letter_at": _TS,
        },
    },
    "NotifierList": list_schema("Notifier"),
    "NotifierDeadLetter": {
        "type": "object",
        "required": ["id", "notifier", "seq", "type", "alert_id", "site", "attempts", "error",
                     "payload", "failed_at"],
        "properties": {
            "id": {"type": "integer"}, "notifier": {"type": "string"},
            "seq": {"type": "integer", "description": "the feed message it was for"},
            "type": {"type": "string"},
            "alert_id": {"type": "string", "format": "uuid", "nullable": True},
            "site": {"type": "string"}, "attempts": {"type": "integer"},
            "error": {"type": "string", "description": "the last attempt's failure"},
            "payload": {"description": "the body that was to be sent"},
            "failed_at": {"type": "string", "format": "date-time"},
        },
    },
    "NotifierDeadLetterList": list_schema("NotifierDeadLetter"),
}


def notifier_endpoints() -> list[Endpoint]:
    return [
        Endpoint("GET", "/api/v1/notifiers", list_notifiers,
                 "Configured notifiers: progress through the feed and dead letters",
                 "operations", _ADMIN, response="NotifierList"),
        Endpoint("GET", "/api/v1/notifiers/dead-letters", list_notifier_dead_letters,
                 "Notifications given up after every attempt failed, newest first",
                 "operations", _ADMIN, response="NotifierDeadLetterList", params=(
                     Param("notifier", description="one notifier's name"),
                     Param("limit", type="integer", minimum=1, maximum=500, default=100,
                           description="page size"),
                     Param("cursor", description="next_cursor of the previous page"))),
        Endpoint("DELETE", "/api/v1/notifiers/dead-letters/{letter}",
                 dismiss_notifier_dead_letter,
                 "Dismiss a dead letter once the notification was dealt with by hand",
                 "operations", _ADMIN, statuses=(204,), params=(
                     Param("letter", where="path", type="integer", required=True,
                           minimum=1, maximum=2**63 - 1),)),
    ]
