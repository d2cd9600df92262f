"""The statements of the lease protocol (tables in migration 0009_cluster.sql).

Every time is the database's now(): the nodes never compare their clocks. A camera is free
when its lease has expired; claims take free rows with FOR UPDATE SKIP LOCKED, so nodes
claiming at once get disjoint sets without waiting for each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vigie.cluster._plan import Member

__all__ = ["CHANNEL", "NodeRow", "list_nodes"]

# Nodes tell each other to look now rather than at their next round (a handover step, a
# release, a node joining). Only a hint: every round reads the tables anyway.
CHANNEL = "vigie_cluster"
# A node asks the holder of a camera for its latest picture (payload "<site>/<camera>"):
# see vigie.cluster._status.
PICTURE_CHANNEL = "vigie_picture"

PREVIOUS = """
SELECT incarnation, state, clustered, expires_at > now() AS live FROM nodes WHERE name = $1
"""

REGISTER = """
INSERT INTO nodes (name, incarnation, state, clustered, started_at, last_seen_at,
                   expires_at, cameras)
VALUES ($1, $2, 'up', $3, now(), now(), now() + make_interval(secs => $4), $5)
ON CONFLICT (name) DO UPDATE
SET incarnation = EXCLUDED.incarnation, state = 'up', clustered = EXCLUDED.clustered,
    started_at = now(), last_seen_at = now(), expires_at = EXCLUDED.expires_at,
    cameras = EXCLUDED.cameras
"""

# Other live nodes: a lone node warns when it is not alone, a clustered one when a lone
# node (which watches every camera) shares its database.
OTHERS = """
SELECT name, clustered FROM nodes
WHERE name <> $1 AND state = 'up' AND expires_at > now()
"""

# Clustered nodes up in the table but silent for long: dead, and not restarted under their
# name (their MQTT session, if they shared a subscription group, holds their share).
LOST = """
SELECT name, now() - expires_at AS silent FROM nodes
WHERE clustered AND state = 'up' AND expires_at < now() - make_interval(secs => $1)
ORDER BY name
"""

FORGET_OLD_NODES = "DELETE FROM nodes WHERE last_seen_at < now() - interval '30 days'"

# The cameras of this node's configuration get a row (free until claimed); free rows of
# cameras no longer configured anywhere go (a node with an older configuration puts its
# own back when it restarts).
KNOW_CAMERAS = """
WITH added AS (
    INSERT INTO camera_leases (camera) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING
)
DELETE FROM camera_leases
WHERE expires_at < now() - interval '1 minute' AND handover IS NULL
  AND camera <> ALL($1::text[])
"""

# No row back: another process took this node's name (a restart while this one still
# runs, or a duplicated name). It has the name now; this one must let go of everything.
HEARTBEAT = """
UPDATE nodes SET last_seen_at = now(), expires_at = now() + make_interval(secs => $3),
                 cameras = $4
WHERE name = $1 AND incarnation = $2 AND state = 'up'
RETURNING true
"""

LEAVE = """
UPDATE nodes SET state = 'stopped', cameras = 0, last_seen_at = now(), expires_at = now()
WHERE name = $1 AND incarnation = $2
"""

# Rows of this incarnation, expired or not: nobody else took them (a claim changes the
# holder), so they are still ours to keep.
RENEW = """
UPDATE camera_leases SET expires_at = now() + make_interval(secs => $2)
WHERE incarnation = $1
RETURNING camera
"""

CENSUS = """
SELECT n.incarnation, n.name,
       (SELECT count(*) FROM camera_leases l
        WHERE l.incarnation = n.incarnation AND l.expires_at > now()) AS held,
       (SELECT count(*) FROM camera_leases l
        WHERE l.offered_to = n.incarnation AND l.handover IN ('offered', 'ready')) AS incoming,
       (SELECT count(*) FROM camera_leases l
        WHERE l.incarnation = n.incarnation AND l.handover IN ('offered', 'ready')) AS outgoing,
       (SELECT count(*) FROM camera_leases WHERE expires_at <= now()) AS free,
       (SELECT count(*) FROM camera_leases) AS total
FROM nodes n
WHERE n.state = 'up' AND n.clustered AND n.expires_at > now()
"""

HANDOVERS = """
SELECT camera, incarnation, offered_to, handover FROM camera_leases
WHERE handover IS NOT NULL AND (offered_to = $1 OR incarnation = $1)
"""

CLAIM = """
WITH free AS (
    SELECT l.camera FROM camera_leases l JOIN unnest($3::text[]) AS c(camera) USING (camera)
    WHERE l.expires_at <= now()
    LIMIT $5
    FOR UPDATE OF l SKIP LOCKED
)
UPDATE camera_leases l
SET node = $1, incarnation = $2, expires_at = now() + make_interval(secs => $4),
    acquired_at = now(), offered_to = NULL, offered_at = NULL, handover = NULL
