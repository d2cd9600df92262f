"""Operator actions beyond ack and comment: resolve with a category, assign, un-acknowledge.

Each one is an entry in the alert's history (who, when, what, comment) and a change on the
live feed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._bodies import read_body
from vigie.api._errors import ApiError
from vigie.api._spec import audit_site
from vigie.store import _alerts as alerts_q

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["ACTION_SCHEMAS", "assign_alert", "resolve_alert", "unack_alert"]

# null is taken as left out (schemathesis holds the document to what the server accepts).
_COMMENT = {"type": "string", "maxLength": 4000, "nullable": True}

ACTION_SCHEMAS: dict[str, Any] = {
    "ResolveBody": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "comment": _COMMENT,
            # OpenAPI 3.0: a nullable enum lists null among its values.
            "resolution": {"type": "string", "enum": [*alerts_q.RESOLUTIONS, None],
                           "nullable": True,
                           "description": "what the alert turned out to be"}},
        "example": {"comment": "rondier sur place : porte mal fermée",
                    "resolution": "false_alarm"},
    },
    "AssignBody": {
        "type": "object", "additionalProperties": False, "required": ["assignee"],
        "properties": {
            "assignee": {"type": "string", "nullable": True, "maxLength": 128,
                         "description": "the name of an active operator or admin token "
                                        "that sees the alert's site; null: nobody"},
            "comment": _COMMENT},
        "example": {"assignee": None, "comment": "back to the pool"},
    },
}


async def resolve_alert(request: web.Request, ctx: ApiContext, p: Principal,
                        q: dict[str, Any]) -> web.Response:
    body = await read_body(request, ("comment", "resolution"))
    comment = body.text("comment")
    resolution = body.choice("resolution", alerts_q.RESOLUTIONS)
    alert = await ctx.alerts.resolve(q["alert_id"], p.name, comment, p.sites, resolution)
    audit_site(request, alert.site)
    return web.json_response(alert.to_json())


async def unack_alert(request: web.Request, ctx: ApiContext, p: Principal,
                      q: dict[str, Any]) -> web.Response:
    body = await read_body(request, ("comment",))
    alert = await ctx.alerts.unacknowledge(q["alert_id"], p.name, body.text("comment"),
                                           p.sites)
    audit_site(request, alert.site)
    return web.json_response(alert.to_json())


async def assign_alert(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    body = await read_body(request, ("assignee", "comment"), required=True)
    if "assignee" not in body.fields:
        raise ApiError(422, "invalid_body", "assignee: required (null to unassign)")
    assignee = body.text("assignee", max_length=128, blank=False)
    comment = body.text("comment")
    if assignee is not None:
        async with ctx.store.connection() as conn:
            alert = await alerts_q.get_alert(conn, q["alert_id"], p.sites)
            if not await alerts_q.may_take(conn, assignee, alert.site, ctx.clock()):
                raise ApiError(422, "invalid_body",
                               f"assignee: no active operator or admin token named "
                               f"{assignee!r} that sees site {alert.site}")
    alert = await ctx.alerts.assign(q["alert_id"], p.name, assignee, comment, p.sites)
    audit_site(request, alert.site)
    return web.json_response(alert.to_json())
