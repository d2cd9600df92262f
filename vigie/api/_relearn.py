"""Re-learning the references of many cameras of a site at once: after a planned change on a
whole site (new masts, re-aimed cameras, works), one call rather than one per camera.

Progress is read from the camera views (`reference` of GET /api/v1/cameras?site=), which is
what `vigie cameras relearn --wait` shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._bodies import read_body
from vigie.api._errors import ApiError
from vigie.api._spec import Endpoint, Param, audit_details

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext
    from vigie.cameras import CameraState

__all__ = ["relearn_endpoints"]

_MANAGE = frozenset({"admin", "technician"})
MAX_CAMERAS = 1000


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_body", message)


def _wanted(value: Any, known: dict[str, CameraState]) -> list[CameraState]:
    """The cameras a body's `cameras` names, in its order, each once."""
    if not isinstance(value, list):
        raise _invalid("cameras: expected a list of camera ids")
    if not value:
        raise _invalid("cameras: must not be empty (leave it out for every camera of the site)")
    if len(value) > MAX_CAMERAS:
        raise _invalid(f"cameras: at most {MAX_CAMERAS}")
    if not all(isinstance(v, str) for v in value):
        raise _invalid("cameras: expected camera ids (strings)")
    unknown = sorted({v for v in value if v not in known})
    if unknown:
        shown = ", ".join(repr(u[:64]) for u in unknown[:10])
        raise _invalid(f"cameras: not cameras of this site: {shown}"
                       f"{' …' if len(unknown) > 10 else ''}")
    return [known[v] for v in dict.fromkeys(value)]


async def relearn_site(request: web.Request, ctx: ApiContext, p: Principal,
                       q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    site = q["site"]
    if ctx.config.site(site) is None or not p.sees(site):
        raise ApiError(404, "not_found", f"site {site!r} not found")
    body = await read_body(request, ("cameras",))
    supervisor = ctx.cameras
    known = {s.camera.id: s for s in (supervisor.cameras.values() if supervisor else ())
             if s.site.id == site}
    raw = body.fields.get("cameras")
    chosen = list(known.values()) if raw is None else _wanted(raw, known)
    if not chosen or supervisor is None:
        raise ApiError(409, "no_cameras", f"site {site!r} has no camera to re-learn")
    now = datetime.now(UTC)
    items = []
    for state in chosen:
        # Several nodes: a camera watched by another one is re-learned through that node.
        here = supervisor.watching(state.key)
        if here:
            supervisor.relearn(state.key)
        items.append({"camera": state.camera.id, "state": state.health.state,
                      "relearn": "learning" if here else "not_watched_here",
                      "learn_for": state.checks.learn_for})
    audit_details(request, {"cameras": [i["camera"] for i in items],
                            "learning": sum(i["relearn"] == "learning" for i in items)})
    return ok({"site": site, "requested_at": now.isoformat(), "items": items}, status=202)


def relearn_endpoints() -> list[Endpoint]:
    return [
        Endpoint("POST", "/api/v1/sites/{site}/cameras/reference", relearn_site,
                 "Re-learn the reference picture of every camera of a site (or of those "
                 "listed) after a planned change", "cameras", _MANAGE,
                 params=(Param("site", where="path", required=True),), body="RelearnBody",
                 body_required=False, response="RelearnSite", statuses=(202,)),
    ]
