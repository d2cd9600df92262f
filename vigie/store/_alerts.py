"""Alerts and their history in PostgreSQL.

One unresolved alert per fingerprint is guaranteed by a partial unique index, so the upsert
below folds a repeat into `count` even when several nodes raise the same alert at once.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vigie.errors import Conflict, NotFound

__all__ = [
    "RESOLUTIONS",
    "Alert",
    "AlertOccurrence",
    "Escalation",
    "Filters",
    "HistoryEntry",
    "acknowledge",
    "add_comment",
    "assign",
    "attach_snapshot",
    "decode_cursor",
    "encode_cursor",
    "get_alert",
    "history",
    "json_page",
    "list_alerts",
    "may_take",
    "occurrence_id",
    "open_counts",
    "resolve",
    "resolve_fingerprint",
    "resolve_fingerprints",
    "unacknowledge",
    "upsert_alert",
    "upsert_alerts",
]

SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "info": 3}
# What an operator says an alert was, when resolving it; 'auto' is vigie's own (the source
# recovered by itself).
RESOLUTIONS = ("real_incident", "false_alarm", "technical_fault", "test")


@dataclass(frozen=True, slots=True)
class Escalation:
    """Not acknowledged `after` being opened: escalate; then every `repeat`, `max` times in
    all (once without `repeat`)."""

    after: timedelta
    repeat: timedelta | None = None
    max: int = 1

    @property
    def steps(self) -> int:
        return self.max if self.repeat is not None else 1


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
    escalation: Escalation | None = None
    # The id of the alert it opens, if it opens one (`occurrence_id`); None: a random one.
    id: uuid.UUID | None = None

    @property
    def fingerprint(self) -> str:
        return f"{self.site}/{self.source}/{self.kind}"


_OCCURRENCE_IDS = uuid.UUID("3f0a8e4c-5b7d-4c1e-9a2f-76696769650a")


def occurrence_id(fingerprint: str, origin: str) -> uuid.UUID:
    """The id of the alert an occurrence opens, from what raised it (an event's dedup key, a
    status's reception): the alert announced from memory while the database is away gets
    the same id when its event is replayed and stored, so clients can act on the id they
    were shown."""
    return uuid.uuid5(_OCCURRENCE_IDS, f"{fingerprint}|{origin}")


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
    next_escalation_at: datetime | None
    escalated_at: datetime | None
    assigned_to: str | None
    assigned_at: datetime | None
    resolution: str | None

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
            "next_escalation_at": iso(self.next_escalation_at),
            "escalated_at": iso(self.escalated_at), "assigned_to": self.assigned_to,
            "assigned_at": iso(self.assigned_at), "resolution": self.resolution,
        }


_COLUMNS = ", ".join(Alert.__slots__)
COLUMNS = _COLUMNS  # for the statements of other modules that return alerts
UNRESOLVED = f"SELECT {_COLUMNS} FROM alerts WHERE state <> 'resolved'"
# Alerts written (any state) by transactions at or above $1, a snapshot's xmin (migration
# 0012 says why that misses nothing).
CHANGED_SINCE = f"SELECT {_COLUMNS} FROM alerts WHERE changed_xid >= $1::text::xid8"
# Transaction ids as bigint (xid8 is 64 bits, epoch included, and never wraps around).
SNAPSHOT_XMIN = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def silence_matches(alert: str, at: str) -> str:
    """SQL: a silence active at `at` matches the alert (table alias or row) `alert`."""
    return (f"EXISTS (SELECT 1 FROM silences s WHERE s.ends_at > {at} AND s.starts_at <= {at}"
            f" AND {alert}.site LIKE s.site_like AND {alert}.source LIKE s.source_like"
            f" AND {alert}.kind LIKE s.kind_like"
            f" AND s.source_type IN ('*', {alert}.source_type))")


# An alert raised while a matching silence is active is stored silenced: active when it
# happened (an event replayed later still belongs to its maintenance window) or now, when
# it is raised (a device whose clock is behind still falls in the window it is sent in).
# Its escalation counts from when it is raised: nobody could acknowledge an event stored
# late (replayed after an outage) before it was there to be seen.
# A repeat changes neither its silence nor its escalation, except that an alert without an
# escalation policy takes the repeat's (a door opened by day, info, then again at night,
# critical).
_UPSERT = f"""
INSERT INTO alerts (id, fingerprint, site, source, source_type, kind, severity, state, title,
                    details, opened_at, last_seen_at, count, event_id, escalate_after,
                    escalate_repeat, escalate_max, escalations_left, next_escalation_at,
                    silenced)
SELECT CASE WHEN o.id IS NULL OR EXISTS (SELECT 1 FROM alerts a WHERE a.id = o.id)
            THEN gen_random_uuid() ELSE o.id END,
       fingerprint, site, source, source_type, kind, severity, 'open',
       title, details, at, last_at, count, event_id, esc_after, esc_repeat, esc_max, esc_max,
       greatest(at, $16::timestamptz) + esc_after,
       {silence_matches("o", "o.at")} OR {silence_matches("o", "coalesce($16::timestamptz, o.at)")}
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::jsonb[], $10::timestamptz[], $11::int[], $12::bigint[],
            $13::interval[], $14::interval[], $15::int[], $17::uuid[])
     AS o(last_at, fingerprint, site, source, source_type, kind, severity, title, details, at,
          count, event_id, esc_after, esc_repeat, esc_max, id)
