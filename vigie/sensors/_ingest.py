"""The writer: batches of received messages become rows, alerts, then broker acks.

One transaction per batch stores the events, the dead letters, the sensors' latest states
and the alerts the new events raise. Only after it commits are the messages acknowledged.

When PostgreSQL is away, a batch is appended to the local spool instead (fsynced), then
acknowledged: the broker forgets it, the node's disk has it. From then on every batch goes
to the spool, so that the order of events is kept, until the spool has been replayed into
the database. Replay is idempotent: each transaction that applies spooled records also
moves the spool's mark in the database (`spool_replay`), and a replay resumed after a crash
skips what the mark covers. When the spool reaches its cap, the writer holds its batch
unacknowledged and reads no more: the broker keeps the rest, nothing is dropped.

A spooled batch's alerts are not left waiting for the database: once the batch is durable,
its decisions are applied in memory (AlertService.announce), so an intrusion during an outage
shows in the open alerts and on the live feed at once. The replay stores them; when the
spool is empty, every alert decided in memory has been stored and memory defers to the
database again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from vigie.alerts import AlertChange, AlertService, Decision, RuleBook
from vigie.errors import StoreError, StoreUnavailable
from vigie.events import SensorEvent
from vigie.metrics import Metrics
from vigie.sensors._batch import Batch
from vigie.sensors._inbox import Inbox
from vigie.sensors._mqtt import Received
from vigie.spool import Spool
from vigie.store import Store
from vigie.store._events import insert_dead_letters, insert_events

__all__ = ["IngestWriter"]

log = logging.getLogger("vigie.sensors")

Acker = Callable[[Sequence[Received]], None]

RETRY_MIN, RETRY_MAX = 0.25, 5.0  # seconds between attempts at the database

_MARK = """
INSERT INTO spool_replay (epoch, node, seq) VALUES ($1, $2, $3)
ON CONFLICT (epoch) DO UPDATE
SET seq = greatest(spool_replay.seq, EXCLUDED.seq), node = EXCLUDED.node, updated_at = now()
"""
_COMMITTED = """
SELECT x FROM unnest($1::text[]) AS x WHERE pg_xact_status(x::xid8) = 'committed'
"""
_IN_PROGRESS = """
SELECT count(*) FROM unnest($1::text[]) AS x WHERE pg_xact_status(x::xid8) = 'in progress'
"""


class IngestWriter:
    def __init__(
        self, store: Store, inbox: Inbox[Received], ack: Acker, rules: RuleBook,
        alerts: AlertService, metrics: Metrics, batch_size: int,
        spool: Spool | None = None, spool_limit: int = 0, node: str = "",
        replay_batch: int = 5_000,
    ) -> None:
        self._store = store
        self.inbox = inbox
        self._ack = ack
        self._rules = rules
        self._alerts = alerts
        self._metrics = metrics
        self._batch_size = batch_size
        self.spool = spool
        self._spool_limit = spool_limit
        self._replay_batch = replay_batch  # messages per replay transaction
        self._node = node
        # When each sensor last spoke, for the heartbeat monitor.
        self.last_seen: dict[tuple[str, str], datetime] = {}
        self.written = 0  # new events stored
        self.spooled = 0  # messages appended to the spool
        self.replayed = 0  # messages applied from the spool
        self.peak_spool_bytes = 0
        self.failing = ""  # why the last write failed; empty when writes succeed
        # Taken from the inbox, neither stored nor spooled (and so not acknowledged) yet.
        self._held: list[Received] = []
        self._held_batch: Batch | None = None
        self._outage = False  # the last attempt at the database found it away
        self._retry_at = 0.0
        self._delay = RETRY_MIN
        self._full_logged = False
        self._export_spool()

    @property
    def spool_pending(self) -> int:
        """Messages in the spool, not yet in the database."""
        return self.spool.pending_messages if self.spool is not None else 0

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(self) -> None:
        """Write batches until the inbox is closed and empty (graceful shutdown: everything
        received is written, or spooled, and acknowledged first)."""
        while True:
            if not self._held:
                wait = 0.0 if self._replay_due() else self._until_retry()
                batch = await self.inbox.get_batch(self._batch_size, wait)
                if batch is None:
                    return
                self._held, self._held_batch = batch, None
            self._metrics.db_write_queue.set(len(self.inbox) + len(self._held))
            if self._held and await self._place():
                self._held, self._held_batch = [], None
                self._metrics.db_write_queue.set(len(self.inbox))
            if self._replay_due():
                await self._replay()
            elif self._held:
                await asyncio.sleep(self._until_retry() or 0.0)

    # -- one batch: to the database, else to the spool, else held --------------------------

    async def _place(self) -> bool:
        """Make the held batch durable and acknowledge it; False if it must wait."""
        if self._held_batch is None:
            self._held_batch = Batch.of(self._held)
        batch = self._held_batch
        if self.spool_pending == 0 and self._may_try():
            try:
                changes, fresh = await self._commit(batch)
            except StoreUnavailable as exc:
                _reraise_if_cancelled()
                self._failed(exc, outage=True)
            except Exception as exc:  # not an outage (a bug, a constraint): retry, unacked
                _reraise_if_cancelled()
                self._failed(exc, outage=False)
                return False
            else:
                self._succeeded()
                self._ack(self._held)
                self._done(batch, fresh, changes)
                return True
        return await self._to_spool(batch)

    async def _to_spool(self, batch: Batch) -> bool:
        spool = self.spool
        if spool is None:
            return False
        record = batch.encode()
        if spool.pending_bytes + len(record) > self._spool_limit and spool.pending_bytes:
            if not self._full_logged:
                log.warning("spool full (%d bytes, limit %d): no more acknowledgements until "
                            "the database is back; the broker keeps the messages",
                            spool.pending_bytes, self._spool_limit)
                self._full_logged = True
            self._metrics.spool_full.set(1)
            return False
        appending = asyncio.ensure_future(spool.append([(record, batch.messages)]))
        try:
            await asyncio.shield(appending)
        except asyncio.CancelledError:
            # Stopped mid-append: the thread finishes it anyway. Durable, it must be
            # acknowledged, or the broker delivers it again and a keyless event would be
            # stored twice.
            with contextlib.suppress(Exception):
                await appending
                self._ack(self._held)
            raise
        except OSError as exc:  # disk full, read-only: hold it, unacknowledged
            log.error("cannot append to the spool: %s", exc)
            self._metrics.spool_full.set(1)
            return False
        self._full_logged = False
        self._metrics.spool_full.set(0)
        self._ack(self._held)
        self.spooled += batch.messages
        self._metrics.spool_appended.inc(batch.messages)
        self._export_spool()
        # The sensors spoke: the heartbeat must not call them silent while they wait here.
        for e in batch.events.values():
            self._seen(e.site, e.sensor, e.received_at)
        for s in batch.statuses:
            if s.online:
                self._seen(s.site, s.sensor, s.received_at)
        self._announce(batch)
        return True

    def _announce(self, batch: Batch) -> None:
        """The alerts of a spooled batch, decided in memory now (every event of it counts as
        new: a redelivered one may count twice here, never in the database)."""
        decisions: list[Decision] = []
        for e in batch.events.values():
            decisions.extend(self._rules.for_event(e, None))
        for s in batch.statuses:
            decisions.extend(self._rules.for_status(s))
        if decisions:
            self._alerts.announce(decisions)

    # -- the spool back into the database ---------------------------------------------------

    async def _replay(self) -> None:
        spool = self.spool
        assert spool is not None
        records = await spool.read(self._replay_batch)
        if not records:
            return
        try:
            batches = [Batch.decode(r.payload) for r in records]
        except ValueError as exc:  # a record vigie cannot read: never skip it silently
            spool.rewind()
            self._failed(StoreError(f"unreadable spool record: {exc}"), outage=False)
            return
        try:
            async with self._store.transaction() as conn:
                applied = await conn.fetchval(
                    "SELECT seq FROM spool_replay WHERE epoch = $1", spool.epoch) or 0
                todo = [b for r, b in zip(records, batches, strict=True) if r.seq > applied]
                merged = Batch.merge(await _not_committed(conn, todo))
                changes, fresh = await self._apply(conn, merged)
                await conn.execute(_MARK, spool.epoch, self._node, records[-1].seq)
        except StoreUnavailable as exc:
            spool.rewind()
            _reraise_if_cancelled()
            self._failed(exc, outage=True)
            return
        except Exception as exc:
            spool.rewind()
            _reraise_if_cancelled()
            self._failed(exc, outage=False)
            return
        await spool.confirm()
        if spool.pending_bytes < self._spool_limit:
            self._metrics.spool_full.set(0)  # room again
        self._succeeded()
        messages = sum(r.messages for r in records)
        self.replayed += messages
        self._metrics.spool_replayed.inc(messages)
        self._export_spool()
        self._done(merged, fresh, changes)
        if spool.pending_records == 0:
            self._alerts.forget_provisional(cameras=False)
            log.info("spool replayed: %d message(s) in the database", self.replayed)

    # -- the transaction ----------------------------------------------------------------

    async def _commit(self, batch: Batch) -> tuple[list[AlertChange], list[SensorEvent]]:
        started = time.perf_counter()
        xid: int | None = None
        try:
            async with self._store.transaction() as conn:
                if batch.xid is not None and not await _not_committed(conn, [batch]):
                    return [], []  # the earlier attempt did commit
                xid = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
                changes, fresh = await self._apply(conn, batch)
        except StoreUnavailable:
            if xid is not None:
                batch.xid = xid  # it may have committed as the connection died
            raise
        self._metrics.db_write_seconds.observe(time.perf_counter() - started)
        self._metrics.db_write_batches.observe(batch.messages)
        return changes, fresh

    async def _apply(self, conn: Any, batch: Batch
                     ) -> tuple[list[AlertChange], list[SensorEvent]]:
        events = list(batch.events.values())
        new_ids = await insert_events(conn, events)
        fresh = [e for e in events if e.dedup_key in new_ids]
        await insert_dead_letters(conn, batch.dead)
        if batch.statuses:
            await conn.executemany(
                "UPDATE sensors SET online = $3 WHERE site = $1 AND id = $2",
                [(s.site, s.sensor, s.online) for s in batch.statuses])
        decisions: list[Decision] = []
        for e in fresh:
            decisions.extend(self._rules.for_event(e, new_ids[e.dedup_key]))
        for s in batch.statuses:
            decisions.extend(self._rules.for_status(s))
        return await self._alerts.apply(conn, decisions), fresh

    def _done(self, batch: Batch, fresh: list[SensorEvent], changes: list[AlertChange]
              ) -> None:
        for s in batch.statuses:  # a device saying it is online speaks, too
            if s.online:
                self._seen(s.site, s.sensor, s.received_at)
        self._account(batch.events_received, fresh, batch)
        self._alerts.publish(changes)

    # -- retrying -----------------------------------------------------------------------

    def _may_try(self) -> bool:
        return (not self._outage and not self.failing) or time.monotonic() >= self._retry_at

    def _replay_due(self) -> bool:
        return self.spool_pending > 0 and self._may_try()

    def _until_retry(self) -> float | None:
        """Seconds until the database should be tried again; None: no need to."""
        if not self._outage and not self.failing:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def _failed(self, exc: Exception, outage: bool) -> None:
        self._metrics.db_errors.labels("write_events").inc()
        self._metrics.db_up.set(0 if outage else 1)
        first = not self._outage and not self.failing
        self._delay = RETRY_MIN if first else min(self._delay * 2, RETRY_MAX)
        # Jitter: the nodes that lost the database together must not all retry together.
        self._retry_at = time.monotonic() + self._delay * random.uniform(0.5, 1.5)
        self._outage = outage
        if outage:
            self.failing = f"database unreachable ({exc}); spooling"
            if first:
                log.warning("cannot store messages: %s; spooling them until it is back", exc)
        elif isinstance(exc, StoreError):
            self.failing = f"cannot store messages: {exc}"
            log.warning("cannot store messages, retrying in %.1fs: %s", self._delay, exc)
        else:
            self.failing = f"ingest error: {exc!r}"
            log.error("unexpected error writing messages, retrying in %.1fs",
                      self._delay, exc_info=exc)

    async def retry_soon(self) -> None:
        """The database is known to answer again: the next batch tries it at once, not
        after the backoff grown during the outage."""
        self._retry_at = time.monotonic()
        self._delay = RETRY_MIN
        self.inbox.wake()  # waiting for that backoff to end: replay the spool now

    def _succeeded(self) -> None:
        if self._outage:
            log.info("database reachable again: writing (%d message(s) spooled meanwhile)",
                     self.spool_pending)
        self._outage = False
        self.failing = ""
        self._delay = RETRY_MIN
        self._metrics.db_up.set(1)

    # -- accounting ---------------------------------------------------------------------

    def _export_spool(self) -> None:
        if self.spool is None:
            return
        self.peak_spool_bytes = max(self.peak_spool_bytes, self.spool.pending_bytes)
        self._metrics.spool_bytes.set(self.spool.pending_bytes)
        self._metrics.spool_messages.set(self.spool.pending_messages)

    def _seen(self, site: str, sensor: str, at: datetime) -> None:
        key = (site, sensor)
        if key not in self.last_seen or self.last_seen[key] < at:
            self.last_seen[key] = at

    def _account(self, received: int, fresh: list[SensorEvent], batch: Batch) -> None:
        self.written += len(fresh)
        for e in fresh:
            self._seen(e.site, e.sensor, e.received_at)
        # One counter update per label set and batch, not one per event.
        for (site, kind), n in Counter((e.site, e.kind) for e in fresh).items():
            self._metrics.sensor_events.labels(site, kind).inc(n)
        if received > len(fresh):
            self._metrics.sensor_duplicates.inc(received - len(fresh))
        for reason, n in Counter(d.reason for d in batch.dead).items():
            self._metrics.ingest_rejected.labels(reason).inc(n)


async def _not_committed(conn: Any, batches: list[Batch]) -> list[Batch]:
    """The batches to write: those whose earlier attempt is not known to have committed."""
    xids = [str(b.xid) for b in batches if b.xid is not None]
    if not xids:
        return batches
    if await conn.fetchval(_IN_PROGRESS, xids):
        # Its connection is gone but the server has not noticed yet: wait for the verdict.
        raise StoreError("an earlier write is still in progress on the server")
    committed = {int(x) for (x,) in await conn.fetch(_COMMITTED, xids)}
    return [b for b in batches if b.xid not in committed]


def _reraise_if_cancelled() -> None:
    """The driver may turn a cancellation that hits a dying connection into its own error:
    a writer asked to stop must stop, not take that for one more failure to retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
