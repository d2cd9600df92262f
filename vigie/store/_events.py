"""Sensor events and dead letters: batched writes, filtered reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vigie.events import SensorEvent
from vigie.store._alerts import Filters, encode_cursor, json_page

__all__ = [
    "DeadLetter",
    "insert_dead_letters",
    "insert_events",
    "list_dead_letters",
    "list_events",
    "update_sensor_states",
]

# Enough to see what a device sent, bounded so a hostile payload cannot fill the disk.
DEAD_LETTER_KEEP = 4096


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: datetime
    topic: str
    reason: str
    detail: str
    payload: bytes


_INSERT_EVENTS = """
INSERT INTO events (dedup_key, site, sensor, kind, state, zone, ts, received_at, data)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::jsonb[])
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, dedup_key
"""


async def insert_events(conn: Any, events: Sequence[SensorEvent]) -> dict[str, int]:
    """Insert in one round trip; return {dedup_key: id} of the events that were new."""
    if not events:
        return {}
    rows = await conn.fetch(
        _INSERT_EVENTS,
        [e.dedup_key for e in events], [e.site for e in events], [e.sensor for e in events],
        [e.kind for e in events], [e.state for e in events], [e.zone for e in events],
        [e.ts for e in events], [e.received_at for e in events], [e.data for e in events],
    )
    return {r["dedup_key"]: r["id"] for r in rows}


async def update_sensor_states(conn: Any, events: Sequence[SensorEvent]) -> None:
    """Remember each sensor's latest state (one row per sensor, newest event wins)."""
    latest: dict[tuple[str, str], SensorEvent] = {}
    for e in events:
        key = (e.site, e.sensor)
        if e.kind != "tamper" and (key not in latest or e.ts >= latest[key].ts):
            latest[key] = e
    if not latest:
        return
    values = list(latest.values())
    await conn.execute(
        """UPDATE sensors s SET last_state = v.state, last_event_at = v.ts,
                  battery = coalesce(v.battery, s.battery)
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int[])
                AS v(site, id, state, ts, battery)
           WHERE s.site = v.site AND s.id = v.id
             AND (s.last_event_at IS NULL OR s.last_event_at <= v.ts)""",
        [e.site for e in values], [e.sensor for e in values], [e.state for e in values],
        [e.ts for e in values], [e.battery for e in values],
    )


async def insert_dead_letters(conn: Any, letters: Sequence[DeadLetter]) -> None:
    if not letters:
        return
    await conn.executemany(
        "INSERT INTO dead_letters (received_at, topic, reason, detail, payload, payload_size) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [(d.received_at, d.topic[:512], d.reason, d.detail, d.payload[:DEAD_LETTER_KEEP],
          len(d.payload)) for d in letters],
    )


async def list_dead_letters(conn: Any, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, received_at, topic, reason, detail, payload_size FROM dead_letters "
        "ORDER BY received_at DESC, id DESC LIMIT $1", limit,
    )
    return [{**dict(r), "received_at": r["received_at"].isoformat()} for r in rows]


async def list_events(
    conn: Any, *, site: str | None, sensor: str | None, kind: str | None,
    since: datetime | None, until: datetime | None, sites: frozenset[str] | None,
    limit: int, cursor: tuple[datetime, int] | None,
) -> tuple[str, str | None]:
    """A page of events, newest first, as a JSON array (text) and the next cursor."""
    where = Filters()
    for column, value in (("site", site), ("sensor", sensor), ("kind", kind)):
        if value:
            where.add(f"{column} = {{}}", value)
    if since:
        where.add("ts >= {}", since)
    if until:
        where.add("ts < {}", until)
    if sites is not None:
        where.add("site = ANY({}::text[])", sorted(sites))
    if cursor:
        where.add("(ts, id) < ({}, {})", *cursor)
    rows = await conn.fetch(
        "SELECT row_to_json(e)::text AS doc, e.ts, e.id FROM "
        "(SELECT id, site, sensor, kind, state, zone, ts, received_at, data FROM events"
        f"{where.sql} ORDER BY ts DESC, id DESC LIMIT {where.arg(limit + 1)}) e", *where.args)
    return json_page(rows, limit, lambda r: encode_cursor(r["ts"], str(r["id"])))