ON CONFLICT (fingerprint) WHERE state <> 'resolved' DO UPDATE SET
    count = alerts.count + EXCLUDED.count,
    last_seen_at = greatest(alerts.last_seen_at, EXCLUDED.last_seen_at),
    -- a repeat may be graver (the same door, now at night): keep the gravest severity
    severity = CASE WHEN array_position(ARRAY['critical','major','minor','info'], EXCLUDED.severity)
                       < array_position(ARRAY['critical','major','minor','info'], alerts.severity)
                    THEN EXCLUDED.severity ELSE alerts.severity END,
    escalate_after = coalesce(alerts.escalate_after, EXCLUDED.escalate_after),
    escalate_repeat = CASE WHEN alerts.escalate_after IS NULL THEN EXCLUDED.escalate_repeat
                           ELSE alerts.escalate_repeat END,
    escalate_max = CASE WHEN alerts.escalate_after IS NULL THEN EXCLUDED.escalate_max
                        ELSE alerts.escalate_max END,
    escalations_left = CASE WHEN alerts.escalate_after IS NULL THEN EXCLUDED.escalations_left
                            ELSE alerts.escalations_left END,
    next_escalation_at = CASE WHEN alerts.escalate_after IS NULL AND alerts.state = 'open'
                              THEN EXCLUDED.next_escalation_at
                              ELSE alerts.next_escalation_at END
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
    conn: Any, occurrences: Sequence[AlertOccurrence], now: datetime | None = None
) -> list[tuple[Alert, bool]]:
    """Open alerts, or fold occurrences into the unresolved ones, in one statement; `now` is
    when they are raised (for silences; default: each occurrence's time).

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
        [o.escalation.after if o.escalation else None for o in occ],
        [o.escalation.repeat if o.escalation else None for o in occ],
        [o.escalation.steps if o.escalation else 0 for o in occ], now,
        [o.id for o in occ],
    )
    by_fingerprint = {r["fingerprint"]: (Alert.from_row(r), bool(r["inserted"])) for r in rows}
    result = [by_fingerprint[o.fingerprint] for o in occ]
    opened = [(alert, o) for (alert, inserted), o in zip(result, occ, strict=True) if inserted]
    if opened:
        await conn.execute(
            _HISTORY_MANY, [a.id for a, _ in opened], [o.at for _, o in opened],
            ["vigie"] * len(opened), ["opened"] * len(opened), [None] * len(opened),
            [{"severity": o.severity, **({"event_id": o.event_id} if o.event_id else {}),
              **({"silenced": True} if a.silenced else {})}
             for a, o in opened],
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
        f"""UPDATE alerts SET state = 'resolved', resolved_by = $4, resolved_at = r.at,
                   resolution = 'auto', next_escalation_at = NULL
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


async def _lock(conn: Any, alert_id: uuid.UUID, action: str, allowed_from: tuple[str, ...]
                ) -> Any:
    """The alert's row, locked for this transaction; 404 or 409 if it cannot take `action`."""
    row = await conn.fetchrow(
        "SELECT state, acknowledged_by, assigned_to FROM alerts WHERE id = $1 FOR UPDATE",
        alert_id)
    if row is None:
        raise NotFound(f"alert {alert_id} not found")
    if row["state"] not in allowed_from:
        raise Conflict(f"alert {alert_id} is {row['state']}: cannot {action}")
    return row


