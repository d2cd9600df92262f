"""Handlers of the REST API, and the table that declares them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from vigie.alerts import AlertService, Schedule
from vigie.alerts._feed import Feed
from vigie.api._auth import Authenticator, Principal
from vigie.api._cameras import site_camera_states
from vigie.api._errors import ApiError
from vigie.api._spec import ALL_ROLES, Endpoint, Param, audit_site, id_cursor
from vigie.cameras import CameraSupervisor
from vigie.cluster import CameraLeases
from vigie.config import SENSOR_KINDS, Config
from vigie.errors import StoreUnavailable
from vigie.metrics import Metrics
from vigie.spool import AuditSpool
from vigie.store import Store
from vigie.store import _alerts as alerts_q
from vigie.store import _events as events_q

__all__ = ["ApiContext", "endpoints"]

MAX_BODY = 64 * 1024


@dataclass
class ApiContext:
    """What the API needs from the node."""

    config: Config
    store: Store
    alerts: AlertService
    metrics: Metrics
    auth: Authenticator
    schedule: Schedule
    readiness: Callable[[], dict[str, str]]  # check name → "ok" or what is wrong
    clock: Callable[[], datetime]
    cameras: CameraSupervisor | None = None
    feed: Feed | None = None
    # Where audit entries wait while the database is away (None: they are given up).
    audit_spool: AuditSpool | None = None
    # Several nodes: which cameras this node watches; the others are read from PostgreSQL.
    leases: CameraLeases | None = None
    openapi: dict[str, Any] = field(default_factory=dict)  # filled by make_api


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def ok(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=dumps)


def page(items_json: str, next_cursor: str | None) -> web.Response:
    """A list answer whose items are JSON already (written by PostgreSQL)."""
    body = f'{{"items":{items_json},"next_cursor":{dumps(next_cursor)}}}'
    return web.Response(text=body, content_type="application/json")


def _alert_cursor(raw: str | None) -> tuple[datetime, uuid.UUID] | None:
    if raw is None:
        return None
    try:
        at, key = alerts_q.decode_cursor(raw)
        return at, uuid.UUID(key)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_query", "cursor: not a cursor given by this API") from None


def _scoped_site(p: Principal, site: str | None) -> str | None:
    """A filter on a site the caller may not see returns nothing, as for an unknown site."""
    if site is not None and not p.sees(site):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    return site


async def _read_json_object(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object; None when there is no body at all."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "payload_too_large", f"body larger than {MAX_BODY} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "payload_too_large", f"body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_body", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_body", "expected a JSON object")
    return body


async def _read_comment(request: web.Request, required: bool) -> str | None:
    """`{"comment": "..."}`; the comment may be left out unless `required`."""
    body = await _read_json_object(request)
    if body is None:
        if required:
            raise ApiError(400, "invalid_body", 'expected a JSON body {"comment": "..."}')
        return None
    unknown = sorted(set(body) - {"comment"})
    if unknown:
        raise ApiError(422, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
    comment = body.get("comment")
    if comment is None and not required:
        return None
    if not isinstance(comment, str):
        raise ApiError(422, "invalid_body", "comment: expected a string")
    if "\x00" in comment:
        raise ApiError(422, "invalid_body", "comment: must not contain NUL characters")
    if len(comment) > 4000:
        raise ApiError(422, "invalid_body", "comment: at most 4000 characters")
    if required and not comment.strip():
        raise ApiError(422, "invalid_body", "comment: must not be empty")
    return comment


# --- handlers --------------------------------------------------------------------------


async def healthz(request: web.Request, ctx: ApiContext, p: Principal | None,
                  q: dict[str, Any]) -> web.Response:
    return ok({"status": "ok"})


async def readyz(request: web.Request, ctx: ApiContext, p: Principal | None,
                 q: dict[str, Any]) -> web.Response:
    checks = ctx.readiness()
    ready = all(v == "ok" for v in checks.values())
    return ok({"status": "ready" if ready else "not ready", "checks": checks},
              status=200 if ready else 503)


async def metrics(request: web.Request, ctx: ApiContext, p: Principal | None,
                  q: dict[str, Any]) -> web.Response:
    return web.Response(body=ctx.metrics.exposition(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request, ctx: ApiContext, p: Principal | None,
                  q: dict[str, Any]) -> web.Response:
    return ok(ctx.openapi)


async def list_sites(request: web.Request, ctx: ApiContext, p: Principal,
                     q: dict[str, Any]) -> web.Response:
    counts = await _open_counts(ctx)
    seen = {s.id for s in ctx.config.sites if p.sees(s.id)}
    cameras = await site_camera_states(ctx, seen)
    items = [_site_json(ctx, s.id, counts, cameras) for s in ctx.config.sites if s.id in seen]
    return ok({"items": items, "next_cursor": None})


async def get_site(request: web.Request, ctx: ApiContext, p: Principal,
                   q: dict[str, Any]) -> web.Response:
    site = q["site"]
    if ctx.config.site(site) is None or not p.sees(site):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    return ok(_site_json(ctx, site, await _open_counts(ctx),
                         await site_camera_states(ctx, {site})))


async def _open_counts(ctx: ApiContext) -> dict[tuple[str, str], int]:
    try:
        async with ctx.store.connection() as conn:
            return await alerts_q.open_counts(conn)
    except StoreUnavailable:
        return ctx.alerts.open_counts()  # the database is away: what this node knows


def _site_json(ctx: ApiContext, site_id: str, counts: dict[tuple[str, str], int],
               cameras: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """`cameras`: each site's camera states when this node's memory does not have them all
    (several nodes)."""
    site = ctx.config.site(site_id)
    assert site is not None
    states: dict[str, int] = {}
    if cameras is not None:
        states = cameras.get(site_id, {})
    elif ctx.cameras is not None:
        for cam in ctx.cameras.cameras.values():
            if cam.site.id == site_id:
                states[cam.health.state] = states.get(cam.health.state, 0) + 1
    return {
        "camera_states": states,
        "id": site.id, "name": site.name, "uai": site.uai, "commune": site.commune,
        "timezone": site.timezone, "holiday_zone": site.holiday_zone,
        "open_now": ctx.schedule.is_open(site.id, ctx.clock()),
        "cameras": len(site.cameras), "sensors": len(site.sensors),
        "alerts_open": {sev: n for (s, sev), n in counts.items() if s == site.id},
    }


async def list_sensors(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    site = _scoped_site(p, q["site"])
    async with ctx.store.connection() as conn:
        rows = await conn.fetch(
            """SELECT site, id, kind, name, zone, format, last_state, last_event_at, online,
                      battery FROM sensors
               WHERE active AND ($1::text IS NULL OR site = $1)
                 AND ($2::text[] IS NULL OR site = ANY($2::text[]))
               ORDER BY site, id""",
            site, sorted(p.sites) if p.sites is not None else None)
    items = [{**dict(r), "last_event_at": r["last_event_at"].isoformat()
              if r["last_event_at"] else None} for r in rows]
    return ok({"items": items, "next_cursor": None})


async def list_events(request: web.Request, ctx: ApiContext, p: Principal,
                      q: dict[str, Any]) -> web.Response:
    async with ctx.store.connection() as conn:
        items, cursor = await events_q.list_events(
            conn, site=_scoped_site(p, q["site"]), sensor=q["sensor"], kind=q["kind"],
            since=q["since"], until=q["until"], sites=p.sites, limit=q["limit"],
            cursor=id_cursor(q["cursor"]))
    return page(items, cursor)


async def list_alerts(request: web.Request, ctx: ApiContext, p: Principal,
                      q: dict[str, Any]) -> web.Response:
    site, cursor = _scoped_site(p, q["site"]), _alert_cursor(q["cursor"])
    try:
        async with ctx.store.connection() as conn:
            items, next_cursor = await alerts_q.list_alerts(
                conn, states=q["state"], site=site, severity=q["severity"],
                sites=p.sites, limit=q["limit"], cursor=cursor,
                silenced=_SILENCED[q["silenced"]])
    except StoreUnavailable:
        return _alerts_from_memory(ctx, p, q, site, cursor)
    return page(items, next_cursor)


def _alerts_from_memory(ctx: ApiContext, p: Principal, q: dict[str, Any], site: str | None,
                        cursor: tuple[datetime, uuid.UUID] | None) -> web.Response:
    """The database is away: the unresolved alerts this node knows, flagged `from_memory`.
    Resolved ones are only in the database."""
    states = set(q["state"] or ("open", "acknowledged", "resolved"))
    if states == {"resolved"}:
        raise StoreUnavailable("resolved alerts are only in the database")
    silenced = _SILENCED[q["silenced"]]
    found = sorted(
        (a for a in ctx.alerts.open_alerts.values()
         if a.state in states and p.sees(a.site) and site in (None, a.site)
         and q["severity"] in (None, a.severity) and silenced in (None, a.silenced)
         and (cursor is None or (a.opened_at, a.id) < cursor)),
        key=lambda a: (a.opened_at, a.id), reverse=True)
    shown = found[:q["limit"]]
    last = shown[-1] if len(found) > q["limit"] else None
    return ok({"items": [a.to_json() for a in shown], "from_memory": True,
               "next_cursor": alerts_q.encode_cursor(last.opened_at, str(last.id))
               if last else None})


async def get_alert(request: web.Request, ctx: ApiContext, p: Principal,
                    q: dict[str, Any]) -> web.Response:
    try:
        async with ctx.store.connection() as conn:
            alert = await alerts_q.get_alert(conn, q["alert_id"], p.sites)
            history = await alerts_q.history(conn, alert.id)
    except StoreUnavailable:
        # The database is away: an unresolved alert this node knows, without its history.
        known = next((a for a in ctx.alerts.open_alerts.values()
                      if a.id == q["alert_id"] and p.sees(a.site)), None)
        if known is None:
            raise
        return ok({**known.to_json(), "history": [], "from_memory": True})
    return ok({**alert.to_json(), "history": [h.to_json() for h in history]})


async def ack_alert(request: web.Request, ctx: ApiContext, p: Principal,
                    q: dict[str, Any]) -> web.Response:
    comment = await _read_comment(request, required=False)
    alert = await ctx.alerts.acknowledge(q["alert_id"], p.name, comment, p.sites)
    audit_site(request, alert.site)
    return ok(alert.to_json())


async def comment_alert(request: web.Request, ctx: ApiContext, p: Principal,
                        q: dict[str, Any]) -> web.Response:
    comment = await _read_comment(request, required=True)
    assert comment is not None
    alert = await ctx.alerts.comment(q["alert_id"], p.name, comment, p.sites)
    audit_site(request, alert.site)
    return ok(alert.to_json(), status=201)


async def list_dead_letters(request: web.Request, ctx: ApiContext, p: Principal,
                            q: dict[str, Any]) -> web.Response:
    if p.sites is not None:
        # A rejected message belongs to no known site (often the reason it was rejected):
        # its topic and payload may be another site's, so only an admin of every site reads.
        raise ApiError(403, "forbidden", "dead letters need an admin token for every site")
    async with ctx.store.connection() as conn:
        items = await events_q.list_dead_letters(conn, q["limit"])
    return ok({"items": items, "next_cursor": None})


# --- the table -------------------------------------------------------------------------

_READ = ALL_ROLES
_OPERATE = frozenset({"admin", "operator"})
_ADMIN = frozenset({"admin"})
_SEVERITIES = ("critical", "major", "minor", "info")
_SILENCED = {"false": False, "true": True, "any": None}

_LIMIT = Param("limit", type="integer", minimum=1, maximum=500, default=100,
               description="page size")
_CURSOR = Param("cursor", description="next_cursor of the previous page")
_ALERT_ID = Param("alert_id", where="path", type="uuid", required=True)


def endpoints() -> list[Endpoint]:
    from vigie.api._alert_actions import assign_alert, resolve_alert, unack_alert
    from vigie.api._audit import audit_endpoints
    from vigie.api._cameras import camera_endpoints
    from vigie.api._nodes import node_endpoints
    from vigie.api._notifiers import notifier_endpoints
    from vigie.api._relearn import relearn_endpoints
    from vigie.api._reports import report_endpoints
    from vigie.api._silences import silence_endpoints
    from vigie.api._stream import PATH as STREAM_PATH
    from vigie.api._stream import stream

    site_q = Param("site", description="site id (slug)")
    return [*camera_endpoints(), *silence_endpoints(), *report_endpoints(), *audit_endpoints(),
            *node_endpoints(), *notifier_endpoints(), *relearn_endpoints(),
        Endpoint("GET", "/healthz", healthz, "Liveness", "operations", None,
                 response="Health"),
        Endpoint("GET", "/readyz", readyz, "Readiness: database reachable, loops running",
                 "operations", None, response="Health", statuses=(200, 503)),
        Endpoint("GET", "/metrics", metrics, "Prometheus exposition", "operations", None,
                 content_type="text/plain"),
        Endpoint("GET", "/api/v1/openapi.json", openapi, "This document", "operations", None),
        Endpoint("GET", "/api/v1/sites", list_sites, "Sites with a health summary", "sites",
                 _READ, response="SiteList"),
        Endpoint("GET", "/api/v1/sites/{site}", get_site, "One site", "sites", _READ,
                 params=(Param("site", where="path", required=True),), response="Site"),
        Endpoint("GET", "/api/v1/sensors", list_sensors, "Sensors with their last state",
                 "sensors", _READ, params=(site_q,), response="SensorList"),
        Endpoint("GET", "/api/v1/events", list_events, "Stored sensor events, newest first",
                 "sensors", _READ, response="EventList", params=(
                     site_q, Param("sensor"), Param("kind", enum=SENSOR_KINDS),
                     Param("since", type="date-time"), Param("until", type="date-time"),
                     _LIMIT, _CURSOR)),
        Endpoint("GET", "/api/v1/alerts", list_alerts, "Alerts, newest first", "alerts",
                 _READ, response="AlertList", params=(
                     Param("state", enum=("open", "acknowledged", "resolved"), many=True,
                           description="one or several states, comma-separated"),
                     site_q, Param("severity", enum=_SEVERITIES), _LIMIT, _CURSOR,
                     Param("silenced", enum=tuple(_SILENCED), default="false",
                           description="silenced alerts are left out unless asked for"))),
        Endpoint("GET", "/api/v1/alerts/{alert_id}", get_alert, "One alert with its history",
                 "alerts", _READ, params=(_ALERT_ID,), response="Alert"),
        Endpoint("POST", "/api/v1/alerts/{alert_id}/ack", ack_alert, "Acknowledge an alert",
                 "alerts", _OPERATE, params=(_ALERT_ID,), body="CommentBody",
                 body_required=False, response="Alert"),
        Endpoint("POST", "/api/v1/alerts/{alert_id}/resolve", resolve_alert,
                 "Resolve an alert", "alerts", _OPERATE, params=(_ALERT_ID,),
                 body="ResolveBody", body_required=False, response="Alert"),
        Endpoint("POST", "/api/v1/alerts/{alert_id}/unack", unack_alert,
                 "Un-acknowledge an alert (back to open; escalation starts again)", "alerts",
                 _OPERATE, params=(_ALERT_ID,), body="CommentBody", body_required=False,
                 response="Alert"),
        Endpoint("POST", "/api/v1/alerts/{alert_id}/assign", assign_alert,
                 "Assign an alert to an operator", "alerts", _OPERATE, params=(_ALERT_ID,),
                 body="AssignBody", response="Alert"),
        Endpoint("POST", "/api/v1/alerts/{alert_id}/comments", comment_alert,
                 "Comment on an alert", "alerts", _OPERATE, params=(_ALERT_ID,),
                 body="RequiredCommentBody", response="Alert", statuses=(201,)),
        Endpoint("GET", STREAM_PATH, stream,
                 "Follow alert and camera-state changes live (WebSocket); without an "
                 "Upgrade, the feed's status", "alerts", _READ, response="FeedStatus",
                 params=(Param("since", type="integer", minimum=0, maximum=2**63 - 1,
                               description="the last seq received: replay what came after"),
                         Param("token", description="the API token, for clients that cannot "
                                                    "set the Authorization header"))),
        Endpoint("GET", "/api/v1/dead-letters", list_dead_letters,
                 "Rejected MQTT messages, newest first", "sensors", _ADMIN,
                 params=(_LIMIT,), response="DeadLetterList"),
    ]
