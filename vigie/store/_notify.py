"""Notifiers' progress through the feed, their dead letters, and the alerts they re-send.

The cursor and the queued resends are read and written on the connection that holds the
notifier's advisory lock: a node that lost it (its connection gone) cannot move the cursor
or send a queued dead letter any more. The API only queues resends (`queue_retry`).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from vigie.store._alerts import COLUMNS, Alert

__all__ = [
    "RETRY_BATCH",
    "RETRY_CHANNEL",
    "FeedRow",
    "active_alerts",
    "add_dead_letter",
    "alert_now",
    "alerts_by_id",
    "dead_letters",
    "delete_dead_letter",
    "feed_after",
    "get_dead_letter",
    "list_dead_letters",
    "next_queued_retry",
    "notifier_progress",
    "queue_retries_of",
    "queue_retry",
    "retry_delivered",
    "retry_failed",
    "save_cursor",
    "start_cursor",
    "trimmed_through",
    "unqueue_retries",
]

FeedRow = Any  # an asyncpg Record: seq, type, at, site, payload (JSON text)

_ALERT_DOC = "row_to_json(a)::text AS doc"
_ALERT_JSONB = ("details", "snapshots")  # the alerts table's jsonb columns
# Wakes the lock holder of a notifier when a resend is queued (payload: the notifier).
RETRY_CHANNEL = "vigie_notify_retry"
RETRY_BATCH = 100  # dead letters queued by one bulk request: a bounded burst on a receiver
_LETTER = """id, notifier, seq, type, alert_id::text AS alert_id, site, attempts, error,
              payload::text AS payload, failed_at, retry_requested_at, retry_requested_by,
              retries"""


def _letter(row: Any) -> dict[str, Any]:
    return {**dict(row), "payload": orjson.loads(row["payload"])}


def _scope(sites: Collection[str] | None) -> list[str] | None:
    return list(sites) if sites is not None else None


async def start_cursor(conn: Any, notifier: str) -> int:
    """The notifier's cursor; a new notifier starts at the current end of the feed (it is
    not sent the history from before it was configured)."""
    await conn.execute(
        """INSERT INTO notify_cursors (notifier, seq)
           SELECT $1, greatest(trimmed_through, (SELECT coalesce(max(seq), 0) FROM feed))
           FROM feed_horizon
           ON CONFLICT (notifier) DO NOTHING""", notifier)
    return int(await conn.fetchval(
        "SELECT seq FROM notify_cursors WHERE notifier = $1", notifier))


async def save_cursor(conn: Any, notifier: str, seq: int) -> None:
    await conn.execute(
        "UPDATE notify_cursors SET seq = $2, updated_at = now() WHERE notifier = $1",
        notifier, seq)


async def trimmed_through(conn: Any) -> int:
    return int(await conn.fetchval("SELECT trimmed_through FROM feed_horizon"))


async def feed_after(conn: Any, seq: int, limit: int) -> tuple[list[FeedRow], int]:
    """Up to `limit` alert changes after `seq`, in order, and the newest seq of the feed
    seen in the same snapshot: with fewer than `limit` rows, everything up to it was read
    (seq order is commit order), camera changes included."""
    result = await conn.fetch(
        """WITH head AS (SELECT coalesce(max(seq), 0) AS head FROM feed)
           SELECT f.seq, f.type, f.at, f.site, f.payload, head.head FROM head
           LEFT JOIN LATERAL (
               SELECT seq, type, at, site, payload::text AS payload FROM feed
               WHERE seq > $1 AND type LIKE 'alert.%' ORDER BY seq LIMIT $2) f ON true
           ORDER BY f.seq""", seq, limit)
    return [r for r in result if r["seq"] is not None], int(result[0]["head"])


async def add_dead_letter(conn: Any, notifier: str, seq: int, type_: str,
                          alert_id: str | None, site: str, attempts: int, error: str,
                          payload: Any) -> None:
    await conn.execute(
        """INSERT INTO notify_dead_letters
               (notifier, seq, type, alert_id, site, attempts, error, payload)
           VALUES ($1, $2, $3, $4::uuid, $5, $6, $7, $8::jsonb)""",
        notifier, seq, type_, alert_id, site, attempts, error,
        orjson.dumps(payload).decode())


async def dead_letters(conn: Any, notifier: str | None = None, limit: int = 100
                       ) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, notifier, seq, type, alert_id, site, attempts, error,
                  payload::text AS payload, failed_at
           FROM notify_dead_letters WHERE $1::text IS NULL OR notifier = $1
           ORDER BY id DESC LIMIT $2""", notifier, limit)
    return [{**dict(r), "payload": orjson.loads(r["payload"])} for r in rows]


