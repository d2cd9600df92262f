"""GET /api/v1/reports/alerts: the alerts of a period, counted, and how fast they were
answered — for the supervision room's monthly review."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._errors import ApiError
from vigie.api._spec import ALL_ROLES, Endpoint, Param
from vigie.store import _reports as reports_q

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["REPORT_SCHEMAS", "report_endpoints"]

DEFAULT_PERIOD = timedelta(days=7)
MAX_PERIOD = timedelta(days=400)


async def alert_report(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    site = q["site"]
    if site is not None and not p.sees(site):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    end = q["to"] or ctx.clock()
    start = q["from"] or end - DEFAULT_PERIOD
    if start >= end:
        raise ApiError(400, "invalid_query", "from: must be before to")
    if end - start > MAX_PERIOD:
        raise ApiError(400, "invalid_query", f"a report covers at most {MAX_PERIOD.days} days")
    async with ctx.store.connection() as conn:
        report = await reports_q.alert_report(conn, start=start, end=end, site=site,
                                              sites=p.sites)
    return web.json_response(report)


_SECONDS = {"type": "number", "nullable": True}
_FIGURES = {
    "type": "object",
    "required": ["alerts", "acknowledged", "resolved", "escalated", "silenced",
                 "mean_seconds_to_acknowledge", "mean_seconds_to_resolve"],
    "properties": {
        "alerts": {"type": "integer"},
        "acknowledged": {"type": "integer", "description": "acknowledged at least once"},
        "resolved": {"type": "integer"}, "escalated": {"type": "integer"},
        "silenced": {"type": "integer"},
        "mean_seconds_to_acknowledge": {**_SECONDS,
                                        "description": "opening to first acknowledgement"},
        "mean_seconds_to_resolve": {**_SECONDS, "description": "opening to resolution"}},
}
_BY = {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/ReportFigures"}}

REPORT_SCHEMAS: dict[str, Any] = {
    "ReportFigures": _FIGURES,
    "AlertReport": {
        "type": "object",
        "required": ["from", "to", "site", "totals", "by_kind", "by_severity",
                     "by_resolution", "by_site"],
        "properties": {
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
            "site": {"type": "string", "nullable": True},
            "totals": {"$ref": "#/components/schemas/ReportFigures"},
            "by_kind": _BY, "by_severity": _BY, "by_site": _BY,
            "by_resolution": {**_BY, "description": "real_incident, false_alarm, "
                              "technical_fault, test; auto (resolved by vigie); unspecified "
                              "(resolved without a category); unresolved"}},
    },
}


def report_endpoints() -> list[Endpoint]:
    return [
        Endpoint("GET", "/api/v1/reports/alerts", alert_report,
                 "Alerts opened over a period: counts and response times", "alerts",
                 ALL_ROLES, response="AlertReport", params=(
                     Param("from", type="date-time",
                           description="opened at or after (default: 7 days before to)"),
                     Param("to", type="date-time", description="opened before (default: now)"),
                     Param("site", description="one site (slug)"))),
    ]
