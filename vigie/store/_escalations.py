"""Escalations that are due, taken once across every node.

The due rows are locked with SKIP LOCKED: two nodes ticking at once split them, never share
them. A node that reads a row just before another commits its escalation locks the new
version, and PostgreSQL checks `next_escalation_at <= now` again on it: the step is gone,
so the row is left out. One escalation per step, whatever the number of nodes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vigie.store._alerts import _HISTORY_MANY, Alert

__all__ = ["escalate_due"]

# After a long stop (every node down), a step missed long ago escalates once and the next
# step is counted from now: no burst of escalations to catch up.
_ESCALATE = f"""
WITH due AS (
    SELECT id FROM alerts
    WHERE next_escalation_at <= $1 AND state = 'open' AND NOT silenced
    ORDER BY next_escalation_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED)
UPDATE alerts a SET
    escalation_level = a.escalation_level + 1,
    escalated_at = $1,
    escalations_left = a.escalations_left - 1,
    next_escalation_at = CASE
        WHEN a.escalate_repeat IS NULL OR a.escalations_left <= 1 THEN NULL
        WHEN a.next_escalation_at + a.escalate_repeat > $1
            THEN a.next_escalation_at + a.escalate_repeat
        ELSE $1 + a.escalate_repeat END
FROM due WHERE a.id = due.id
RETURNING {', '.join('a.' + c for c in Alert.__slots__)}
"""


async def escalate_due(conn: Any, now: datetime, limit: int = 500) -> list[Alert]:
    """Escalate the open, unsilenced alerts whose next escalation is due at `now`; return
    them. Run it in a transaction: the history entries go with the escalations."""
    rows = await conn.fetch(_ESCALATE, now, limit)
    alerts = sorted((Alert.from_row(r) for r in rows), key=lambda a: (a.opened_at, a.id))
    if alerts:
        await conn.execute(
            _HISTORY_MANY, [a.id for a in alerts], [now] * len(alerts),
            ["vigie"] * len(alerts), ["escalated"] * len(alerts), [None] * len(alerts),
            [{"level": a.escalation_level} for a in alerts])
    return alerts
