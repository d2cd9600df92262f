"""Silences (maintenance windows) and the sweep that keeps alerts' `silenced` flag true to
them.

An unresolved alert is silenced while an active silence matches it: the flag is set when
the alert is raised during a silence, when a silence starts (or is created) over an alert
already open, and cleared when no active silence matches it any more (the silence ended or
was deleted), so an alert still open after the maintenance surfaces again. Resolved alerts
keep the flag they had, for the record.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vigie.errors import Conflict, NotFound
from vigie.store._alerts import (
    _HISTORY_MANY,
    Alert,
    Filters,
    encode_cursor,
    silence_matches,
)

__all__ = [
    "SILENCE_STATES",
    "Matchers",
    "Silence",
    "create_silence",
    "current_silences",
    "end_silence",
    "get_silence",
    "list_silences",
    "sweep",
]

SILENCE_STATES = ("pending", "active", "expired")


@dataclass(frozen=True, slots=True)
class Matchers:
    """Exact values or globs with `*`; `*` alone matches anything."""

    site: str = "*"
    source: str = "*"
    kind: str = "*"
    source_type: str = "*"  # camera, sensor, site or *

    def to_json(self) -> dict[str, str]:
        return {"site": self.site, "source": self.source, "kind": self.kind,
                "source_type": self.source_type}

    def matches(self, site: str, source: str, kind: str, source_type: str) -> bool:
        """What `silence_matches` says in SQL, in memory (alerts decided while the
        database is away)."""
        return (self.source_type in ("*", source_type) and _glob(self.site).fullmatch(site)
                is not None and _glob(self.source).fullmatch(source) is not None
                and _glob(self.kind).fullmatch(kind) is not None)


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """`*` is the only wildcard (the SQL side escapes LIKE's `%` and `_`)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Silence:
    id: uuid.UUID
    matchers: Matchers
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str
    created_at: datetime
    ended_by: str | None
    ended_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Silence:
        return cls(row["id"], Matchers(row["site"], row["source"], row["kind"],
                                       row["source_type"]),
                   row["starts_at"], row["ends_at"], row["comment"], row["created_by"],
                   row["created_at"], row["ended_by"], row["ended_at"])

    def active(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at

    def state(self, now: datetime) -> str:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {"id": str(self.id), "matchers": self.matchers.to_json(),
                "starts_at": self.starts_at.isoformat(), "ends_at": self.ends_at.isoformat(),
                "comment": self.comment, "created_by": self.created_by,
                "created_at": self.created_at.isoformat(), "ended_by": self.ended_by,
                "ended_at": self.ended_at.isoformat() if self.ended_at else None,
                "state": self.state(now)}


_COLUMNS = ("id, site, source, kind, source_type, starts_at, ends_at, comment, created_by, "
            "created_at, ended_by, ended_at")
# A token limited to some sites sees the silences that can match one of them.
_VISIBLE = "EXISTS (SELECT 1 FROM unnest({}::text[]) AS mine(site) WHERE mine.site LIKE site_like)"


async def create_silence(conn: Any, matchers: Matchers, starts_at: datetime, ends_at: datetime,
                         comment: str, created_by: str, now: datetime) -> Silence:
    row = await conn.fetchrow(
        f"""INSERT INTO silences (id, site, source, kind, source_type, starts_at, ends_at,
                                  comment, created_by, created_at)
            VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, $8, $9)
            RETURNING {_COLUMNS}""",
        matchers.site, matchers.source, matchers.kind, matchers.source_type, starts_at,
        ends_at, comment, created_by, now)
    return Silence.from_row(row)


async def current_silences(conn: Any, now: datetime) -> list[Silence]:
    """Silences not over yet (active or pending): what the node keeps in memory."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM silences WHERE ends_at > $1", now)
    return [Silence.from_row(r) for r in rows]


async def get_silence(conn: Any, silence_id: uuid.UUID, sites: frozenset[str] | None,
                      *, lock: bool = False) -> Silence:
    where = Filters()
    where.add("id = {}", silence_id)
    if sites is not None:
        where.add(_VISIBLE, sorted(sites))
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM silences{where.sql}"
                              + (" FOR UPDATE" if lock else ""), *where.args)
    if row is None:
        raise NotFound(f"silence {silence_id} not found")
    return Silence.from_row(row)


async def end_silence(conn: Any, silence_id: uuid.UUID, sites: frozenset[str] | None,
                      actor: str, now: datetime) -> Silence:
    """End a silence now (a pending one never starts). Its row stays, for the record."""
    silence = await get_silence(conn, silence_id, sites, lock=True)
    if silence.ends_at <= now:
        raise Conflict(f"silence {silence_id} has already ended")
    row = await conn.fetchrow(
        f"""UPDATE silences SET ends_at = greatest(starts_at, $2), ended_by = $3, ended_at = $2
            WHERE id = $1 RETURNING {_COLUMNS}""", silence_id, now, actor)
    return Silence.from_row(row)


async def list_silences(
    conn: Any, *, now: datetime, states: Sequence[str], site: str | None,
    sites: frozenset[str] | None, limit: int, cursor: tuple[datetime, uuid.UUID] | None,
) -> tuple[list[Silence], str | None]:
    """Newest first (by creation); `site` keeps the silences that can match that site."""
    where = Filters()
    wanted = []
    if "pending" in states:
        wanted.append(f"starts_at > {where.arg(now)}")
    if "active" in states:
        at = where.arg(now)
        wanted.append(f"(starts_at <= {at} AND ends_at > {at})")
    if "expired" in states:
        wanted.append(f"ends_at <= {where.arg(now)}")
    where.clauses.append("(" + " OR ".join(wanted or ["false"]) + ")")
    if site is not None:
        where.add("{} LIKE site_like", site)
    if sites is not None:
        where.add(_VISIBLE, sorted(sites))
    if cursor is not None:
        where.add("(created_at, id) < ({}, {})", *cursor)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM silences{where.sql} ORDER BY created_at DESC, id DESC "
        f"LIMIT {where.arg(limit + 1)}", *where.args)
    items = [Silence.from_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    return items, encode_cursor(items[-1].created_at, str(items[-1].id)) if more else None


_A_COLUMNS = ", ".join("a." + c for c in Alert.__slots__)
_ANY_ACTIVE = "SELECT EXISTS (SELECT 1 FROM silences WHERE ends_at > $1 AND starts_at <= $1)"
# Rows another transaction holds (an ingest batch, another node's sweep) are skipped: the
# next sweep gets them, and whoever committed first made the change once.
_SILENCE = f"""
WITH due AS (
    SELECT id FROM alerts a
    WHERE a.state <> 'resolved' AND NOT a.silenced AND {silence_matches("a", "$1")}
    FOR UPDATE OF a SKIP LOCKED)
UPDATE alerts a SET silenced = true, next_escalation_at = NULL
FROM due WHERE a.id = due.id
RETURNING {_A_COLUMNS},
    (SELECT array_agg(s.id::text ORDER BY s.created_at) FROM silences s
     WHERE s.ends_at > $1 AND s.starts_at <= $1 AND a.site LIKE s.site_like
       AND a.source LIKE s.source_like AND a.kind LIKE s.kind_like
       AND s.source_type IN ('*', a.source_type)) AS silence_ids
"""
# Out of its silence, an alert is news again: its escalation starts over from now.
_UNSILENCE = f"""
WITH due AS (
    SELECT id FROM alerts a
    WHERE a.silenced AND a.state <> 'resolved' AND NOT {silence_matches("a", "$1")}
      -- silenced as part of a site-level alert (vigie/alerts/_storms.py): released by it
      AND NOT a.details ? 'grouped_by'
    FOR UPDATE OF a SKIP LOCKED)
UPDATE alerts a SET silenced = false, escalations_left = a.escalate_max,
    next_escalation_at = CASE WHEN a.state = 'open' AND a.escalate_after IS NOT NULL
                                   AND a.escalate_max > 0
                              THEN $1 + a.escalate_after END
FROM due WHERE a.id = due.id
RETURNING {_A_COLUMNS}
"""


async def sweep(conn: Any, now: datetime, actor: str = "vigie") -> list[tuple[str, Alert]]:
    """Silence the unresolved alerts an active silence matches, un-silence those no active
    silence matches any more; return ("silenced" | "unsilenced", alert) pairs. Run it in a
    transaction: the history entries go with the changes."""
    changes: list[tuple[str, Alert]] = []
    history: list[tuple[Alert, str, dict[str, Any]]] = []
    def oldest_first(rows: list[Any]) -> list[Any]:
        return sorted(rows, key=lambda r: (r["opened_at"], r["id"]))

    if await conn.fetchval(_ANY_ACTIVE, now):
        for row in oldest_first(await conn.fetch(_SILENCE, now)):
            alert = Alert.from_row(row)
            changes.append(("silenced", alert))
            history.append((alert, "silenced", {"silences": row["silence_ids"] or []}))
    for row in oldest_first(await conn.fetch(_UNSILENCE, now)):
        alert = Alert.from_row(row)
        changes.append(("unsilenced", alert))
        history.append((alert, "unsilenced", {"reason": "no active silence matches"}))
    if history:
        await conn.execute(
            _HISTORY_MANY, [a.id for a, _, _ in history], [now] * len(history),
            [actor] * len(history), [action for _, action, _ in history],
            [None] * len(history), [details for _, _, details in history])
    return changes
