"""The aiohttp application: every route from the endpoint table, guarded the same way."""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vigie import __version__
from vigie.api._auth import Principal, client_address, forwarded_https
from vigie.api._errors import ApiError, error_middleware, error_response
from vigie.api._routes import ApiContext, endpoints
from vigie.api._schemas import SCHEMAS
from vigie.api._spec import (
    Endpoint,
    audit_details,
    audit_site,
    openapi_document,
    parse_params,
)
from vigie.errors import StoreUnavailable, VigieError
from vigie.logs import REQUEST_ID
from vigie.spool import AuditEntry
from vigie.store import _audit as audit

__all__ = ["CONTEXT", "make_api"]

CONTEXT = web.AppKey("context", ApiContext)
log = logging.getLogger("vigie.api")


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@web.middleware
async def request_ids(request: web.Request, handler: Any) -> web.StreamResponse:
    """Each request gets an id (the client's X-Request-Id if it is a sane one, e.g. from a
    reverse proxy), logged with every line written while it is served and sent back."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
    token = REQUEST_ID.set(request_id)
    try:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own 404/405: still answered with the id
            exc.headers["X-Request-Id"] = request_id
            raise
        if not response.prepared:  # a WebSocket has sent its headers already
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        REQUEST_ID.reset(token)


HSTS = "max-age=31536000; includeSubDomains"


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # An API, not pages: nothing to load, nothing to frame.
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'none'; frame-ancestors 'none'")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")
    api = request.app[CONTEXT].config.api
    if forwarded_https(request, api.trusted_proxies):
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    response.headers["Server"] = "vigie"  # not the versions of Python and aiohttp
    return response


_CORS_METHODS = "GET, POST, DELETE"
_CORS_HEADERS = "Authorization, Content-Type"


@web.middleware
async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Cross-origin calls from the configured origins only; none unless configured."""
    allowed = request.app[CONTEXT].config.api.cors_origins
    origin = request.headers.get("Origin")
    if not allowed or origin is None or not ("*" in allowed or origin in allowed):
        response: web.StreamResponse = await handler(request)
        return response
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response = web.Response(status=204, headers={
            "Access-Control-Allow-Methods": _CORS_METHODS,
            "Access-Control-Allow-Headers": _CORS_HEADERS, "Access-Control-Max-Age": "600"})
    else:
        response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    return response


async def _principal(request: web.Request, ctx: ApiContext, ep: Endpoint) -> Principal | None:
    if ep.roles is None:
        return None
    remote = client_address(request, ctx.config.api.trusted_proxies)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token")
    # A known-good token passes even from a throttled address (many users behind one proxy);
    # unknown tokens from there are refused before any database lookup.
    if not ctx.auth.cached(token.strip()) and ctx.auth.throttled(remote):
        raise ApiError(429, "too_many_failures",
                       "too many failed authentications from this address; wait a minute")
    principal = await ctx.auth.principal(token.strip(), ctx.clock())
    if principal is None:
        ctx.auth.failed(remote)
        raise ApiError(401, "unauthorized", "invalid, expired or revoked token")
    if principal.role not in ep.roles:
        raise ApiError(403, "forbidden",
                       f"role {principal.role} may not {ep.summary[0].lower() + ep.summary[1:]}")
    return principal


async def _audit(request: web.Request, ctx: ApiContext, ep: Endpoint,
                 principal: Principal | None, status: int) -> None:
    """Every state-changing call and every snapshot view, whatever its outcome."""
    entry = AuditEntry(
        at=datetime.now(UTC), actor=principal.name if principal else "anonymous",
        action=ep.operation_id, outcome=str(status), target=request.path,
        site=audit_site(request),
        remote=client_address(request, ctx.config.api.trusted_proxies),
        details={**audit_details(request),
                 **({"role": principal.role} if principal else {})})
    try:
        async with ctx.store.connection() as conn:
            await audit.record(conn, actor=entry.actor, action=entry.action,
                               target=entry.target, site=entry.site, remote=entry.remote,
                               outcome=entry.outcome, details=entry.details)
    except VigieError as exc:
        # Away: kept on disk, written with its own time when the database is back.
        if isinstance(exc, StoreUnavailable) and ctx.audit_spool is not None and (
                await ctx.audit_spool.add(entry)):
            return
        log.warning("audit entry not written (%s %s by %s): %s", ep.method, request.path,
                    entry.actor, exc)


def _log_request(request: web.Request, ep: Endpoint, principal: Principal | None,
                 status: int, started: float) -> None:
    extra: dict[str, Any] = {"route": ep.path, "status": status}
    if "alert_id" in request.match_info:
        extra["alert_id"] = request.match_info["alert_id"][:64]
    log.info("%s %s %d %.1fms by %s", ep.method, request.path, status,
             (time.perf_counter() - started) * 1000,
             principal.name if principal else "anonymous", extra=extra)


def _wrap(ep: Endpoint) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        started = time.perf_counter()
        principal: Principal | None = None
        try:
            principal = await _principal(request, ctx, ep)
            params = parse_params(request, ep.params)
            response = await ep.handler(request, ctx, principal, params)
        except Exception as exc:
            response = error_response(request, exc)
        status = response.status
        if ep.method != "GET" or status >= 500:  # what changes state, and what failed
            _log_request(request, ep, principal, status, started)
        if ep.audited:
            await _audit(request, ctx, ep, principal, status)
        ctx.metrics.http_requests.labels(ep.path, ep.method, str(status)).inc()
        ctx.metrics.http_seconds.labels(ep.path).observe(time.perf_counter() - started)
        return response

    handle.__name__ = ep.operation_id
    return handle


def _route(ep: Endpoint) -> str:
    """The path aiohttp routes on: an integer path parameter matches digits only, so that a
    word in its place (`dead-letters/retry` beside `dead-letters/{letter}`) is the other
    resource, answering 405 for a method it lacks rather than a 404 about the parameter."""
    path = ep.path
    for p in ep.params:
        if p.where == "path" and p.type == "integer":
            path = path.replace(f"{{{p.name}}}", f"{{{p.name}:\\d+}}")
    return path


def make_api(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[request_ids, security_headers, cors, error_middleware],
                          client_max_size=256 * 1024)
    app[CONTEXT] = ctx
    table = endpoints()
    for ep in table:
        app.router.add_route(ep.method, _route(ep), _wrap(ep))
    ctx.openapi = openapi_document(table, SCHEMAS, __version__)
    return app
