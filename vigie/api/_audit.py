"""GET /api/v1/audit: the audit log, for admins, newest first, cursor-paginated."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._errors import ApiError
from vigie.api._spec import Endpoint, Param, id_cursor
from vigie.store import _audit as audit_q

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["audit_endpoints"]


async def list_audit(request: web.Request, ctx: ApiContext, p: Principal,
                     q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import page

    since, until = q["from"], q["to"]
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "invalid_query", "from: must be before to")
    # An admin limited to some sites reads the entries of those sites only.
    site = q["site"]
    if site is not None and not p.sees(site):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    async with ctx.store.connection() as conn:
        items, cursor = await audit_q.list_audit(
            conn, since=since, until=until, actor=q["actor"], site=site,
            sites=p.sites, limit=q["limit"], cursor=id_cursor(q["cursor"]))
    return page(items, cursor)


def audit_endpoints() -> list[Endpoint]:
    return [
        Endpoint("GET", "/api/v1/audit", list_audit,
                 "Read the audit log: who did what, when, from where, with which outcome",
                 "operations", frozenset({"admin"}), response="AuditList", params=(
                     Param("from", type="date-time", description="entries at or after"),
                     Param("to", type="date-time", description="entries before"),
                     Param("actor", description="token name, or cli:<user>"),
                     Param("site", description="site id (slug)"),
                     Param("limit", type="integer", minimum=1, maximum=500, default=100,
                           description="page size"),
                     Param("cursor", description="next_cursor of the previous page"))),
    ]
