"""One place maps errors to HTTP answers: `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from vigie.errors import Conflict, NotFound, StoreUnavailable, VigieError
from vigie.secrets import redact_text

__all__ = ["ApiError", "error_middleware", "error_response", "json_error"]

log = logging.getLogger("vigie.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


def json_error(status: int, code: str, message: str,
               headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(request: web.Request, exc: Exception) -> web.Response:
    """The answer for an exception raised while handling `request`."""
    if isinstance(exc, ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return json_error(exc.status, exc.code, exc.message, headers=headers)
    if isinstance(exc, NotFound):
        return json_error(404, "not_found", str(exc))
    if isinstance(exc, Conflict):
        return json_error(409, "conflict", str(exc))
    if isinstance(exc, StoreUnavailable):
        return json_error(503, "database_unavailable",
                          "the database is unavailable; try again shortly",
                          headers={"Retry-After": "5"})
    if isinstance(exc, web.HTTPMethodNotAllowed):
        # RFC 9110: a 405 lists the methods the resource supports.
        return json_error(405, "method_not_allowed", f"{exc.method} not allowed here",
                          headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return json_error(exc.status, _HTTP_CODES.get(exc.status, "http_error"),
                          exc.reason or "error")
    if isinstance(exc, VigieError):
        log.error("request %s %s failed: %s", request.method, request.path,
                  redact_text(str(exc)))
    else:
        log.exception("unexpected error on %s %s", request.method, request.path)
    return json_error(500, "internal", "internal error")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """For what happens outside the endpoint table (unknown paths, wrong methods)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, exc)
    except Exception as exc:
        return error_response(request, exc)
