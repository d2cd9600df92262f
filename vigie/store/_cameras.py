"""Camera health in PostgreSQL: transitions, samples, references, snapshots, availability."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Transition",
    "availability",
    "get_snapshot",
    "insert_samples",
    "insert_transitions",
    "keep_snapshot",
    "load_references",
    "record_latest_snapshots",
    "save_reference",
    "transitions",
]


@dataclass(frozen=True, slots=True)
class Transition:
    site: str
    camera: str
    at: datetime
    state: str
    reasons: tuple[str, ...]
    previous: str | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "state": self.state, "reasons": list(self.reasons),
                "previous": self.previous, "details": self.details}


async def insert_transitions(conn: Any, items: Sequence[Transition]) -> None:
    if not items:
        return
    await conn.execute(
        """INSERT INTO camera_transitions (site, camera, at, state, reasons, previous, details)
           SELECT site, camera, at, state, string_to_array(reasons, ','), previous, details
           FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                       $6::text[], $7::jsonb[])
                AS t(site, camera, at, state, reasons, previous, details)""",
        [t.site for t in items], [t.camera for t in items], [t.at for t in items],
        [t.state for t in items], [",".join(t.reasons) for t in items],
        [t.previous for t in items], [t.details for t in items],
    )


async def insert_samples(conn: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    """(site, camera, at, state, reasons, fps, bitrate, measures) rows, in one statement."""
    if not rows:
        return
    site, camera, at, state, reasons, fps, bitrate, measures = zip(*rows, strict=True)
    await conn.execute(
        """INSERT INTO camera_samples (site, camera, at, state, reasons, fps, bitrate, measures)
           SELECT site, camera, at, state, string_to_array(reasons, ','), fps, bitrate,
                  measures
           FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                       $6::real[], $7::real[], $8::jsonb[])
                AS s(site, camera, at, state, reasons, fps, bitrate, measures)
           ON CONFLICT DO NOTHING""",
        list(site), list(camera), list(at), list(state),
        [",".join(r) for r in reasons], list(fps), list(bitrate), list(measures))


async def transitions(conn: Any, site: str, camera: str, since: datetime, until: datetime,
                      limit: int) -> list[Transition]:
    rows = await conn.fetch(
        """SELECT site, camera, at, state, reasons, previous, details FROM camera_transitions
           WHERE site = $1 AND camera = $2 AND at >= $3 AND at < $4
           ORDER BY at DESC LIMIT $5""", site, camera, since, until, limit)
    return [Transition(r["site"], r["camera"], r["at"], r["state"], tuple(r["reasons"]),
                       r["previous"], r["details"]) for r in rows]


async def availability(conn: Any, site: str, camera: str, since: datetime, until: datetime
                       ) -> float | None:
    """Share of the known time in [since, until) the camera was online (ok or degraded);
    None when nothing is known of that period."""
    row = await conn.fetchrow(
        """WITH t AS (
               SELECT at, state FROM camera_transitions
               WHERE site = $1 AND camera = $2 AND at > $3 AND at < $4
               UNION ALL
               (SELECT $3::timestamptz, state FROM camera_transitions
                WHERE site = $1 AND camera = $2 AND at <= $3 ORDER BY at DESC LIMIT 1)
           ), spans AS (
               SELECT state, extract(epoch FROM lead(at, 1, $4) OVER (ORDER BY at) - at) AS s
               FROM t
           )
           SELECT sum(s) FILTER (WHERE state IN ('ok', 'degraded')) AS up,
                  sum(s) FILTER (WHERE state <> 'unknown') AS known
           FROM spans""", site, camera, since, until)
    if row is None or not row["known"]:
        return None
    return float(row["up"] or 0) / float(row["known"])


async def load_references(conn: Any, cameras: Sequence[tuple[str, str]] | None = None
                          ) -> dict[tuple[str, str], bytes]:
    """Every stored reference, or those of `cameras` ((site, camera) pairs) only."""
    if cameras is None:
        rows = await conn.fetch("SELECT site, camera, data FROM camera_references")
    else:
        rows = await conn.fetch(
            """SELECT r.site, r.camera, r.data FROM camera_references r
               JOIN unnest($1::text[], $2::text[]) AS c(site, camera)
                 ON r.site = c.site AND r.camera = c.camera""",
            [site for site, _ in cameras], [camera for _, camera in cameras])
    return {(r["site"], r["camera"]): bytes(r["data"]) for r in rows}


async def save_reference(conn: Any, site: str, camera: str, at: datetime,
                         data: bytes | None) -> None:
    """Store a learned reference; None forgets it (re-learning after a planned change)."""
    if data is None:
        await conn.execute("DELETE FROM camera_references WHERE site = $1 AND camera = $2",
                           site, camera)
        return
    await conn.execute(
        """INSERT INTO camera_references (site, camera, learned_at, data) VALUES ($1, $2, $3, $4)
           ON CONFLICT (site, camera) DO UPDATE SET learned_at = $3, data = $4""",
        site, camera, at, data)


async def record_latest_snapshots(conn: Any, rows: Sequence[tuple[str, str, datetime, str, int]]
                                  ) -> None:
    """(site, camera, taken_at, path, bytes) of each camera's newest frame on disk (one row
    per camera), in one statement."""
    if not rows:
        return
    site, camera, taken, path, size = zip(*rows, strict=True)
    await conn.execute(
        """INSERT INTO snapshots (site, camera, kind, taken_at, path, bytes)
           SELECT site, camera, 'latest', taken_at, path, bytes
           FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::int[])
                AS s(site, camera, taken_at, path, bytes)
           ON CONFLICT (site, camera) WHERE kind = 'latest'
           DO UPDATE SET taken_at = excluded.taken_at, path = excluded.path,
                         bytes = excluded.bytes""",
        list(site), list(camera), list(taken), list(path), list(size))


async def keep_snapshot(conn: Any, site: str, camera: str, at: datetime, path: str,
                        size: int) -> int:
    """Record a copy kept for an alert; its id is what the alert refers to."""
    snapshot_id: int = await conn.fetchval(
        "INSERT INTO snapshots (site, camera, kind, taken_at, path, bytes) "
        "VALUES ($1, $2, 'kept', $3, $4, $5) RETURNING id", site, camera, at, path, size)
    return snapshot_id


async def get_snapshot(conn: Any, snapshot_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT id, site, camera, kind, taken_at, path, bytes FROM snapshots WHERE id = $1",
        snapshot_id)
    return dict(row) if row else None