async def _change(conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, action: str,
                  comment: str | None, details: dict[str, Any], assignments: str,
                  *args: Any) -> Alert:
    """Update the alert (`assignments` may use v.actor, v.at, then $4, $5… for `args`) and
    add the history entry."""
    row = await conn.fetchrow(
        f"UPDATE alerts SET {assignments} FROM (SELECT $2::text AS actor, $3::timestamptz AS at)"
        f" AS v WHERE id = $1 RETURNING {_COLUMNS}", alert_id, actor, at, *args)
    await conn.execute(_HISTORY, alert_id, at, actor, action, comment, details)
    return Alert.from_row(row)


async def acknowledge(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, comment: str | None
) -> Alert:
    await _lock(conn, alert_id, "acknowledge", ("open",))
    # Someone has it: no more escalation (until an un-acknowledge).
    return await _change(conn, alert_id, actor, at, "acknowledged", comment, {},
                         "state = 'acknowledged', acknowledged_by = v.actor, "
                         "acknowledged_at = v.at, next_escalation_at = NULL")


async def unacknowledge(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, comment: str | None
) -> Alert:
    """Back to open: nobody has it any more, so its escalation starts again from now."""
    row = await _lock(conn, alert_id, "un-acknowledge", ("acknowledged",))
    return await _change(
        conn, alert_id, actor, at, "unacknowledged", comment,
        {"acknowledged_by": row["acknowledged_by"]},
        "state = 'open', acknowledged_by = NULL, acknowledged_at = NULL, "
        "escalations_left = escalate_max, "
        "next_escalation_at = CASE WHEN escalate_after IS NOT NULL AND escalate_max > 0 "
        "AND NOT silenced THEN v.at + escalate_after END")


async def resolve(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, comment: str | None,
    resolution: str | None = None,
) -> Alert:
    await _lock(conn, alert_id, "resolve", ("open", "acknowledged"))
    return await _change(
        conn, alert_id, actor, at, "resolved", comment,
        {"resolution": resolution} if resolution else {},
        "state = 'resolved', resolved_by = v.actor, resolved_at = v.at, resolution = $4, "
        "next_escalation_at = NULL", resolution)


async def assign(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, assignee: str | None,
    comment: str | None,
) -> Alert:
    """Give the alert to an operator (None: to nobody). Escalation goes on until someone
    acknowledges it: being assigned is not being handled."""
    row = await _lock(conn, alert_id, "assign", ("open", "acknowledged"))
    return await _change(
        conn, alert_id, actor, at, "assigned", comment,
        {"assignee": assignee, "previous": row["assigned_to"]},
        "assigned_to = $4::text, assigned_at = CASE WHEN $4::text IS NULL THEN NULL ELSE v.at END",
        assignee)


async def add_comment(
    conn: Any, alert_id: uuid.UUID, actor: str, at: datetime, comment: str
) -> Alert:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM alerts WHERE id = $1", alert_id)
    if row is None:
        raise NotFound(f"alert {alert_id} not found")
    await conn.execute(_HISTORY, alert_id, at, actor, "commented", comment, {})
    return Alert.from_row(row)


async def may_take(conn: Any, name: str, site: str, now: datetime) -> bool:
    """Whether `name` is an active operator (or admin) token that sees `site`: the people an
    alert can be assigned to."""
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM api_tokens
                          WHERE name = $1 AND revoked_at IS NULL
                            AND (expires_at IS NULL OR expires_at > $3)
                            AND role IN ('admin', 'operator')
                            AND (sites IS NULL OR $2 = ANY(sites)))""", name, site, now))


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
    silenced: bool | None = None,
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
    if silenced is not None:
        where.add("silenced = {}", silenced)
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


_OPEN_CAMERA_ALERTS = """
SELECT site || '/' || source AS camera, kind FROM alerts
WHERE source_type = 'camera' AND state <> 'resolved'
  AND site || '/' || source = ANY($1::text[])
"""


async def open_camera_reasons(conn: Any, cameras: Collection[str],
                              reasons: Collection[str]) -> dict[str, set[str]]:
    """Unresolved camera health alerts by camera key (site/camera): the health a node that
    starts judging a camera resumes from."""
    found: dict[str, set[str]] = {}
    if not cameras:
        return found
    for r in await conn.fetch(_OPEN_CAMERA_ALERTS, list(cameras)):
        if r["kind"] in reasons:
            found.setdefault(r["camera"], set()).add(r["kind"])
    return found
