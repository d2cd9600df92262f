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


# One round trip stores the events and moves each sensor's latest state forward. The events
# are given once per dedup key (the caller folds repeats within a batch).
_INSERT_EVENTS = """
WITH src AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::timestamptz[], $8::timestamptz[], $9::jsonb[],
                         $10::int[])
        AS u(dedup_key, site, sensor, kind, state, zone, ts, received_at, data, battery)
), fresh AS (
    -- The key's own table decides what is new (events is partitioned by time, so it cannot
    -- hold a unique index on the key alone): a concurrent writer of the same key waits for
    -- this transaction, then finds the key taken.
    INSERT INTO event_keys (dedup_key, received_at)
    SELECT dedup_key, received_at FROM src
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING dedup_key
), ins AS (
    INSERT INTO events (dedup_key, site, sensor, kind, state, zone, ts, received_at, data)
    SELECT dedup_key, site, sensor, kind, state, zone, ts, received_at, data
    FROM src JOIN fresh USING (dedup_key)
    RETURNING id, dedup_key
), latest AS (
    -- tamper reports ride along a device's state; they are not its state
    SELECT DISTINCT ON (src.site, src.sensor) src.site, src.sensor, src.state, src.ts,
           src.battery
    FROM src JOIN ins USING (dedup_key)
    WHERE src.kind <> 'tamper'
    ORDER BY src.site, src.sensor, src.ts DESC
), moved AS (
    UPDATE sensors s SET last_state = l.state, last_event_at = l.ts,
                         battery = coalesce(l.battery, s.battery)
    FROM latest l
    WHERE s.site = l.site AND s.id = l.sensor
      AND (s.last_event_at IS NULL OR s.last_event_at <= l.ts)
)
SELECT id, dedup_key FROM ins
"""


async def insert_events(conn: Any, events: Sequence[SensorEvent]) -> dict[str, int]:
    """Store new events and the sensors' latest states; return {dedup_key: id} of the
    events that were new (a key already stored is a redelivery)."""
    if not events:
        return {}
    rows = await conn.fetch(
        _INSERT_EVENTS,
        [e.dedup_key for e in events], [e.site for e in events], [e.sensor for e in events],
        [e.kind for e in events], [e.state for e in events], [e.zone for e in events],
        [e.ts for e in events], [e.received_at for e in events], [e.data for e in events],
        [e.battery for e in events],
    )
    return {r["dedup_key"]: r["id"] for r in rows}


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
