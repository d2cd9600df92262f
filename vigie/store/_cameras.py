"""Camera health in PostgreSQL: transitions, samples, references, snapshots, availability."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Transition",
    "availability",
    "cluster_states",
    "copy_kept",
    "forget_status",
    "get_snapshot",
    "insert_samples",
    "insert_transitions",
    "keep_snapshot",
    "kept_copy",
    "kept_without_copy",
    "load_references",
    "publish_snapshot",
    "publish_status",
    "record_latest_snapshots",
    "save_reference",
    "status_snapshot",
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


# --- several nodes: what each camera's holder publishes for the other nodes (0010) ----------

async def publish_status(conn: Any, node: str, incarnation: Any,
                         rows: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
    """(site, camera, view) of cameras this node holds, in one statement; how many were
    written. Only where its lease is still live: a node that just handed a camera over (or
    lost it) never overwrites its new holder's row with an older view."""
    if not rows:
        return 0
    site, camera, view = zip(*rows, strict=True)
    written: int = await conn.fetchval(
        """WITH mine AS (
               SELECT s.site, s.camera, s.view
               FROM unnest($3::text[], $4::text[], $5::jsonb[]) AS s(site, camera, view)
               JOIN camera_leases l ON l.camera = s.site || '/' || s.camera
               WHERE l.incarnation = $2 AND l.expires_at > now()
           ), upserted AS (
               INSERT INTO camera_status (site, camera, node, updated_at, view)
               SELECT site, camera, $1, now(), view FROM mine
               ON CONFLICT (site, camera) DO UPDATE
               SET node = excluded.node, updated_at = excluded.updated_at,
                   view = excluded.view
               RETURNING 1
           )
           SELECT count(*) FROM upserted""",
        node, incarnation, list(site), list(camera), list(view))
    return written


async def publish_snapshot(conn: Any, node: str, incarnation: Any, site: str, camera: str,
                           taken_at: datetime, jpeg: bytes) -> bool:
    """The latest frame of a camera this node holds (see `publish_status`)."""
    row = await conn.fetchval(
        """INSERT INTO camera_status (site, camera, node, updated_at, view, snapshot,
                                      snapshot_at)
           SELECT $3, $4, $1, now(), '{}', $6, $5
           FROM camera_leases l
           WHERE l.camera = $3 || '/' || $4 AND l.incarnation = $2 AND l.expires_at > now()
           ON CONFLICT (site, camera) DO UPDATE
           SET node = excluded.node, snapshot = excluded.snapshot,
               snapshot_at = excluded.snapshot_at
           RETURNING true""",
        node, incarnation, site, camera, taken_at, jpeg)
    return bool(row)


async def forget_status(conn: Any, keep_images_for: float) -> None:
    """Rows of cameras configured nowhere any more (their lease row is gone), and images
    older than the retention period (a camera nobody watches keeps no picture forever)."""
    await conn.execute(
        """DELETE FROM camera_status s WHERE NOT EXISTS (
               SELECT 1 FROM camera_leases l WHERE l.camera = s.site || '/' || s.camera)""")
    await conn.execute(
        """UPDATE camera_status SET snapshot = NULL, snapshot_at = NULL
           WHERE snapshot_at < now() - make_interval(secs => $1)""", keep_images_for)


async def cluster_states(conn: Any, cameras: Sequence[tuple[str, str]]) -> dict[
        tuple[str, str], dict[str, Any]]:
    """What the database knows of cameras other nodes watch: their holder (a live lease),
    the holder's last published view, and their last stored transition (written as it
    happens, so it may be newer than the view)."""
    if not cameras:
        return {}
    rows = await conn.fetch(
        """SELECT c.site, c.camera,
                  CASE WHEN l.expires_at > now() THEN l.node END AS holder,
                  s.node AS reported_by, s.updated_at, s.view, s.snapshot_at,
                  t.at AS changed_at, t.state, t.reasons
           FROM unnest($1::text[], $2::text[]) AS c(site, camera)
           LEFT JOIN camera_leases l ON l.camera = c.site || '/' || c.camera
           LEFT JOIN camera_status s ON s.site = c.site AND s.camera = c.camera
           LEFT JOIN LATERAL (
               SELECT at, state, reasons FROM camera_transitions t
               WHERE t.site = c.site AND t.camera = c.camera ORDER BY at DESC LIMIT 1
           ) t ON true""",
        [site for site, _ in cameras], [camera for _, camera in cameras])
    return {(r["site"], r["camera"]): dict(r) for r in rows}


async def kept_without_copy(conn: Any, cameras: Sequence[str], within: float, limit: int
                            ) -> list[tuple[int, str]]:
    """(id, path) of pictures of `cameras` ("<site>/<camera>") kept for alerts in the last
    `within` seconds that have no copy in the database yet."""
    if not cameras:
        return []
    rows = await conn.fetch(
        """SELECT s.id, s.path FROM snapshots s
           WHERE s.kind = 'kept' AND s.taken_at > now() - make_interval(secs => $2)
             AND s.site || '/' || s.camera = ANY($1::text[])
             AND NOT EXISTS (SELECT 1 FROM snapshot_images i WHERE i.id = s.id)
           ORDER BY s.id LIMIT $3""", list(cameras), within, limit)
    return [(r["id"], r["path"]) for r in rows]


async def copy_kept(conn: Any, snapshot_id: int, data: bytes) -> None:
    await conn.execute("INSERT INTO snapshot_images (id, data) VALUES ($1, $2) "
                       "ON CONFLICT DO NOTHING", snapshot_id, data)


async def kept_copy(conn: Any, snapshot_id: int) -> bytes | None:
    data = await conn.fetchval("SELECT data FROM snapshot_images WHERE id = $1", snapshot_id)
    return bytes(data) if data is not None else None


async def status_snapshot(conn: Any, site: str, camera: str) -> tuple[bytes, datetime] | None:
    """A camera's latest frame as its holder published it."""
    row = await conn.fetchrow(
        "SELECT snapshot, snapshot_at FROM camera_status WHERE site = $1 AND camera = $2 "
        "AND snapshot IS NOT NULL", site, camera)
    return (bytes(row["snapshot"]), row["snapshot_at"]) if row else None
