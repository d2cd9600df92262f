"""Notifiers as an SRE sees them: how far behind each one is, and the notifications it gave
up on (dead letters), to read, send again once the receiver is mended, or dismiss once dealt
with by hand.

A resend is queued here (202) and sent by the node that holds the notifier's lock, through
the notifier's own delivery and retry policy: delivered, the letter leaves the list (like a
message moved out of a dead-letter queue: the list is what still needs someone, and the
audit log keeps who asked); failed again, it stays with its attempts added up and the last
error. Receivers' URLs and secrets are configuration secrets: they never appear here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._bodies import read_body
from vigie.api._errors import ApiError
from vigie.api._spec import Endpoint, Param, audit_details, audit_site, id_cursor, list_schema
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
            "retries_queued": seen.get("retries_queued") or 0,
        })
    return ok({"items": items, "next_cursor": None})


async def list_notifier_dead_letters(request: web.Request, ctx: ApiContext, p: Principal,
                                     q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    name = q["notifier"]
    if name is not None and ctx.config.notifier(name) is None:
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


async def retry_notifier_dead_letter(request: web.Request, ctx: ApiContext, p: Principal,
                                     q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    async with ctx.store.connection() as conn:
        letter = await notify_q.get_dead_letter(conn, q["letter"], p.sites)
        if letter is None:
            raise ApiError(404, "not_found", f"dead letter {q['letter']} not found")
        audit_site(request, letter["site"])
        audit_details(request, {"notifier": letter["notifier"]})
        if ctx.config.notifier(letter["notifier"]) is None:
            # No node runs it: queued, it would wait for ever.
            raise ApiError(409, "notifier_not_configured",
                           f"notifier {letter['notifier']!r} is not configured any more: "
                           "nothing can send it; dismiss it instead")
        queued = await notify_q.queue_retry(conn, q["letter"], p.name)
    if queued is None:  # dismissed, or delivered by a resend, in the meantime
        raise ApiError(404, "not_found", f"dead letter {q['letter']} not found")
    return ok(queued, status=202)


async def retry_notifier_dead_letters(request: web.Request, ctx: ApiContext, p: Principal,
                                      q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    body = await read_body(request, ("notifier", "site"), required=True)
    name = body.text("notifier", required=True, max_length=128)
    site = body.text("site", max_length=128)
    assert name is not None
    if ctx.config.notifier(name) is None:
        raise ApiError(422, "invalid_body", "notifier: no notifier of that name")
    if site is not None:
        # A site the token may not see answers as an unknown one, as everywhere else.
        if ctx.config.site(site) is None or not p.sees(site):
            raise ApiError(422, "invalid_body", "site: no site of that name")
        audit_site(request, site)
    async with ctx.store.connection() as conn:
        queued, remaining = await notify_q.queue_retries_of(conn, name, site, p.sites, p.name)
    audit_details(request, {"notifier": name, "queued": queued})
    return ok({"notifier": name, "site": site, "queued": queued, "remaining": remaining},
              status=202)


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
            "retries_queued": {"type": "integer",
                               "description": "dead letters waiting to be sent again"},
        },
    },
    "NotifierList": list_schema("Notifier"),
    "NotifierDeadLetter": {
        "type": "object",
        "required": ["id", "notifier", "seq", "type", "alert_id", "site", "attempts", "error",
                     "payload", "failed_at", "retry_requested_at", "retry_requested_by",
                     "retries"],
        "properties": {
            "id": {"type": "integer"}, "notifier": {"type": "string"},
            "seq": {"type": "integer", "description": "the feed message it was for"},
            "type": {"type": "string"},
            "alert_id": {"type": "string", "format": "uuid", "nullable": True},
            "site": {"type": "string"}, "attempts": {"type": "integer"},
            "error": {"type": "string", "description": "the last attempt's failure"},
            "payload": {"description": "the body that was to be sent"},
            "failed_at": {"type": "string", "format": "date-time",
                          "description": "the last failure (a failed resend included)"},
            "retry_requested_at": {**_TS, "description": "queued to be sent again since; "
                                                          "null: not queued"},
            "retry_requested_by": {"type": "string", "nullable": True},
            "retries": {"type": "integer", "description": "resends that failed again"},
        },
    },
    "NotifierDeadLetterList": list_schema("NotifierDeadLetter"),
    "NotifierRetryBody": {
        "type": "object", "additionalProperties": False, "required": ["notifier"],
        "example": {"notifier": "csu"},
        "properties": {
            "notifier": {"type": "string", "description": "the notifier's name"},
            "site": {"type": "string", "description": "only this site's dead letters"},
        },
    },
    "NotifierRetryQueued": {
        "type": "object", "required": ["notifier", "site", "queued", "remaining"],
        "properties": {
            "notifier": {"type": "string"},
            "site": {"type": "string", "nullable": True},
            "queued": {"type": "integer",
                       "description": f"dead letters queued, the oldest first (at most "
                                      f"{notify_q.RETRY_BATCH} a call)"},
            "remaining": {"type": "integer",
                          "description": "matching dead letters left for another call"},
        },
    },
}


_LETTER = Param("letter", where="path", type="integer", required=True, minimum=1,
                maximum=2**63 - 1)


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
                 "operations", _ADMIN, statuses=(204,), params=(_LETTER,)),
        Endpoint("POST", "/api/v1/notifiers/dead-letters/{letter}/retry",
                 retry_notifier_dead_letter,
                 "Send a dead letter again, through its notifier (queued; the alert's current "
                 "state where the receiver keeps state)", "operations", _ADMIN,
                 statuses=(202,), response="NotifierDeadLetter", params=(_LETTER,)),
        Endpoint("POST", "/api/v1/notifiers/dead-letters/retry", retry_notifier_dead_letters,
                 "Send a notifier's dead letters again, oldest first, in a bounded batch",
                 "operations", _ADMIN, statuses=(202,), body="NotifierRetryBody",
                 response="NotifierRetryQueued"),
    ]
