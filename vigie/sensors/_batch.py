"""A batch of received messages, as the writer makes it durable: in PostgreSQL in one
transaction, or in the spool as one record (and back).

The spool keeps what the decoder made of each message, not the raw message: an event
without id or timestamp has a dedup key unique to its reception, and replaying the decoded
event keeps that key, so a replay repeated after a crash finds the event already stored.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from vigie.events import DeviceStatus, SensorEvent
from vigie.sensors._mqtt import Received
from vigie.store._events import DeadLetter

__all__ = ["Batch"]

_FORMAT = 1


@dataclass(slots=True)
class Batch:
    # By dedup key: a redelivery in the same batch folds (the first one is kept).
    events: dict[str, SensorEvent] = field(default_factory=dict)
    statuses: list[DeviceStatus] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    messages: int = 0  # broker messages it came from
    events_received: int = 0  # events before folding
    # The transaction that last tried to write it, when it is not known whether that
    # transaction committed (the connection died around COMMIT): checked before writing again.
    xid: int | None = None

    @classmethod
    def of(cls, received: Sequence[Received]) -> Batch:
        batch = cls(messages=len(received))
        for item in received:
            if isinstance(item.body, list):
                batch.events_received += len(item.body)
                for e in item.body:
                    batch.events.setdefault(e.dedup_key, e)
            elif isinstance(item.body, DeviceStatus):
                batch.statuses.append(item.body)
            else:
                batch.dead.append(item.body)
        return batch

    @classmethod
    def merge(cls, batches: Iterable[Batch]) -> Batch:
        """One batch for several, in order (spool replay)."""
        out = cls()
        for b in batches:
            for key, e in b.events.items():
                out.events.setdefault(key, e)
            out.statuses += b.statuses
            out.dead += b.dead
            out.messages += b.messages
            out.events_received += b.events_received
        return out

    # -- the spool's record ---------------------------------------------------------------

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": _FORMAT, "x": self.xid, "n": self.messages, "r": self.events_received,
            "e": [[e.site, e.sensor, e.kind, e.state, e.ts, e.received_at, e.dedup_key,
                   e.zone, e.data, e.battery] for e in self.events.values()],
            "s": [[s.site, s.sensor, s.online, s.received_at] for s in self.statuses],
            "d": [[d.received_at, d.topic, d.reason, d.detail,
                   base64.b64encode(d.payload).decode()] for d in self.dead],
        })

    @classmethod
    def decode(cls, payload: bytes) -> Batch:
        doc: dict[str, Any] = orjson.loads(payload)
        if doc.get("v") != _FORMAT:
            raise ValueError(f"spool record format {doc.get('v')!r} is not {_FORMAT}")
        batch = cls(messages=doc["n"], events_received=doc["r"], xid=doc["x"])
        for site, sensor, kind, state, ts, received_at, key, zone, data, battery in doc["e"]:
            batch.events[key] = SensorEvent(
                site=site, sensor=sensor, kind=kind, state=state, ts=_time(ts),
                received_at=_time(received_at), dedup_key=key, zone=zone, data=data,
                battery=battery)
        batch.statuses = [DeviceStatus(site, sensor, online, _time(at))
                          for site, sensor, online, at in doc["s"]]
        batch.dead = [DeadLetter(_time(at), topic, reason, detail, base64.b64decode(raw))
                      for at, topic, reason, detail, raw in doc["d"]]
        return batch


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
