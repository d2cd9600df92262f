"""Camera routes for technicians: state from memory, history and availability from the
database, snapshots from disk.

A camera's slug is unique within its site only (every collège has an `entree`), so a camera
is addressed as /cameras/{site}/{camera}.

Several nodes (cluster.enabled): any node answers for every camera, since a Service sends
the operator to any of them. The cameras it judges come from its memory (the freshest);
the others from what their holder published in PostgreSQL (vigie.cluster's
`camera_status`: its view every few seconds, its latest picture at a modest rate) and their
last transition. Each camera then says which node watches it (`node`) and, for one watched
elsewhere, when its holder published the figures shown (`as_of`).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._errors import ApiError
from vigie.api._spec import ALL_ROLES, Endpoint, Param, audit_site
from vigie.cameras import CameraState
from vigie.cluster import latest_picture, remote_view
from vigie.errors import StoreUnavailable
from vigie.secrets import redact_url
from vigie.store import _cameras as cameras_q

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["camera_endpoints", "site_camera_states"]

_STATES = ("unknown", "ok", "degraded", "offline")
_MANAGE = frozenset({"admin", "technician"})


def _camera(ctx: ApiContext, p: Principal, q: dict[str, Any]) -> CameraState:
    site, camera = q["site"], q["camera"]
    state = ctx.cameras.cameras.get(f"{site}/{camera}") if ctx.cameras else None
    if state is None or not p.sees(site):
        raise ApiError(404, "not_found", f"camera {site}/{camera} not found")
    return state


def _watched_here(ctx: ApiContext, state: CameraState) -> bool:
    """Whether this node's memory is the truth about the camera: always on a lone node; on
    one of several, for the cameras it judges (its leases)."""
    return ctx.leases is None or state.key in ctx.leases.judging


async def _views(ctx: ApiContext, states: list[CameraState]) -> list[dict[str, Any]]:
    """The API's view of each camera, wherever it is watched (several nodes)."""
    assert ctx.cameras is not None and ctx.leases is not None
    here = set(ctx.leases.judging)
    elsewhere = [(s.site.id, s.camera.id) for s in states if s.key not in here]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    unavailable = False
    if elsewhere:
        try:
            async with ctx.store.connection() as conn:
                rows = await cameras_q.cluster_states(conn, elsewhere)
        except StoreUnavailable:
            unavailable = True
    out = []
    for s in states:
        if s.key in here:
            out.append({**ctx.cameras.view(s), "node": ctx.leases.name, "as_of": None})
            continue
        view = remote_view({"id": s.camera.id, "site": s.site.id, "name": s.camera.name,
                            "zone": s.camera.zone, "url": redact_url(s.camera.url.reveal())},
                           rows.get((s.site.id, s.camera.id)))
        if unavailable:
            view.update(stale=True, error="database unreachable: the state of the cameras "
                                          "other nodes watch is unknown to this node")
        out.append(view)
    return out


async def site_camera_states(ctx: ApiContext, sites: set[str]
                             ) -> dict[str, dict[str, int]] | None:
    """Several nodes: how many cameras of each site are in each state, wherever they are
    watched (None on a lone node: its memory has them all)."""
    if ctx.leases is None or ctx.cameras is None:
        return None
    out: dict[str, dict[str, int]] = {site: {} for site in sites}
    views = await _views(ctx, [s for s in ctx.cameras.cameras.values() if s.site.id in sites])
    for v in views:
        counts = out[v["site"]]
        counts[v["state"]] = counts.get(v["state"], 0) + 1
    return out


