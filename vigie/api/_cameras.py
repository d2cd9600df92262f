"""Camera routes for technicians: state from memory, history and availability from the
database, snapshots from disk.

A camera's slug is unique within its site only (every collège has an `entree`), so a camera
is addressed as /cameras/{site}/{camera}.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._errors import ApiError
from vigie.api._spec import ALL_ROLES, Endpoint, Param, audit_site
from vigie.cameras import CameraState
from vigie.errors import StoreUnavailable
from vigie.store import _cameras as cameras_q

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["camera_endpoints"]

_STATES = ("unknown", "ok", "degraded", "offline")
_MANAGE = frozenset({"admin", "technician"})


def _camera(ctx: ApiContext, p: Principal, q: dict[str, Any]) -> CameraState:
    site, camera = q["site"], q["camera"]
    state = ctx.cameras.cameras.get(f"{site}/{camera}") if ctx.cameras else None
    if state is None or not p.sees(site):
        raise ApiError(404, "not_found", f"camera {site}/{camera} not found")
    return state


async def list_cameras(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    site = q["site"]
    if site is not None and (ctx.config.site(site) is None or not p.sees(site)):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    states = ctx.cameras.cameras.values() if ctx.cameras else []
    items = [ctx.cameras.view(s) for s in states  # type: ignore[union-attr]
             if p.sees(s.site.id) and (site is None or s.site.id == site)
             and (q["status"] is None or s.health.state in q["status"])]
    return ok({"items": items, "next_cursor": None})


async def get_camera(request: web.Request, ctx: ApiContext, p: Principal,
                     q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    state = _camera(ctx, p, q)
    now = ctx.clock()
    day = week = None  # unknown while the database is away: the state is live anyway
    with contextlib.suppress(StoreUnavailable):
        async with ctx.store.connection() as conn:
            day = await cameras_q.availability(conn, state.site.id, state.camera.id,
                                               now - timedelta(days=1), now)
            week = await cameras_q.availability(conn, state.site.id, state.camera.id,
                                                now - timedelta(days=7), now)
    assert ctx.cameras is not None
    return ok({**ctx.cameras.view(state), "availability": {"24h": day, "7d": week},
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
    path = ctx.config.node.data_dir / "snapshots" / state.site.id / f"{state.camera.id}.jpg"
    return _jpeg(path)


async def get_snapshot(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    async with ctx.store.connection() as conn:
        row = await cameras_q.get_snapshot(conn, q["snapshot_id"])
    if row is None or not p.sees(row["site"]):
        raise ApiError(404, "not_found", f"snapshot {q['snapshot_id']} not found")
    audit_site(request, row["site"])
    return _jpeg(ctx.config.node.data_dir / row["path"])


async def relearn_reference(request: web.Request, ctx: ApiContext, p: Principal,
                            q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    state = _camera(ctx, p, q)
    assert ctx.cameras is not None
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
