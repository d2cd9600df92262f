"""One notifier's loop: one sender in the cluster, reading the feed from its cursor.

Why the feed and not an outbox table: the `feed` table (0003) already holds every alert
change, numbered in commit order across nodes and written after the alert's transaction,
off the ingest path. An outbox written inside the ingest transaction would add a write per
alert change to the hot path, and to get a gap-free order it would need the same
cluster-wide lock inside every ingest transaction. The price of the feed: a node killed in
the milliseconds between an alert's commit and the feed write loses that change from the
feed (for the live consoles as for the notifiers: Alertmanager mends it at its next resend
round, a webhook does not), and a notifier stopped for longer than the feed keeps its
messages (24 h) skips the trimmed ones (logged, counted in vigie_notifier_gaps_total).

Each notifier has a connection of its own that takes a session advisory lock keyed by its
name: whichever node holds it sends, the others wait; if that node dies its connection
drops, the lock goes with it and another node carries on from the cursor, which only the
lock holder's connection moves. Delivery is at least once: a crash between a send and the
cursor update sends that change again, with the same delivery id.

Dead letters an admin asks to send again are queued in `notify_dead_letters` by whichever
node serves the API; the lock holder sends them, one at a time between catch-ups of the
feed (live changes go first: they are the news), through the channel's own delivery and
retry policy. So one node sends each, once (at least once across a crash, like the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from typing import Any

import asyncpg

from vigie.alerts._feed import CHANNEL
from vigie.notify._delivery import Channel, NotifyMetrics, Outcome
from vigie.notify._message import Notification
from vigie.secrets import redact_text
from vigie.store import _notify as q
from vigie.store._direct import DRIVER_ERRORS, close_quietly

__all__ = ["NotifierLoop", "lock_key"]

log = logging.getLogger("vigie.notify")

PAGE = 200
RETRY_MIN, RETRY_MAX = 0.5, 30.0


def lock_key(notifier: str) -> int:
    """The advisory lock of a notifier: a signed 64-bit key derived from its name."""
    digest = hashlib.sha256(f"vigie-notifier:{notifier}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class NotifierLoop:
    def __init__(self, channel: Channel, dsn: str, metrics: NotifyMetrics, *,
                 poll_every: float = 5.0, lock_retry: float = 5.0) -> None:
        self.channel = channel
        self.name = channel.name
        self._dsn = dsn  # a secret: never logged
        self._metrics = metrics
        self.poll_every = poll_every  # in case a notification is lost: read anyway
        self.lock_retry = lock_retry
        self.sending = False  # this node holds the lock and sends
        self.cursor: int | None = None
        self._key = lock_key(self.name)

    async def run(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=5, command_timeout=30,
                    server_settings={"application_name": f"vigie-notify-{self.name}",
                                     "timezone": "UTC"})
            except DRIVER_ERRORS as exc:
                log.warning("notifier %s: cannot connect to the database: %s", self.name,
                            redact_text(str(exc)) or type(exc).__name__)
            else:
                try:
                    await self._serve(conn)
                except DRIVER_ERRORS as exc:
                    log.warning("notifier %s: lost the database: %s", self.name,
                                redact_text(str(exc)) or type(exc).__name__)
                except Exception:  # a bug must not stop notifications for good
                    log.exception("notifier %s: unexpected error; starting again", self.name)
                finally:
                    if self.sending:
                        delay = RETRY_MIN
                    self._set_sending(False)
                    await close_quietly(conn)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(2 * delay, RETRY_MAX)

    def _set_sending(self, sending: bool) -> None:
        self.sending = sending
        self._metrics.active.labels(self.name).set(1 if sending else 0)

    async def _serve(self, conn: Any) -> None:
        wake = asyncio.Event()
        conn.add_termination_listener(lambda _conn: wake.set())
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
            # Another node sends for this notifier; ask again now and then (a lock cannot
            # be waited for with a timeout without holding a transaction open).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lock_retry):
                    await wake.wait()  # set only if the connection is lost
        await conn.add_listener(CHANNEL, lambda *_: wake.set())
        await conn.add_listener(q.RETRY_CHANNEL, lambda *_: wake.set())
        self.cursor = await q.start_cursor(conn, self.name)
        self._metrics.seq.labels(self.name).set(self.cursor)
        self._set_sending(True)
        log.info("notifier %s: sending from this node, after feed seq %d", self.name,
                 self.cursor)
        every = self.channel.every
        next_tick = time.monotonic()
        while True:
            wake.clear()  # before reading: a notification during the read is not lost
            if conn.is_closed():
                raise asyncpg.InterfaceError("connection closed")
            await self._catch_up(conn)
            # One resend at a time: after each, the live feed is read again first.
            wait = 0.0 if await self._resend_queued(conn) else self.poll_every
            if every is not None:
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + every
                    await self._tick(conn)
                wait = max(0.0, min(wait, next_tick - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()

    async def _catch_up(self, conn: Any) -> None:
        assert self.cursor is not None
        trimmed = await q.trimmed_through(conn)
        if trimmed > self.cursor:
            log.error("notifier %s: feed messages %d to %d were trimmed before it sent "
                      "them; carrying on after them", self.name, self.cursor + 1, trimmed)
            self._metrics.gaps.labels(self.name).inc()
            await self._advance(conn, trimmed)
        while True:
            start = self.cursor
            rows, head = await q.feed_after(conn, self.cursor, PAGE)
            for row in rows:
                try:
                    n = Notification.from_row(row)
                    wanted = self.channel.wants(n)
                except Exception:  # a message it cannot read: skip it, not everything
                    log.exception("notifier %s: unreadable feed message %d", self.name,
                                  row["seq"])
                    self._metrics.failed.labels(self.name).inc()
                    self.cursor = row["seq"]
                    continue
                if wanted:
                    await self._deliver(conn, n)
                else:
                    self.cursor = n.seq
            if len(rows) < PAGE:
                # Read up to the head: the camera changes after the last alert one are
                # passed too (the cursor then says how far behind the feed it is).
                self.cursor = max(self.cursor, head)
            if self.cursor != start:
                await self._advance(conn, self.cursor)
            if len(rows) < PAGE:
                return

    async def _tick(self, conn: Any) -> None:
        try:
            await self.channel.tick(conn)
        except DRIVER_ERRORS:
            raise
        except Exception:  # the next round tries again; changes keep flowing meanwhile
            log.exception("notifier %s: periodic round failed", self.name)

    async def _deliver(self, conn: Any, n: Notification) -> None:
        try:
            outcome = await self.channel.deliver(n)
        except Exception as exc:  # a bug, not the receiver: keep it, go on with the next
            log.exception("notifier %s: cannot deliver %s of alert %s", self.name, n.type,
                          n.alert_id)
            outcome = Outcome(False, 1, f"internal error: {type(exc).__name__}", n.alert)
        if outcome.delivered:
            self._metrics.sent.labels(self.name).inc()
        else:
            self._metrics.dead.labels(self.name).inc()
            log.error("notifier %s: %s of alert %s given up after %d attempt(s): %s; kept in "
                      "notify_dead_letters", self.name, n.type, n.alert_id, outcome.attempts,
                      outcome.error)
            async with conn.transaction():
                await q.add_dead_letter(conn, self.name, n.seq, n.type, n.alert_id, n.site,
                                        outcome.attempts, outcome.error or "", outcome.payload)
                await self._advance(conn, n.seq)
            return
        await self._advance(conn, n.seq)

    async def _resend_queued(self, conn: Any) -> bool:
        """Send the oldest dead letter queued for a resend, if any: True if there was one."""
        letter = await q.next_queued_retry(conn, self.name)
        if letter is None:
            return False
        current = await q.alert_now(conn, letter["alert_id"]) if letter["alert_id"] else None
        n = Notification.from_dead_letter(letter)
        try:
            outcome = await self.channel.redeliver(n, current)
        except Exception as exc:  # a bug, not the receiver: it stays a dead letter
            log.exception("notifier %s: cannot send dead letter %d again", self.name,
                          letter["id"])
            outcome = Outcome(False, 1, f"internal error: {type(exc).__name__}")
        if outcome.delivered:
            await q.retry_delivered(conn, letter["id"])
            self._metrics.redelivered.labels(self.name).inc()
            log.info("notifier %s: dead letter %d (%s of alert %s) delivered, sent again at "
                     "the request of %s", self.name, letter["id"], n.type, n.alert_id,
                     letter["retry_requested_by"])
        else:
            await self._resend_failed(conn, letter, n, outcome)
        return True

    async def _resend_failed(self, conn: Any, letter: dict[str, Any], n: Notification,
                             outcome: Outcome) -> None:
        async with conn.transaction():
            await q.retry_failed(conn, letter["id"], letter["retry_requested_at"],
                                 outcome.attempts, outcome.error or "",
                                 outcome.payload if outcome.payload is not None
                                 else letter["payload"])
            # Unless it refused this one for good, the receiver still fails: each of the
            # others would spend the whole retry policy too, holding live changes back.
            dropped = 0 if outcome.refused else await q.unqueue_retries(conn, self.name)
        log.error("notifier %s: dead letter %d (%s of alert %s) sent again and given up after "
                  "%d attempt(s): %s; still in notify_dead_letters", self.name, letter["id"],
                  n.type, n.alert_id, outcome.attempts, outcome.error)
        if dropped:
            log.error("notifier %s: the receiver still fails; %d other queued resend(s) left "
                      "as dead letters: ask again once it is mended", self.name, dropped)

    async def _advance(self, conn: Any, seq: int) -> None:
        await q.save_cursor(conn, self.name, seq)
        self.cursor = seq
        self._metrics.seq.labels(self.name).set(seq)

