"""Alerts and their history in PostgreSQL.

One unresolved alert per fingerprint is guaranteed by a partial unique index, so the upsert
below folds a repeat into `count` even when several nodes raise the same alert at once.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vigie.errors import Conflict, NotFound

__all__ = [
    "Alert",
    "AlertOccurrence",
    "HistoryEntry",
    "acknowledge",
    "add_comment",
    "decode_cursor",
    "encode_cursor",
    "get_alert",
    "history",
    "list_alerts",
    "open_counts",
    "resolve",
    "resolve_fingerprint",
    "upsert_alert",
]

SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "info": 3}


@dataclass(frozen=True, slots=True)
class AlertOccurrence:
    """Something that raises (or repeats) an alert."""

    site: str
    source: str
    source_type: str  # sensor, camera, site
    kind: str
    severity: str
    title: str
    at: datetime
    details: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    event_id: int | None = None

    @property
    def fingerprint(self) -> str:
        return f"{self.site}/{self.source}/{self.kind}"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    actor: str
    action: str
    comment: str | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "comment": self.comment, "details": self.details}


@dataclass(frozen=True, slots=True)
class Alert:
    id: uuid.UUID
    fingerprint: str
    site: str
    source: str
    source_type: str
    kind: str
    severity: str
    state: str
    title: str
    details: dict[str, Any]
    opened_at: datetime
    last_seen_at: datetime
    count: int
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    resolved_by: str | None
    resolved_at: datetime | None
    escalation_level: int
    silenced: bool
    snapshots: list[Any]
    event_id: int | None

    @classmethod
    def from_row(cls, row: Any) -> Alert:
        return cls(**{name: row[name] for name in cls.__slots__})

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id), "fingerprint": self.fingerprint, "site": self.site,
            "source": self.source, "source_type": self.source_type, "kind": self.kind,
            "severity": self.severity, "state": self.state, "title": self.title,
            "details": self.details, "count": self.count,
            "opened_at": iso(self.opened_at), "last_seen_at": iso(self.last_seen_at),
            "acknowledged_by": self.acknowledged_by, "acknowledged_at": iso(self.acknowledged_at),
            "resolved_by": self.resolved_by, "resolved_at": iso(self.resolved_at),
            "escalation_level": self.escalation_level, "silenced": self.silenced,
            "snapshots": self.snapshots, "event_id": self.event_id,
        }


_COLUMNS = ", ".join(Alert.__slots__)

_UPSERT = f"""
INSERT INTO alerts (id, fingerprint, site, source, source_type, kind, severity, state, title,
                    details, opened_at, last_seen_at, count, event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9, $10, $10, $11, $12)
ON CONFLICT (fingerprint) WHERE state <> 'resolved' DO UPDATE SET
    count = alerts.count + EXCLUDED.count,
    last_seen_at = greatest(alerts.last_seen_at, EXCLUDED.last_seen_at),
    -- a repeat may be graver (the same door, now at night): keep the gravest severity
    severity = CASE WHEN array_position(ARRAY['critical','major','minor','info'], EXCLUDED.severity)
                       < array_position(ARRAY['critical','major','minor','info'], alerts.severity)
                    THEN EXCLUDED.severity ELSE alerts.severity END
