"""Alerts and their history in PostgreSQL.

One unresolved alert per fingerprint is guaranteed by a partial unique index, so the upsert
below folds a repeat into `count` even when several nodes raise the same alert at once.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vigie.errors import Conflict, NotFound

__all__ = [
    "Alert",
    "AlertOccurrence",
    "Filters",
    "HistoryEntry",
    "acknowledge",
    "add_comment",
    "attach_snapshot",
    "decode_cursor",
    "encode_cursor",
    "get_alert",
    "history",
    "json_page",
    "list_alerts",
    "open_counts",
    "resolve",
    "resolve_fingerprint",
    "resolve_fingerprints",
    "upsert_alert",
    "upsert_alerts",
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
    last_at: datetime | None = None  # the latest of folded occurrences (default: `at`)

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
    related: list[uuid.UUID]  # alerts linked by correlation

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
            "related": [str(r) for r in self.related],
        }


_COLUMNS = ", ".join(Alert.__slots__)

_UPSERT = f"""
INSERT INTO alerts (id, fingerprint, site, source, source_type, kind, severity, state, title,
                    details, opened_at, last_seen_at, count, event_id)
SELECT gen_random_uuid(), fingerprint, site, source, source_type, kind, severity, 'open',
       title, details, at, last_at, count, event_id
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::jsonb[], $10::timestamptz[], $11::int[], $12::bigint[])
     AS o(last_at, fingerprint, site, source, source_type, kind, severity, title, details, at,
          count, event_id)
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

_HISTORY_MANY = """
INSERT INTO alert_history (alert_id, at, actor, action, comment, details)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                     $6::jsonb[])
"""


async def upsert_alerts(
    conn: Any, occurrences: Sequence[AlertOccurrence]
) -> list[tuple[Alert, bool]]:
    """Open alerts, or fold occurrences into the unresolved ones, in one statement.

    Each fingerprint may appear once (ON CONFLICT cannot touch a row twice). Returns each
    alert with True if this call opened it, in the order of `occurrences`.
    """
    if not occurrences:
        return []
    occ = occurrences
    rows = await conn.fetch(
        _UPSERT, [o.last_at or o.at for o in occ], [o.fingerprint for o in occ],
        [o.site for o in occ], [o.source for o in occ], [o.source_type for o in occ],
        [o.kind for o in occ], [o.severity for o in occ], [o.title for o in occ],
        [o.details for o in occ], [o.at for o in occ], [o.count for o in occ],
        [o.event_id for o in occ],
    )
    by_fingerprint = {r["fingerprint"]: (Alert.from_row(r), bool(r["inserted"])) for r in rows}
    result = [by_fingerprint[o.fingerprint] for o in occ]
    opened = [(alert, o) for (alert, inserted), o in zip(result, occ, strict=True) if inserted]
    if opened:
        await conn.execute(
            _HISTORY_MANY, [a.id for a, _ in opened], [o.at for _, o in opened],
            ["vigie"] * len(opened), ["opened"] * len(opened), [None] * len(opened),
            [{"severity": o.severity, **({"event_id": o.event_id} if o.event_id else {})}
             for _, o in opened],
        )
    return result


async def upsert_alert(conn: Any, occ: AlertOccurrence) -> tuple[Alert, bool]:
    """Open an alert, or fold the occurrence into the unresolved one; True if opened."""
    [result] = await upsert_alerts(conn, [occ])
    return result


async def resolve_fingerprints(
    conn: Any, items: Sequence[tuple[str, datetime, str]], actor: str = "vigie"
) -> list[Alert]:
    """Resolve the unresolved alerts of these fingerprints (sources that recovered).

    `items` are (fingerprint, at, comment), one per fingerprint; fingerprints without an
    unresolved alert are skipped.
    """
    if not items:
        return []
    rows = await conn.fetch(
        f"""UPDATE alerts SET state = 'resolved', resolved_by = $4, resolved_at = r.at
            FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS r(fingerprint, at, comment)
            WHERE alerts.fingerprint = r.fingerprint AND alerts.state <> 'resolved'
            RETURNING {', '.join('alerts.' + c for c in Alert.__slots__)}, r.comment""",
        [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], actor,
    )
    alerts = [Alert.from_row(r) for r in rows]
    if alerts:
        await conn.execute(
            _HISTORY_MANY, [a.id for a in alerts], [a.resolved_at for a in alerts],
            [actor] * len(alerts), ["resolved"] * len(alerts), [r["comment"] for r in rows],
            [{"auto": True}] * len(alerts),
        )
    return alerts


async def resolve_fingerprint(
    conn: Any, fingerprint: str, at: datetime, comment: str, actor: str = "vigie"
) -> Alert | None:
    """Resolve the unresolved alert of a fingerprint, if any."""
    alerts = await resolve_fingerprints(conn, [(fingerprint, at, comment)], actor)
    return alerts[0] if alerts else None


async def attach_snapshot(conn: Any, alert_id: uuid.UUID, ref: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE alerts SET snapshots = snapshots || jsonb_build_array($2::jsonb) WHERE id = $1",
        alert_id, ref)


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
    try:
        return parsed.astimezone(UTC), key
    except OverflowError:
        raise ValueError("malformed cursor") from None


async def list_alerts(
    conn: Any, *, states: list[str] | None, site: str | None, severity: str | None,
    sites: frozenset[str] | None, limit: int, cursor: tuple[datetime, uuid.UUID] | None,
) -> tuple[str, str | None]:
    """A page of alerts, newest first, as a JSON array (text) and the next cursor.

    PostgreSQL writes the JSON: building a hundred alerts in Python costs more than the
    query itself. Keyset pagination on (opened_at, id).
    """
    where = Filters()
    if states:
        where.add("state = ANY({}::text[])", states)
    if site:
        where.add("site = {}", site)
    if severity:
        where.add("severity = {}", severity)
    if sites is not None:
        where.add("site = ANY({}::text[])", sorted(sites))
    if cursor:
        where.add("(opened_at, id) < ({}, {})", *cursor)
    rows = await conn.fetch(
        f"SELECT row_to_json(a)::text AS doc, a.opened_at, a.id FROM "
        f"(SELECT {_COLUMNS} FROM alerts{where.sql} ORDER BY opened_at DESC, id DESC "
        f"LIMIT {where.arg(limit + 1)}) a", *where.args)
    return json_page(rows, limit, lambda r: encode_cursor(r["opened_at"], str(r["id"])))


class Filters:
    """A WHERE clause built from optional filters, with numbered parameters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, template: str, *values: Any) -> None:
        self.clauses.append(template.format(*(self.arg(v) for v in values)))

    @property
    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.clauses) if self.clauses else ""


def json_page(rows: Sequence[Any], limit: int, cursor_of: Any) -> tuple[str, str | None]:
    """Rows carrying a `doc` JSON text (limit + 1 fetched) → (JSON array, next cursor)."""
    items = "[" + ",".join(r["doc"] for r in rows[:limit]) + "]"
    return items, cursor_of(rows[limit - 1]) if len(rows) > limit else None


async def open_counts(conn: Any) -> dict[tuple[str, str], int]:
    """Unresolved alerts by (site, severity), for the metrics."""
    rows = await conn.fetch(
        "SELECT site, severity, count(*) AS n FROM alerts WHERE state <> 'resolved' "
        "GROUP BY site, severity"
    )
    return {(r["site"], r["severity"]): r["n"] for r in rows}