async def list_cameras(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    site = q["site"]
    if site is not None and (ctx.config.site(site) is None or not p.sees(site)):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    states = ctx.cameras.cameras.values() if ctx.cameras else []
    if ctx.leases is not None:
        views = await _views(ctx, [s for s in states if p.sees(s.site.id)
                                   and (site is None or s.site.id == site)])
        items = [v for v in views if q["status"] is None or v["state"] in q["status"]]
        return ok({"items": items, "next_cursor": None})
    items = [ctx.cameras.view(s) for s in states  # type: ignore[union-attr]
             if p.sees(s.site.id) and (site is None or s.site.id == site)
             and (q["status"] is None or s.health.state in q["status"])]
    return ok({"items": items, "next_cursor": None})


async def get_camera(request: web.Request, ctx: ApiContext, p: Principal,
                     q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    state = _camera(ctx, p, q)
    assert ctx.cameras is not None
    view = (ctx.cameras.view(state) if ctx.leases is None
            else (await _views(ctx, [state]))[0])
    now = ctx.clock()
    day = week = None  # unknown while the database is away: the state is live anyway
    with contextlib.suppress(StoreUnavailable):
        async with ctx.store.connection() as conn:
            day = await cameras_q.availability(conn, state.site.id, state.camera.id,
                                               now - timedelta(days=1), now)
            week = await cameras_q.availability(conn, state.site.id, state.camera.id,
                                                now - timedelta(days=7), now)
    return ok({**view, "availability": {"24h": day, "7d": week},
               "checks": state.checks.model_dump(mode="json")})


async def camera_history(request: web.Request, ctx: ApiContext, p: Principal,
                         q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    state = _camera(ctx, p, q)
    until = q["to"] or ctx.clock()
    since = q["from"] or until - timedelta(days=1)
    if since >= until:
        raise ApiError(400, "invalid_query", "from: must be before to")
    async with ctx.store.connection() as conn:
        items = await cameras_q.transitions(conn, state.site.id, state.camera.id, since, until,
                                            q["limit"])
        available = await cameras_q.availability(conn, state.site.id, state.camera.id, since,
                                                 until)
    return ok({"items": [t.to_json() for t in items], "next_cursor": None,
               "availability": available})


def _jpeg(path: Path) -> web.Response:
    try:
        body = path.read_bytes()
    except OSError:
        raise ApiError(404, "not_found", "no snapshot yet") from None
    return web.Response(body=body, content_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})


async def camera_snapshot(request: web.Request, ctx: ApiContext, p: Principal,
                          q: dict[str, Any]) -> web.Response:
    state = _camera(ctx, p, q)
    if not _watched_here(ctx, state):
        # Its holder's latest picture, through the database (vigie.cluster._status says
        # why not a proxy to the holder).
        found = await latest_picture(ctx.store, state.site.id, state.camera.id)
        if found is None:
            raise ApiError(404, "not_found", "no snapshot yet")
        body, taken_at = found
        return web.Response(body=body, content_type="image/jpeg", headers={
            "Cache-Control": "no-store", "Last-Modified": _http_date(taken_at)})
    path = ctx.config.node.data_dir / "snapshots" / state.site.id / f"{state.camera.id}.jpg"
    return _jpeg(path)


def _http_date(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


async def get_snapshot(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    async with ctx.store.connection() as conn:
        row = await cameras_q.get_snapshot(conn, q["snapshot_id"])
    if row is None or not p.sees(row["site"]):
        raise ApiError(404, "not_found", f"snapshot {q['snapshot_id']} not found")
    audit_site(request, row["site"])
    path = ctx.config.node.data_dir / row["path"]
    if ctx.leases is not None and not path.exists():
        # Kept by another node (several nodes): the copy its holder put in the database.
        async with ctx.store.connection() as conn:
            data = await cameras_q.kept_copy(conn, row["id"])
        if data is not None:
            return web.Response(body=data, content_type="image/jpeg",
                                headers={"Cache-Control": "no-store"})
    return _jpeg(path)


async def relearn_reference(request: web.Request, ctx: ApiContext, p: Principal,
                            q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    state = _camera(ctx, p, q)
    assert ctx.cameras is not None
    if not _watched_here(ctx, state):
        # Only the camera's holder can: its worker holds the reference being learned.
        raise ApiError(409, "watched_elsewhere", f"camera {state.key} is watched by another "
                       "node: try again (a request may reach another node), or on its holder "
                       "(GET /api/v1/cameras/{site}/{camera} says which)")
    ctx.cameras.relearn(state.key)
    return ok({"camera": state.camera.id, "site": state.site.id, "status": "learning",
               "learn_for": state.checks.learn_for}, status=202)


def camera_endpoints() -> list[Endpoint]:
    site_path = Param("site", where="path", required=True)
    cam_path = Param("camera", where="path", required=True)
    one = (site_path, cam_path)
    return [
        Endpoint("GET", "/api/v1/cameras", list_cameras, "Cameras with state and reasons",
                 "cameras", ALL_ROLES, response="CameraList", params=(
                     Param("site", description="site id (slug)"),
                     Param("status", enum=_STATES, many=True,
                           description="one or several states, comma-separated"))),
        Endpoint("GET", "/api/v1/cameras/{site}/{camera}", get_camera,
                 "One camera with availability over 24 h and 7 days", "cameras", ALL_ROLES,
                 params=one, response="Camera"),
        Endpoint("GET", "/api/v1/cameras/{site}/{camera}/history", camera_history,
                 "A camera's state transitions", "cameras", ALL_ROLES, response="CameraHistory",
                 params=(*one, Param("from", type="date-time"), Param("to", type="date-time"),
                         Param("limit", type="integer", minimum=1, maximum=1000, default=200))),
        Endpoint("GET", "/api/v1/cameras/{site}/{camera}/snapshot", camera_snapshot,
                 "The last analysed frame (JPEG)", "cameras", ALL_ROLES, params=one,
                 content_type="image/jpeg"),
        Endpoint("POST", "/api/v1/cameras/{site}/{camera}/reference", relearn_reference,
                 "Re-learn the camera's reference picture after a planned change", "cameras",
                 _MANAGE, params=one, response="Relearn", statuses=(202,)),
        Endpoint("GET", "/api/v1/snapshots/{snapshot_id}", get_snapshot,
                 "A snapshot kept for an alert (JPEG)", "cameras", ALL_ROLES,
                 params=(Param("snapshot_id", where="path", type="integer", required=True,
                               minimum=1, maximum=2**62),), content_type="image/jpeg"),
    ]