RETURNING {_COLUMNS}, (xmax = 0) AS inserted
"""

_HISTORY = """
INSERT INTO alert_history (alert_id, at, actor, action, comment, details)
VALUES ($1, $2, $3, $4, $5, $6)
"""


async def upsert_alert(conn: Any, occ: AlertOccurrence) -> tuple[Alert, bool]:
    """Open an alert, or fold the occurrence into the unresolved one; True if opened."""
    row = await conn.fetchrow(
        _UPSERT, uuid.uuid4(), occ.fingerprint, occ.site, occ.source, occ.source_type, occ.kind,
        occ.severity, occ.title, occ.details, occ.at, occ.count, occ.event_id,
    )
    alert = Alert.from_row(row)
    if row["inserted"]:
        await conn.execute(_HISTORY, alert.id, occ.at, "vigie", "opened", None,
                           {"severity": occ.severity, **({"event_id": occ.event_id}
                                                          if occ.event_id else {})})
    return alert, bool(row["inserted"])


async def resolve_fingerprint(
    conn: Any, fingerprint: str, at: datetime, comment: str, actor: str = "vigie"
) -> Alert | None:
    """Resolve the unresolved alert of a fingerprint, if any (a source that recovered)."""
    row = await conn.fetchrow(
        f"""UPDATE alerts SET state = 'resolved', resolved_by = $2, resolved_at = $3
            WHERE fingerprint = $1 AND state <> 'resolved' RETURNING {_COLUMNS}""",
        fingerprint, actor, at,
    )
    if row is None:
        return None
    alert = Alert.from_row(row)
    await conn.execute(_HISTORY, alert.id, at, actor, "resolved", comment, {"auto": True})
    return alert


async def _transition(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, action: str, comment: str | None,
    sql: str, allowed_from: tuple[str, ...],
) -> Alert:
    current = await conn.fetchval("SELECT state FROM alerts WHERE id = $1 FOR UPDATE", alert_id)
    if current is None:
        raise NotFound(f"alert {alert_id} not found")
    if current not in allowed_from:
        raise Conflict(f"alert {alert_id} is {current}: cannot {action.removesuffix('d')}")
    row = await conn.fetchrow(sql, alert_id, actor, at)
    await conn.execute(_HISTORY, alert_id, at, actor, action, comment, {})
    return Alert.from_row(row)


async def acknowledge(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, comment: str | None
) -> Alert:
    return await _transition(
        conn, alert_id, actor, at, "acknowledged", comment,
        f"""UPDATE alerts SET state = 'acknowledged', acknowledged_by = $2, acknowledged_at = $3
            WHERE id = $1 RETURNING {_COLUMNS}""",
        ("open",),
    )


async def resolve(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, comment: str | None
) -> Alert:
    return await _transition(
        conn, alert_id, actor, at, "resolved", comment,
        f"""UPDATE alerts SET state = 'resolved', resolved_by = $2, resolved_at = $3
            WHERE id = $1 RETURNING {_COLUMNS}""",
        ("open", "acknowledged"),
    )


async def add_comment(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, comment: str
) -> Alert:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM alerts WHERE id = $1", alert_id)
    if row is None:
        raise NotFound(f"alert {alert_id} not found")
    await conn.execute(_HISTORY, alert_id, at, actor, "commented", comment, {})
    return Alert.from_row(row)


async def get_alert(conn: Any, alert_id: uuid.UUID, sites: frozenset[str] | None) -> Alert:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM alerts WHERE id = $1", alert_id)
    if row is None or (sites is not None and row["site"] not in sites):
        raise NotFound(f"alert {alert_id} not found")
    return Alert.from_row(row)


async def history(conn: Any, alert_id: uuid.UUID) -> list[HistoryEntry]:
    rows = await conn.fetch(
        "SELECT at, actor, action, comment, details FROM alert_history "
        "WHERE alert_id = $1 ORDER BY at, id", alert_id,
    )
    return [HistoryEntry(r["at"], r["actor"], r["action"], r["comment"], r["details"])
            for r in rows]


def encode_cursor(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raise ValueError on anything that is not a cursor this API gave out."""
    padded = cursor + "=" * (-len(cursor) % 4)
    at, sep, key = base64.urlsafe_b64decode(padded.encode("ascii")).decode().partition("|")
    if not sep:
        raise ValueError("malformed cursor")
    parsed = datetime.fromisoformat(at)
    if parsed.tzinfo is None:
        raise ValueError("malformed cursor")
    return parsed, key


async def list_alerts(
    conn: Any, *, states: list[str] | None, site: str | None, severity: str | None,
    sites: frozenset[str] | None, limit: int, cursor: tuple[datetime, uuid.UUID] | None,
) -> tuple[list[Alert], str | None]:
    """Newest first; keyset pagination on (opened_at, id)."""
    where, args = [], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if states:
        where.append(f"state = ANY({arg(states)}::text[])")
    if site:
        where.append(f"site = {arg(site)}")
    if severity:
        where.append(f"severity = {arg(severity)}")
    if sites is not None:
        where.append(f"site = ANY({arg(sorted(sites))}::text[])")
    if cursor:
        where.append(f"(opened_at, id) < ({arg(cursor[0])}, {arg(cursor[1])})")
    sql = f"SELECT {_COLUMNS} FROM alerts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY opened_at DESC, id DESC LIMIT {arg(limit + 1)}"
    rows = await conn.fetch(sql, *args)
    alerts = [Alert.from_row(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = alerts[-1]
        next_cursor = encode_cursor(last.opened_at, str(last.id))
    return alerts, next_cursor


async def open_counts(conn: Any) -> dict[tuple[str, str], int]:
    """Unresolved alerts by (site, severity), for the metrics."""
    rows = await conn.fetch(
        "SELECT site, severity, count(*) AS n FROM alerts WHERE state <> 'resolved' "
        "GROUP BY site, severity"
    )
    return {(r["site"], r["severity"]): r["n"] for r in rows}