async def active_alerts(conn: Any, sites: Sequence[str] | None, severities: Sequence[str]
                        ) -> list[dict[str, Any]]:
    """Unresolved alerts of these sites (None: all) and severities, as JSON (the caller
    reads `silenced` from it, like from the feed)."""
    rows = await conn.fetch(
        f"""SELECT {_ALERT_DOC} FROM alerts a
            WHERE state <> 'resolved' AND severity = ANY($2::text[])
              AND ($1::text[] IS NULL OR site = ANY($1::text[]))
            ORDER BY opened_at""",
        list(sites) if sites is not None else None, list(severities))
    return [orjson.loads(r["doc"]) for r in rows]


async def alerts_by_id(conn: Any, ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {_ALERT_DOC} FROM alerts a WHERE id = ANY($1::uuid[])", list(ids))
    return [orjson.loads(r["doc"]) for r in rows]


async def alert_now(conn: Any, alert_id: str) -> dict[str, Any] | None:
    """An alert as the API shows it and the feed carries it; None if it was purged."""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM alerts WHERE id = $1",
                              uuid.UUID(alert_id))
    if row is None:
        return None
    fields = dict(row)
    # A notifier's own connection has no jsonb codec (its statements pass JSON text).
    for name in _ALERT_JSONB:
        if isinstance(fields[name], str):
            fields[name] = orjson.loads(fields[name])
    return Alert.from_row(fields).to_json()


async def notifier_progress(conn: Any) -> dict[str, dict[str, Any]]:
    """Per notifier that has run: its cursor, the feed's newest alert change after it,
    and its dead letters (count, newest, how many are queued for a resend)."""
    rows = await conn.fetch(
        """SELECT c.notifier, c.seq, c.updated_at,
                  (SELECT count(*) FROM feed f
                   WHERE f.seq > c.seq AND f.type LIKE 'alert.%') AS behind,
                  d.dead_letters, d.last_failed_at, d.retries_queued
           FROM notify_cursors c
           LEFT JOIN LATERAL (
               SELECT count(*) AS dead_letters, max(failed_at) AS last_failed_at,
                      count(*) FILTER (WHERE retry_requested_at IS NOT NULL)
                          AS retries_queued
               FROM notify_dead_letters WHERE notifier = c.notifier) d ON true""")
    return {r["notifier"]: dict(r) for r in rows}


async def list_dead_letters(conn: Any, notifier: str | None, sites: Collection[str] | None,
                            limit: int, before: int | None) -> list[dict[str, Any]]:
    """Dead letters newest first, of the given sites (None: all), from before id `before`."""
    rows = await conn.fetch(
        f"""SELECT {_LETTER}
           FROM notify_dead_letters
           WHERE ($1::text IS NULL OR notifier = $1)
             AND ($2::text[] IS NULL OR site = ANY($2::text[]))
             AND ($3::bigint IS NULL OR id < $3)
           ORDER BY id DESC LIMIT $4""",
        notifier, _scope(sites), before, limit)
    return [_letter(r) for r in rows]


async def delete_dead_letter(conn: Any, letter: int, sites: Collection[str] | None
                             ) -> str | None:
    """Dismiss a dead letter (dealt with by hand); its site, or None if there is none."""
    site = await conn.fetchval(
        """DELETE FROM notify_dead_letters
           WHERE id = $1 AND ($2::text[] IS NULL OR site = ANY($2::text[]))
           RETURNING site""", letter, _scope(sites))
    return str(site) if site is not None else None


