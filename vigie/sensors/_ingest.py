"""The writer: batches of received messages become rows, alerts, then broker acks.

One transaction per batch stores the events, the dead letters, the sensors' latest states
and the alerts the new events raise. Only after it commits are the messages acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime

from vigie.alerts import AlertChange, AlertService, Decision, RuleBook
from vigie.errors import StoreError
from vigie.events import DeviceStatus, SensorEvent
from vigie.metrics import Metrics
from vigie.sensors._inbox import Inbox
from vigie.sensors._mqtt import Received
from vigie.store import Store
from vigie.store._events import DeadLetter, insert_dead_letters, insert_events

__all__ = ["IngestWriter"]

log = logging.getLogger("vigie.sensors")

Acker = Callable[[Sequence[Received]], None]


class IngestWriter:
    def __init__(
        self, store: Store, inbox: Inbox[Received], ack: Acker, rules: RuleBook,
        alerts: AlertService, metrics: Metrics, batch_size: int,
    ) -> None:
        self._store = store
        self.inbox = inbox
        self._ack = ack
        self._rules = rules
        self._alerts = alerts
        self._metrics = metrics
        self._batch_size = batch_size
        # When each sensor last spoke, for the heartbeat monitor.
        self.last_seen: dict[tuple[str, str], datetime] = {}
        self.written = 0
        self.failing = ""  # why the last write failed; empty when writes succeed

    async def run(self) -> None:
        """Write batches until the inbox is closed and empty (graceful shutdown: everything
        received is written and acknowledged first)."""
        while batch := await self.inbox.get_batch(self._batch_size):
            self._metrics.db_write_queue.set(len(self.inbox) + len(batch))
            await self._write_until_done(batch)
            self._metrics.db_write_queue.set(len(self.inbox))

    async def _write_until_done(self, batch: list[Received]) -> None:
        """Retry until written: unacknowledged, a message is never lost, so waiting is safe.
        Meanwhile the hand-off fills and the broker keeps what follows."""
        delay = 0.1
        while True:
            try:
                await self._write(batch)
                self.failing = ""
                self._metrics.db_up.set(1)
                return
            except StoreError as exc:
                _reraise_if_cancelled()
                self.failing = f"cannot store messages: {exc}"
                self._metrics.db_errors.labels("write_events").inc()
                self._metrics.db_up.set(0)
                log.warning("cannot store %d message(s), retrying in %.1fs: %s",
                            len(batch), delay, exc)
            except Exception as exc:  # a bug must not stop ingestion for good
                _reraise_if_cancelled()
                self.failing = f"ingest error: {exc!r}"
                self._metrics.db_errors.labels("write_events").inc()
                log.exception("unexpected error writing %d message(s), retrying in %.1fs",
                              len(batch), delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 10.0)

    async def _write(self, batch: list[Received]) -> None:
        events: dict[str, SensorEvent] = {}  # by key: a redelivery in the same batch folds
        statuses: list[DeviceStatus] = []
        dead: list[DeadLetter] = []
        for item in batch:
            if isinstance(item.body, list):
                for e in item.body:
                    events.setdefault(e.dedup_key, e)
            elif isinstance(item.body, DeviceStatus):
                statuses.append(item.body)
            else:
                dead.append(item.body)
        started = time.perf_counter()
        changes: list[AlertChange] = []
        async with self._store.transaction() as conn:
            new_ids = await insert_events(conn, list(events.values()))
            fresh = [e for e in events.values() if e.dedup_key in new_ids]
            await insert_dead_letters(conn, dead)
            if statuses:
                await conn.executemany(
                    "UPDATE sensors SET online = $3 WHERE site = $1 AND id = $2",
                    [(s.site, s.sensor, s.online) for s in statuses])
            decisions: list[Decision] = []
            for e in fresh:
                decisions.extend(self._rules.for_event(e, new_ids[e.dedup_key]))
            for s in statuses:
                decisions.extend(self._rules.for_status(s))
            changes = await self._alerts.apply(conn, decisions)
        self._metrics.db_write_seconds.observe(time.perf_counter() - started)
        self._metrics.db_write_batches.observe(len(batch))
        self._ack(batch)
        for s in statuses:  # a device saying it is online speaks, too
            if s.online:
                self._seen(s.site, s.sensor, s.received_at)
        self._account(sum(len(i.body) for i in batch if isinstance(i.body, list)), fresh, dead)
        self._alerts.publish(changes)

    def _seen(self, site: str, sensor: str, at: datetime) -> None:
        key = (site, sensor)
        if key not in self.last_seen or self.last_seen[key] < at:
            self.last_seen[key] = at

    def _account(self, received: int, fresh: list[SensorEvent], dead: list[DeadLetter]) -> None:
        self.written += len(fresh)
        for e in fresh:
            self._seen(e.site, e.sensor, e.received_at)
        # One counter update per label set and batch, not one per event.
        for (site, kind), n in Counter((e.site, e.kind) for e in fresh).items():
            self._metrics.sensor_events.labels(site, kind).inc(n)
        if received > len(fresh):
            self._metrics.sensor_duplicates.inc(received - len(fresh))
        for reason, n in Counter(d.reason for d in dead).items():
            self._metrics.ingest_rejected.labels(reason).inc(n)


def _reraise_if_cancelled() -> None:
    """The driver may turn a cancellation that hits a dying connection into its own error:
    a writer asked to stop must stop, not take that for one more failure to retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
