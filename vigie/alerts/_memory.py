"""Alert decisions applied to the alerts a node holds in memory, as the database would.

While PostgreSQL is away (AlertService.announce) a decision still changes what the node shows:
the same fold of repeats into `count`, the gravest severity, the same id the stored alert
will get (`AlertOccurrence.id`). The silences are those the node read
with its last refresh (an alert raised meanwhile in a maintenance window is shown silenced,
as it will be stored). What only the database knows (storm grouping, another node's alert
opened since the last refresh, a silence created since) is applied when it is stored.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from vigie.alerts._rules import Resolve
from vigie.store import _alerts as q
from vigie.store._silences import Silence

__all__ = ["raise_in_memory", "resolve_in_memory"]


def raise_in_memory(open_alerts: Mapping[str, q.Alert], occ: q.AlertOccurrence,
                    now: datetime, silences: Sequence[Silence] = ()) -> tuple[str, q.Alert]:
    """("opened" | "repeated", the alert): what `q.upsert_alerts` would do."""
    last = occ.last_at or occ.at
    known = open_alerts.get(occ.fingerprint)
    if known is not None:
        return "repeated", dataclasses.replace(
            known, count=known.count + occ.count, last_seen_at=max(known.last_seen_at, last),
            severity=min(known.severity, occ.severity, key=q.SEVERITY_RANK.__getitem__))
    # As the upsert judges it: a silence active when it happened, or now.
    silenced = any(s.matchers.matches(occ.site, occ.source, occ.kind, occ.source_type)
                   and (s.active(occ.at) or s.active(now)) for s in silences)
    esc = occ.escalation
    return "opened", q.Alert(
        id=occ.id or uuid.uuid4(), fingerprint=occ.fingerprint, site=occ.site,
        source=occ.source, source_type=occ.source_type, kind=occ.kind, severity=occ.severity,
        state="open", title=occ.title, details=occ.details, opened_at=occ.at,
        last_seen_at=last, count=occ.count, acknowledged_by=None, acknowledged_at=None,
        resolved_by=None, resolved_at=None, escalation_level=0,
        silenced=silenced, snapshots=[], event_id=None, related=[],
        next_escalation_at=(max(occ.at, now) + esc.after if esc and esc.steps and not silenced
                            else None),
        escalated_at=None, assigned_to=None, assigned_at=None, resolution=None)


def resolve_in_memory(open_alerts: Mapping[str, q.Alert], d: Resolve
                      ) -> tuple[str, q.Alert] | None:
    """("resolved", the alert) if an alert of that fingerprint is open, else None."""
    known = open_alerts.get(d.fingerprint)
    if known is None:
        return None
    return "resolved", dataclasses.replace(
        known, state="resolved", resolved_by="vigie", resolved_at=d.at, resolution="auto",
        next_escalation_at=None)