async def get_dead_letter(conn: Any, letter: int, sites: Collection[str] | None
                          ) -> dict[str, Any] | None:
    """One dead letter of the given sites (None: all); None if there is none."""
    row = await conn.fetchrow(
        f"""SELECT {_LETTER} FROM notify_dead_letters
            WHERE id = $1 AND ($2::text[] IS NULL OR site = ANY($2::text[]))""",
        letter, _scope(sites))
    return _letter(row) if row is not None else None


async def queue_retry(conn: Any, letter: int, by: str) -> dict[str, Any] | None:
    """Queue a dead letter for a resend by its notifier's lock holder, and wake it; the
    letter as it now stands, or None if it was dismissed meanwhile."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE notify_dead_letters
                SET retry_requested_at = now(), retry_requested_by = $2
                WHERE id = $1 RETURNING {_LETTER}""", letter, by)
        if row is not None:  # NOTIFY is sent at commit, when the row is there to read
            await conn.execute("SELECT pg_notify($1, $2)", RETRY_CHANNEL, row["notifier"])
    return _letter(row) if row is not None else None


async def queue_retries_of(conn: Any, notifier: str, site: str | None,
                           sites: Collection[str] | None, by: str) -> tuple[int, int]:
    """Queue the oldest `RETRY_BATCH` dead letters of a notifier not queued yet (of `site`,
    and of the given sites; None: all): how many were queued, and how many are left."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """WITH matching AS (
                   SELECT id, seq FROM notify_dead_letters
                   WHERE notifier = $1 AND retry_requested_at IS NULL
                     AND ($2::text IS NULL OR site = $2)
                     AND ($3::text[] IS NULL OR site = ANY($3::text[]))
                   FOR UPDATE),
               queued AS (
                   UPDATE notify_dead_letters d
                   SET retry_requested_at = now(), retry_requested_by = $5
                   WHERE d.id IN (SELECT id FROM matching ORDER BY seq, id LIMIT $4)
                   RETURNING d.id)
               SELECT (SELECT count(*) FROM queued) AS queued,
                      (SELECT count(*) FROM matching) AS matching""",
            notifier, site, _scope(sites), RETRY_BATCH, by)
        queued, matching = int(row["queued"]), int(row["matching"])
        if queued:
            await conn.execute("SELECT pg_notify($1, $2)", RETRY_CHANNEL, notifier)
    return queued, matching - queued


async def next_queued_retry(conn: Any, notifier: str) -> dict[str, Any] | None:
    """The notifier's oldest dead letter queued for a resend (feed order), if any."""
    row = await conn.fetchrow(
        f"""SELECT {_LETTER} FROM notify_dead_letters
            WHERE notifier = $1 AND retry_requested_at IS NOT NULL
            ORDER BY seq, id LIMIT 1""", notifier)
    return _letter(row) if row is not None else None


async def retry_delivered(conn: Any, letter: int) -> None:
    """Sent at last: nothing left for anyone to do, so it leaves the dead letters."""
    await conn.execute("DELETE FROM notify_dead_letters WHERE id = $1", letter)


async def retry_failed(conn: Any, letter: int, requested_at: Any, attempts: int, error: str,
                       payload: Any) -> None:
    """Failed again: a dead letter still, with the attempts added up and the last error.
    A resend asked for again while this one was being sent stays queued."""
    await conn.execute(
        """UPDATE notify_dead_letters
           SET attempts = attempts + $3, error = $4, payload = $5::jsonb, failed_at = now(),
               retries = retries + 1,
               retry_requested_by = CASE WHEN retry_requested_at = $2
                                         THEN NULL ELSE retry_requested_by END,
               retry_requested_at = CASE WHEN retry_requested_at = $2
                                         THEN NULL ELSE retry_requested_at END
           WHERE id = $1""",
        letter, requested_at, attempts, error, orjson.dumps(payload).decode())


async def unqueue_retries(conn: Any, notifier: str) -> int:
    """Leave the notifier's queued resends as plain dead letters: how many there were."""
    result = await conn.execute(
        """UPDATE notify_dead_letters SET retry_requested_at = NULL, retry_requested_by = NULL
           WHERE notifier = $1 AND retry_requested_at IS NOT NULL""", notifier)
    return int(result.split()[-1])
