"""The audit log: who did what, when, from where, with which outcome. Append-only."""

from __future__ import annotations

from typing import Any

__all__ = ["record"]


async def record(conn: Any, *, actor: str, action: str, outcome: str = "ok",
                 target: str | None = None, site: str | None = None,
                 remote: str | None = None, details: dict[str, Any] | None = None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, site, remote, outcome, details) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        actor, action, target, site, remote, outcome, details or {})
