"""One place maps errors to HTTP answers: `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from vigie.errors import Conflict, NotFound, StoreUnavailable, VigieError
from vigie.secrets import redact_text

__all__ = ["ApiError", "error_middleware", "json_error"]

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


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.message)
    except NotFound as exc:
        return json_error(404, "not_found", str(exc))
    except Conflict as exc:
        return json_error(409, "conflict", str(exc))
    except StoreUnavailable:
        return json_error(503, "database_unavailable",
                          "the database is unavailable; try again shortly",
                          headers={"Retry-After": "5"})
    except VigieError as exc:
        log.error("request %s %s failed: %s", request.method, request.path,
                  redact_text(str(exc)))
        return json_error(500, "internal", "internal error")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, _HTTP_CODES.get(exc.status, "http_error"),
                          exc.reason or "error")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_error(500, "internal", "internal error")
