"""Correlation queries: which alerts of a site belong together, and linking them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from vigie.store._alerts import Alert

__all__ = ["link_alerts", "open_intrusions", "recent_camera_alerts"]

_RETURNING = ", ".join(f"a.{c}" for c in Alert.__slots__)


async def open_intrusions(conn: Any, site: str) -> list[uuid.UUID]:
    """The site's intrusion alarms not yet resolved."""
    rows = await conn.fetch(
        "SELECT id FROM alerts WHERE site = $1 AND kind = 'intrusion' "
        "AND source_type = 'sensor' AND state <> 'resolved' ORDER BY opened_at", site)
    return [r["id"] for r in rows]


async def recent_camera_alerts(conn: Any, site: str, since: datetime) -> list[uuid.UUID]:
    """The site's unresolved camera alerts opened since `since`."""
    rows = await conn.fetch(
        "SELECT id FROM alerts WHERE site = $1 AND source_type = 'camera' "
        "AND state <> 'resolved' AND opened_at >= $2 ORDER BY opened_at", site, since)
    return [r["id"] for r in rows]


async def link_alerts(conn: Any, alert_id: uuid.UUID, others: Sequence[uuid.UUID]
                      ) -> list[Alert]:
    """Add each of `others` to the alert's `related` and the alert to theirs (both ways,
    each once, in the order linked); return the alerts that changed."""
    if not others:
        return []
    rows = await conn.fetch(
        f"""WITH pairs (id, other) AS (
                SELECT $1::uuid, o FROM unnest($2::uuid[]) AS o
                UNION ALL SELECT o, $1::uuid FROM unnest($2::uuid[]) AS o
            ), wanted AS (
                SELECT id, array_agg(other) AS others FROM pairs GROUP BY id
            )
            UPDATE alerts a SET related = a.related || ARRAY(
                SELECT x FROM unnest(w.others) AS x WHERE x <> ALL (a.related))
            FROM wanted w
            WHERE a.id = w.id AND NOT w.others <@ a.related
            RETURNING {_RETURNING}""", alert_id, list(others))
    return [Alert.from_row(r) for r in rows]
