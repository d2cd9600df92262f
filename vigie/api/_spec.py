"""Endpoints described once: the same declaration routes, authorises, validates the query
and writes the OpenAPI document, so no route can exist undocumented or unguarded."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vigie.api._errors import ApiError
from vigie.store._alerts import decode_cursor

__all__ = ["ALL_ROLES", "Endpoint", "Param", "audit_details", "audit_site", "list_schema",
           "parse_params"]

ALL_ROLES = frozenset({"admin", "operator", "technician", "viewer"})



_AUDIT_SITE = web.RequestKey("vigie.audit_site", str)
_AUDIT_DETAILS = web.RequestKey("vigie.audit_details", dict[str, Any])


def audit_details(request: web.Request, details: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """What an audited call acted on beyond its path (the cameras of a bulk re-learn): set
    by its handler, added to the audit entry."""
    if details is not None:
        request[_AUDIT_DETAILS] = details
    return request.get(_AUDIT_DETAILS) or {}


def audit_site(request: web.Request, site: str | None = None) -> str | None:
    """The site an audited call acted on: set by a handler that finds it out (an alert's,
    a snapshot's), read when the audit entry is written. Without it, an admin limited to
    some sites would not see, in the audit log, what was done on them."""
    if site is not None:
        request[_AUDIT_SITE] = site
    return request.get(_AUDIT_SITE) or request.match_info.get("site")


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: str = "query"  # query | path
    type: str = "string"  # string | integer | date-time | uuid
    required: bool = False
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None
    description: str = ""
    many: bool = False  # comma-separated list

    def schema(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "integer" if self.type == "integer" else "string"}
        if self.type in ("date-time", "uuid"):
            item["format"] = self.type
        if self.enum:
            item["enum"] = list(self.enum)
        if self.minimum is not None:
            item["minimum"] = self.minimum
        if self.maximum is not None:
            item["maximum"] = self.maximum
        if self.default is not None:
            item["default"] = self.default
        if self.many:
            return {"type": "array", "items": item}
        return item


def _integer(param: Param, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None
    if param.minimum is not None and value < param.minimum:
        raise ValueError(f"must be at least {param.minimum}")
    if param.maximum is not None and value > param.maximum:
        raise ValueError(f"must be at most {param.maximum}")
    return value


def _timestamp(param: Param, raw: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected an RFC 3339 timestamp, e.g. 2026-11-28T08:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("timestamp needs a time zone (Z or +01:00)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None


def _uuid(param: Param, raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValueError("expected a UUID") from None


def _string(param: Param, raw: str) -> str:
    if len(raw) > 512:
        raise ValueError("too long")
    return raw


_CONVERTERS: dict[str, Callable[[Param, str], Any]] = {
    "integer": _integer, "date-time": _timestamp, "uuid": _uuid, "string": _string,
}


def _convert(param: Param, raw: str) -> Any:
    if "\x00" in raw:  # PostgreSQL text cannot hold NUL: refuse it here, not with a 500
        raise ValueError("must not contain NUL characters")
    if param.enum and raw not in param.enum:
        raise ValueError(f"expected one of {', '.join(param.enum)}")
    return _CONVERTERS[param.type](param, raw)


def parse_params(request: web.Request, params: tuple[Param, ...]) -> dict[str, Any]:
    """Validated parameters by name; unknown query parameters are errors, not ignored."""
    known = {p.name for p in params if p.where == "query"}
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise ApiError(400, "invalid_query", f"unknown query parameter(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for p in params:
        if p.where == "query" and len(request.query.getall(p.name, ())) > 1:
            raise ApiError(400, "invalid_query", f"{p.name}: given more than once")
        source = request.match_info if p.where == "path" else request.query
        raw = source.get(p.name)
        if raw is None or raw == "":
            if p.required:
                raise ApiError(400, "invalid_query", f"{p.name}: required")
            out[p.name] = p.default
            continue
        try:
            if p.many:
                out[p.name] = [_convert(p, part) for part in raw.split(",") if part]
            else:
                out[p.name] = _convert(p, raw)
        except ValueError as exc:
            status = 404 if p.where == "path" else 400
            code = "not_found" if p.where == "path" else "invalid_query"
            raise ApiError(status, code, f"{p.name}: {exc}") from None
    return out


Handler = Callable[..., Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    roles: frozenset[str] | None  # None: no token needed
    params: tuple[Param, ...] = ()
    body: str | None = None  # component schema name of the JSON body
    body_required: bool = True  # False: the body may be left out altogether
    response: str | None = None  # component schema name of the 200 answer
    content_type: str = "application/json"
    statuses: tuple[int, ...] = field(default=(200,))

    @property
    def audited(self) -> bool:
        """State changes and image views go to the audit log."""
        return self.method != "GET" or self.content_type.startswith("image/")

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")


def _responses(ep: Endpoint) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if ep.response:
        ref = {"$ref": f"#/components/schemas/{ep.response}"}
        ok["content"] = {ep.content_type: {"schema": ref}}
    elif ep.content_type != "application/json":
        ok["content"] = {ep.content_type: {"schema": {"type": "string"}}}
    out: dict[str, Any] = {str(s): ok for s in ep.statuses}
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if ep.params or ep.body:
        out["400"] = {"description": "Invalid query or body", **err}
    if ep.roles is not None:
        out["401"] = {"description": "Missing or invalid token", **err}
        out["403"] = {"description": "Role not allowed", **err}
        out["429"] = {"description": "Too many failed authentications", **err}
        out["503"] = {"description": "Database unavailable", **err}
    # A filter on a site the token may not see answers as for an unknown site: 404.
    if any(p.where == "path" or p.name == "site" for p in ep.params):
        out["404"] = {"description": "Not found", **err}
    if ep.method != "GET":  # a change the current state does not allow, body or not
        out["409"] = {"description": "Conflicts with the current state", **err}
    if ep.body:
        out["413"] = {"description": "Body too large", **err}
        out["422"] = {"description": "Body is valid JSON but not acceptable", **err}
    return out


def openapi_document(endpoints: list[Endpoint], schemas: dict[str, Any], version: str
                     ) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": ep.operation_id, "summary": ep.summary, "tags": [ep.tag],
            "responses": _responses(ep),
            "x-vigie-roles": sorted(ep.roles) if ep.roles is not None else ["public"],
        }
        if ep.params:
            op["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                 "description": p.description, "schema": p.schema(),
                 **({"style": "form", "explode": False} if p.many else {}),
                 # `?site=` is taken as no filter, as browsers' forms send it.
                 **({"allowEmptyValue": True} if p.where == "query" and not p.required
                    else {})}
                for p in ep.params
            ]
        if ep.body:
            op["requestBody"] = {"required": ep.body_required, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{ep.body}"}}}}
        if ep.roles is not None:
            op["security"] = [{"bearer": []}]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "vigie API", "version": version,
                 "description": "Camera health, sensor events and alerts of a "
                                "video-protection network."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def list_schema(ref: str) -> dict[str, Any]:
    """The schema of a list answer: {"items": [...], "next_cursor": "..." | null}."""
    return {
        "type": "object", "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}},
                       "next_cursor": {"type": "string", "nullable": True}},
    }


def id_cursor(raw: str | None) -> tuple[datetime, int] | None:
    """A list's `cursor` query parameter for rows numbered by a bigint id: (time, id)."""
    if raw is None:
        return None
    try:
        at, key = decode_cursor(raw)
        row_id = int(key)
        if not 0 < row_id < 2**63:
            raise ValueError("id out of range")
        return at, row_id
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_query", "cursor: not a cursor given by this API") from None
