"""Alert decisions as JSON, for what keeps them on disk while the database is away (camera
history). Read back, a decision is the one written: same times, same id."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from vigie.alerts._rules import Decision, Raise, Resolve
from vigie.store._alerts import AlertOccurrence, Escalation

__all__ = ["decision_from_json", "decision_to_json"]


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


def decision_to_json(d: Decision) -> dict[str, Any]:
    if isinstance(d, Resolve):
        return {"resolve": d.fingerprint, "at": d.at.isoformat(), "comment": d.comment}
    o, esc = d.occurrence, d.occurrence.escalation
    return {"raise": {
        "site": o.site, "source": o.source, "source_type": o.source_type, "kind": o.kind,
        "severity": o.severity, "title": o.title, "at": o.at.isoformat(),
        "details": o.details, "count": o.count, "event_id": o.event_id,
        "last_at": _iso(o.last_at), "id": str(o.id) if o.id else None,
        "escalation": None if esc is None else [
            esc.after.total_seconds(),
            esc.repeat.total_seconds() if esc.repeat is not None else None, esc.max]},
        "received_at": _iso(d.received_at)}


def decision_from_json(raw: dict[str, Any]) -> Decision:
    """Raise ValueError, KeyError or TypeError on what `decision_to_json` did not write."""
    if "resolve" in raw:
        return Resolve(str(raw["resolve"]), datetime.fromisoformat(raw["at"]),
                       str(raw["comment"]))
    o = raw["raise"]
    esc = o["escalation"]
    return Raise(AlertOccurrence(
        site=str(o["site"]), source=str(o["source"]), source_type=str(o["source_type"]),
        kind=str(o["kind"]), severity=str(o["severity"]), title=str(o["title"]),
        at=datetime.fromisoformat(o["at"]), details=dict(o["details"]), count=int(o["count"]),
        event_id=o["event_id"], last_at=_time(o["last_at"]),
        id=uuid.UUID(o["id"]) if o["id"] else None,
        escalation=None if esc is None else Escalation(
            timedelta(seconds=esc[0]), timedelta(seconds=esc[1]) if esc[1] is not None
            else None, int(esc[2]))), _time(raw["received_at"]))
