"""Silences (maintenance windows): create, list, read, end.

Operators silence anything on their sites. A technician opens maintenance windows on the
cameras of their sites only (`matchers.source_type: camera`). A token limited to some sites
must name one of them exactly in `matchers.site`. A silence that would match every alert
everywhere is refused: that is switching the supervision off, not maintenance.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._bodies import Body, read_body
from vigie.api._errors import ApiError
from vigie.api._spec import ALL_ROLES, Endpoint, Param, audit_site, list_schema
from vigie.config import CAMERA_REASONS, SENSOR_KINDS, Config
from vigie.store import _alerts as alerts_q
from vigie.store import _silences as silences_q

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["SILENCE_SCHEMAS", "silence_endpoints"]

MAX_SILENCE = timedelta(days=90)  # a forgotten silence must not hide a site for ever
# Every kind of alert vigie raises: an exact kind outside this list would never match.
KINDS = (*SENSOR_KINDS, *CAMERA_REASONS, "battery_low", "device_offline", "device_silent")
SOURCE_TYPES = ("*", "camera", "sensor", "site")
_MATCHER = re.compile(r"^[a-z0-9_*-]{1,128}$")
_DURATION = re.compile(r"^(\d{1,6})(m|h|d)$")
_SET_UP = frozenset({"admin", "operator", "technician"})


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_body", message)


def _matchers(body: Body, config: Config) -> silences_q.Matchers:
    m = body.object("matchers", ("site", "source", "kind", "source_type"), required=True)
    values: dict[str, str] = {}
    for name in ("site", "source", "kind"):
        value = m.text(name, max_length=128) or "*"
        if not _MATCHER.match(value):
            raise _invalid(f"matchers.{name}: lowercase letters, digits, '-', '_', and '*' "
                           "as a wildcard")
        values[name] = value
    source_type = m.choice("source_type", SOURCE_TYPES) or "*"
    if all(set(v) == {"*"} for v in values.values()):
        raise _invalid("matchers: name at least one site, source or kind; a silence on "
                       "everything would switch the supervision off")
    site, source, kind = values["site"], values["source"], values["kind"]
    if "*" not in site:
        site_cfg = config.site(site)
        if site_cfg is None:
            raise _invalid(f"matchers.site: no site {site!r}")
        if "*" not in source and source_type != "site":
            ids = ({c.id for c in site_cfg.cameras} if source_type != "sensor" else set()) | (
                {s.id for s in site_cfg.sensors} if source_type != "camera" else set())
            if source not in ids:
                what = {"camera": "camera", "sensor": "sensor"}.get(source_type, "camera or "
                                                                                  "sensor")
                raise _invalid(f"matchers.source: no {what} {source!r} at site {site}")
    if "*" not in kind and kind not in KINDS:
        raise _invalid(f"matchers.kind: unknown kind {kind!r} (one of {', '.join(KINDS)}, "
                       "or a pattern with '*')")
    return silences_q.Matchers(site, source, kind, source_type)


def _window(body: Body, now: datetime) -> tuple[datetime, datetime]:
    starts_at = body.timestamp("starts_at") or now
    ends_at = body.timestamp("ends_at")
    duration = body.text("duration", max_length=16)
    if (ends_at is None) == (duration is None):
        raise _invalid("give either ends_at (RFC 3339) or duration (e.g. 90m, 2h, 3d)")
    if duration is not None:
        found = _DURATION.match(duration)
        if found is None:
            raise _invalid("duration: expected minutes, hours or days, e.g. 90m, 2h, 3d")
        unit = {"m": "minutes", "h": "hours", "d": "days"}[found.group(2)]
        span = timedelta(**{unit: int(found.group(1))})
        if span > MAX_SILENCE:
            raise _invalid(f"duration: at most {MAX_SILENCE.days} days")
        ends_at = starts_at + span
    assert ends_at is not None
    if ends_at <= starts_at:
        raise _invalid("ends_at: must be after starts_at")
    if ends_at <= now:
        raise _invalid("ends_at: already past")
    if ends_at - starts_at > MAX_SILENCE:
        raise _invalid(f"a silence lasts at most {MAX_SILENCE.days} days")
    return starts_at, ends_at


def _may_set_up(p: Principal, matchers: silences_q.Matchers) -> None:
    """403 unless the caller may create (or end) a silence with these matchers."""
    if p.sites is not None and matchers.site not in p.sites:
        raise ApiError(403, "forbidden",
                       f"this token is limited to {', '.join(sorted(p.sites))}: "
                       "matchers.site must name one of them")
    if p.role == "technician" and matchers.source_type != "camera":
        raise ApiError(403, "forbidden", "technicians open maintenance windows on cameras "
                                         "only: set matchers.source_type to camera")


async def create_silence(request: web.Request, ctx: ApiContext, p: Principal,
                         q: dict[str, Any]) -> web.Response:
    body = await read_body(request, ("matchers", "starts_at", "ends_at", "duration",
                                     "comment"), required=True)
    matchers = _matchers(body, ctx.config)
    now = ctx.clock()
    starts_at, ends_at = _window(body, now)
    comment = body.text("comment", required=True, blank=False)
    assert comment is not None
    _may_set_up(p, matchers)
    silence, _ = await ctx.alerts.create_silence(matchers, starts_at, ends_at, comment, p.name)
    if "*" not in matchers.site:
        audit_site(request, matchers.site)
    return web.json_response(silence.to_json(ctx.clock()), status=201)


async def list_silences(request: web.Request, ctx: ApiContext, p: Principal,
                        q: dict[str, Any]) -> web.Response:
    site = q["site"]
    if site is not None and not p.sees(site):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    cursor = None
    if q["cursor"] is not None:
        try:
            at, key = alerts_q.decode_cursor(q["cursor"])
            cursor = (at, uuid.UUID(key))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_query",
                           "cursor: not a cursor given by this API") from None
    now = ctx.clock()
    async with ctx.store.connection() as conn:
        items, next_cursor = await silences_q.list_silences(
            conn, now=now, states=q["state"] or ("active", "pending"), site=site,
            sites=p.sites, limit=q["limit"], cursor=cursor)
    return web.json_response({"items": [s.to_json(now) for s in items],
                              "next_cursor": next_cursor})


async def get_silence(request: web.Request, ctx: ApiContext, p: Principal,
                      q: dict[str, Any]) -> web.Response:
    async with ctx.store.connection() as conn:
        silence = await silences_q.get_silence(conn, q["silence_id"], p.sites)
    return web.json_response(silence.to_json(ctx.clock()))


async def end_silence(request: web.Request, ctx: ApiContext, p: Principal,
                      q: dict[str, Any]) -> web.Response:
    silence, _ = await ctx.alerts.end_silence(
        q["silence_id"], p.name, p.sites, check=lambda s: _may_set_up(p, s.matchers))
    if "*" not in silence.matchers.site:
        audit_site(request, silence.matchers.site)
    return web.json_response(silence.to_json(ctx.clock()))


_MATCHER_SCHEMA = {"type": "string", "pattern": _MATCHER.pattern, "default": "*"}
SILENCE_SCHEMAS: dict[str, Any] = {
    "Matchers": {
        "type": "object", "additionalProperties": False,
        "description": "exact values, or patterns where * matches anything; left out: *",
        "properties": {"site": _MATCHER_SCHEMA, "source": _MATCHER_SCHEMA,
                       "kind": _MATCHER_SCHEMA,
                       "source_type": {"type": "string", "enum": list(SOURCE_TYPES),
                                       "default": "*"}},
    },
    "Silence": {
        "type": "object",
        "required": ["id", "matchers", "starts_at", "ends_at", "comment", "created_by",
                     "created_at", "state"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "matchers": {"$ref": "#/components/schemas/Matchers"},
            "starts_at": {"type": "string", "format": "date-time"},
            "ends_at": {"type": "string", "format": "date-time"},
            "comment": {"type": "string"}, "created_by": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "ended_by": {"type": "string", "nullable": True},
            "ended_at": {"type": "string", "format": "date-time", "nullable": True},
            "state": {"type": "string", "enum": list(silences_q.SILENCE_STATES)}},
    },
    "SilenceList": list_schema("Silence"),
    "SilenceBody": {
        "type": "object", "additionalProperties": False, "required": ["matchers", "comment"],
        "description": "give ends_at or duration; starts_at defaults to now",
        "properties": {
            "matchers": {"$ref": "#/components/schemas/Matchers"},
            "starts_at": {"type": "string", "format": "date-time"},
            "ends_at": {"type": "string", "format": "date-time"},
            "duration": {"type": "string", "pattern": _DURATION.pattern,
                         "description": "e.g. 90m, 2h, 3d (at most 90 days)"},
            "comment": {"type": "string", "minLength": 1, "maxLength": 4000}},
        "example": {"matchers": {"site": "clg-jean-moulin", "source": "entree",
                                 "source_type": "camera"},
                    "duration": "2h", "comment": "lens cleaning"},
    },
}


def silence_endpoints() -> list[Endpoint]:
    silence_id = Param("silence_id", where="path", type="uuid", required=True)
    return [
        Endpoint("GET", "/api/v1/silences", list_silences,
                 "Silences (maintenance windows), newest first", "silences", ALL_ROLES,
                 response="SilenceList", params=(
                     Param("state", enum=silences_q.SILENCE_STATES, many=True,
                           description="default: active,pending"),
                     Param("site", description="silences that can match this site"),
                     Param("limit", type="integer", minimum=1, maximum=500, default=100,
                           description="page size"),
                     Param("cursor", description="next_cursor of the previous page"))),
        Endpoint("POST", "/api/v1/silences", create_silence,
                 "Silence alerts for a while (maintenance window)", "silences", _SET_UP,
                 body="SilenceBody", response="Silence", statuses=(201,)),
        Endpoint("GET", "/api/v1/silences/{silence_id}", get_silence, "One silence",
                 "silences", ALL_ROLES, params=(silence_id,), response="Silence"),
        Endpoint("DELETE", "/api/v1/silences/{silence_id}", end_silence,
                 "End a silence now", "silences", _SET_UP, params=(silence_id,),
                 response="Silence"),
    ]
