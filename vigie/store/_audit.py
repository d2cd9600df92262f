"""The audit log: who did what, when, from where, with which outcome. Append-only (a
trigger refuses UPDATE and DELETE: 0008_security.sql); read back by admins, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vigie.store._alerts import Filters, encode_cursor, json_page

__all__ = ["list_audit", "record"]


async def record(conn: Any, *, actor: str, action: str, outcome: str = "ok",
                 target: str | None = None, site: str | None = None,
                 remote: str | None = None, details: dict[str, Any] | None = None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, site, remote, outcome, details) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        actor, action, target, site, remote, outcome, details or {})


async def list_audit(conn: Any, *, since: datetime | None, until: datetime | None,
                     actor: str | None, site: str | None, sites: frozenset[str] | None,
                     limit: int,
                     cursor: tuple[datetime, int] | None) -> tuple[str, str | None]:
    """A page of entries, newest first, as a JSON array (text) and the next cursor."""
    where = Filters()
    if since:
        where.add("at >= {}", since)
    if until:
        where.add("at < {}", until)
    if actor:
        where.add("actor = {}", actor)
    if site:
        where.add("site = {}", site)
    if sites is not None:  # a token limited to some sites: their entries, nothing global
        where.add("site = ANY({}::text[])", sorted(sites))
    if cursor:
        where.add("(at, id) < ({}, {})", *cursor)
    rows = await conn.fetch(
        "SELECT row_to_json(a)::text AS doc, a.at, a.id FROM "
        "(SELECT id, at, actor, action, target, site, remote, outcome, details FROM audit_log"
        f"{where.sql} ORDER BY at DESC, id DESC LIMIT {where.arg(limit + 1)}) a", *where.args)
    return json_page(rows, limit, lambda r: encode_cursor(r["at"], str(r["id"])))