FROM free WHERE l.camera = free.camera
RETURNING l.camera
"""

OFFER = """
WITH mine AS (
    SELECT camera FROM camera_leases
    WHERE incarnation = $1 AND handover IS NULL AND expires_at > now()
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE camera_leases l SET offered_to = $2, offered_at = now(), handover = 'offered'
FROM mine WHERE l.camera = mine.camera
RETURNING l.camera
"""

READY = """
UPDATE camera_leases SET handover = 'ready'
WHERE camera = ANY($2::text[]) AND offered_to = $1 AND handover = 'offered'
RETURNING camera
"""

# Only to a node still live: a taker that died meanwhile gets nothing.
TRANSFER = """
UPDATE camera_leases l
SET node = n.name, incarnation = l.offered_to, handover = 'done', acquired_at = now(),
    expires_at = now() + make_interval(secs => $3)
FROM nodes n
WHERE n.incarnation = l.offered_to AND n.state = 'up' AND n.expires_at > now()
  AND l.camera = ANY($2::text[]) AND l.incarnation = $1 AND l.handover = 'ready'
RETURNING l.camera
"""

ADOPT = """
UPDATE camera_leases SET offered_to = NULL, offered_at = NULL, handover = NULL
WHERE incarnation = $1 AND handover = 'done'
RETURNING camera
"""

# Offers of ours that will not complete: the taker is gone, or never got ready.
WITHDRAW = """
UPDATE camera_leases l SET offered_to = NULL, offered_at = NULL, handover = NULL
WHERE l.incarnation = $1 AND l.handover IN ('offered', 'ready')
  AND (l.offered_at < now() - make_interval(secs => $2)
       OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.incarnation = l.offered_to
                      AND n.state = 'up' AND n.expires_at > now()))
RETURNING l.camera
"""

RELEASE = """
WITH freed AS (
    UPDATE camera_leases
    SET node = NULL, incarnation = NULL, expires_at = '-infinity', acquired_at = NULL,
        offered_to = NULL, offered_at = NULL, handover = NULL
    WHERE incarnation = $1
    RETURNING camera
), declined AS (
    UPDATE camera_leases SET offered_to = NULL, offered_at = NULL, handover = NULL
    WHERE offered_to = $1 AND handover IN ('offered', 'ready')
)
UPDATE nodes SET state = 'stopped', cameras = 0, last_seen_at = now(), expires_at = now()
WHERE name = $2 AND incarnation = $1
RETURNING (SELECT count(*) FROM freed)
"""


REFERENCES = """
SELECT r.site || '/' || r.camera AS camera, r.data FROM camera_references r
JOIN unnest($1::text[]) AS c(key) ON c.key = r.site || '/' || r.camera
"""


def census_members(rows: Sequence[Any]) -> tuple[tuple[Member, ...], int, int]:
    """(members, free, total) from the CENSUS rows."""
    members = tuple(Member(r["incarnation"], r["name"], r["held"], r["incoming"],
                           r["outgoing"]) for r in rows)
    free = int(rows[0]["free"]) if rows else 0
    total = int(rows[0]["total"]) if rows else 0
    return members, free, total


async def references(conn: Any, cameras: Collection[str]) -> dict[str, bytes]:
    if not cameras:
        return {}
    return {r["camera"]: bytes(r["data"]) for r in await conn.fetch(REFERENCES, list(cameras))}


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    state: str  # up, stopped, lost (up but silent past its lease)
    clustered: bool
    cameras: int
    started_at: datetime
    last_seen_at: datetime
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "clustered": self.clustered,
                "cameras": self.cameras, "started_at": self.started_at.isoformat(),
                "last_seen_at": self.last_seen_at.isoformat(),
                "lease_expires_at": self.expires_at.isoformat()}


async def list_nodes(conn: Any) -> list[NodeRow]:
    """Every node that ran on this database in the last week, live ones first.

    `cameras` is what a live clustered node holds now (its leases); for the others, what it
    watched at its last heartbeat."""
    rows = await conn.fetch("""
        SELECT n.name, n.clustered, n.started_at, n.last_seen_at, n.expires_at,
               CASE WHEN n.state = 'up' AND n.expires_at <= now() THEN 'lost'
                    ELSE n.state END AS state,
               CASE WHEN n.clustered AND n.state = 'up' AND n.expires_at > now()
                    THEN (SELECT count(*) FROM camera_leases l
                          WHERE l.incarnation = n.incarnation AND l.expires_at > now())
                    WHEN n.state = 'up' THEN n.cameras ELSE 0 END AS cameras
        FROM nodes n
        WHERE n.last_seen_at > now() - interval '7 days'
        ORDER BY n.state = 'up' AND n.expires_at > now() DESC, n.name""")
    return [NodeRow(r["name"], r["state"], r["clustered"], int(r["cameras"]),
                    r["started_at"], r["last_seen_at"], r["expires_at"]) for r in rows]


def new_incarnation() -> uuid.UUID:
    return uuid.uuid4()
