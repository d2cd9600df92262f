"""The live feed: alert and camera-state changes, numbered cluster-wide, fanned out to the
node's WebSocket clients.

Producers (the alert service, the camera supervisor) hand a change over without waiting. A
writer inserts changes into the `feed` table in short transactions that take one advisory
lock, so seq order is commit order, and announces them with pg_notify. Every node LISTENs on
a connection of its own and reads the rows after the last one it dispatched, by seq: a
notification that comes late, out of order or not at all (while reconnecting) leaves no
gap. Each client has a bounded queue; one that cannot keep up is dropped, never waited for.

While the database is away nothing is numbered, yet an intrusion must still reach the
operators watching this node: `announce` hands the alert changes made in memory (see
AlertService.announce) straight to the subscriptions that take them (the WebSocket clients),
as provisional messages without a seq, and so does `camera_state` with what it cannot write.
When the database is back, the stored change is written and read back as usual; a
subscription that was told the provisional `opened` or `resolved` of that alert skips it
(it would be a second page for the same alert).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

import asyncpg
import orjson
from prometheus_client import Counter, Gauge

from vigie.alerts._service import AlertChange, Clock, utc_now
from vigie.errors import StoreError, StoreUnavailable, VigieError
from vigie.metrics import Metrics
from vigie.secrets import redact_text
from vigie.store import Store
from vigie.store._direct import DRIVER_ERRORS, close_quietly

__all__ = ["LAGGED", "SHUTDOWN", "SLOW", "Feed", "FeedMessage", "Subscription"]

log = logging.getLogger("vigie.feed")

CHANNEL = "vigie_feed"
WRITE_LOCK = 0x76696769_6566  # "vigief": taken by every node's writer, in every write
BATCH = 500  # changes per insert, rows per read
RETRY_MIN, RETRY_MAX = 0.2, 15.0
SLOW, LAGGED, SHUTDOWN = "slow", "lagged", "shutdown"  # why a subscription was closed
# Provisional changes a subscription remembers, to skip their stored copy: the ones a
# second copy of which would page an operator again.
ANNOUNCED_ONCE = ("alert.opened", "alert.resolved")
ANNOUNCED_KEEP = 10_000  # per subscription; a stored copy never read back is forgotten

_COLUMNS = "seq, type, at, site, payload::text AS payload"
# One statement, so one round trip and its own transaction: the cluster-wide lock first (seq
# order is then commit order), the rows, the notification; the rows come back as the
# followers read them, for the writer's node to dispatch itself. The lock is taken before
# any row is numbered: every row comes through the join with `locked`. A writer waits for
# the lock at most LOCK_WAIT seconds (the client cancels the statement).
LOCK_WAIT = 5.0
_INSERT = f"""
    WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock({WRITE_LOCK})),
    added AS (
        INSERT INTO feed (at, type, site, payload)
        SELECT u.at, u.type, u.site, u.payload::jsonb
        FROM locked, unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[])
             WITH ORDINALITY AS u(at, type, site, payload, n)
        ORDER BY u.n
        RETURNING {_COLUMNS}
    ), notified AS (
        SELECT pg_notify('{CHANNEL}', max(seq)::text) FROM added)
    SELECT added.* FROM added, notified ORDER BY seq"""
_END = "SELECT greatest(trimmed_through, (SELECT max(seq) FROM feed)) FROM feed_horizon"
_TRIM = """
    WITH cut AS (
        SELECT greatest(
            (SELECT max(seq) FROM feed WHERE stored_at < now() - make_interval(secs => $1)),
            (SELECT seq FROM feed ORDER BY seq DESC OFFSET $2 LIMIT 1)) AS upto
    ), gone AS (
        DELETE FROM feed WHERE seq <= (SELECT upto FROM cut) RETURNING seq
    ), moved AS (
        UPDATE feed_horizon
        SET trimmed_through = greatest(trimmed_through, (SELECT max(seq) FROM gone))
        WHERE EXISTS (SELECT 1 FROM gone)
    )
    SELECT count(*) FROM gone"""


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.5, 1.5)


@dataclass(frozen=True, slots=True)
class FeedMessage:
    seq: int
    type: str
    site: str
    wire: str  # the JSON text clients get, encoded once for all of them
    # Told while the database is away: not stored yet, no seq of its own (`seq` is the
    # node's head then, and `wire` says `"seq": null, "provisional": true`).
    provisional: bool = False

    @classmethod
    def from_row(cls, row: Any) -> FeedMessage:
        body = {"seq": row["seq"], "type": row["type"], "at": row["at"].isoformat(),
                "site": row["site"], **orjson.loads(row["payload"])}
        return cls(row["seq"], row["type"], row["site"], orjson.dumps(body).decode())


@dataclass(slots=True)
class _Change:
    """A change waiting to be written. Its JSON is made when written: a burst of repeats of
    one alert then costs one serialisation, not one per repeat."""

    at: datetime
    type: str
    site: str
    body: dict[str, Any] | AlertChange

    @property
    def payload(self) -> str:
        body = self.body
        if isinstance(body, AlertChange):
            body = {"actor": body.actor, "alert": body.alert.to_json()}
        return orjson.dumps(body).decode()


class Subscription:
    """One client's share of the live messages: those of its sites with a seq above
    `start`, in order. Closed, and emptied, when `limit` messages wait unsent (SLOW) or the
    node shuts down (SHUTDOWN)."""

    def __init__(self, sites: frozenset[str] | None, start: int, limit: int,
                 provisional: bool = False) -> None:
        self.sites = sites
        self.start = start
        self.closed_because: str | None = None
        self._limit = limit
        self._queue: deque[FeedMessage] = deque()
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        # Takes provisional messages; (type, alert id) of those told, until their stored
        # copy comes (insertion-ordered: the oldest is forgotten first).
        self.announced: dict[tuple[str, str], None] | None = {} if provisional else None

    def offer(self, message: FeedMessage) -> bool:
        """Queue a message (if the client may see it); False if that closes the
        subscription, the client being too far behind."""
        if self.closed_because is not None or (
                self.sites is not None and message.site not in self.sites):
            return True
        if (self.announced is not None or message.provisional) and not self._news(message):
            return True
        if len(self._queue) >= self._limit:
            self.close(SLOW)
            return False
        self._queue.append(message)
        self._ready.set()
        return True

    def _news(self, message: FeedMessage) -> bool:
        """Whether a message is news to this client: a provisional one only to a client that
        takes them, the stored copy of one it was told not."""
        announced = self.announced
        if announced is None:
            return not message.provisional
        if (not message.provisional and not announced) or message.type not in ANNOUNCED_ONCE:
            return True  # the usual case: no message parsed again
        key = (message.type, _alert_id(message))
        if message.provisional:
            announced[key] = None
            if len(announced) > ANNOUNCED_KEEP:
                del announced[next(iter(announced))]
            return True
        if key in announced:
            del announced[key]
            return False
        return True

    def close(self, reason: str) -> None:
        if self.closed_because is None:
            self.closed_because = reason
        self._queue.clear()
        self._ready.set()
        self._closed.set()

    async def get(self) -> FeedMessage | None:
        """The next message; None once closed."""
        while not self._queue:
            if self.closed_because is not None:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def wait_closed(self) -> str:
        await self._closed.wait()
        assert self.closed_because is not None
        return self.closed_because


class Feed:
    def __init__(self, store: Store, metrics: Metrics, dsn: str, *, clock: Clock = utc_now,
                 client_queue: int = 5_000, keep_seconds: float = 24 * 3600,
                 keep_rows: int = 100_000, outbox: int = 100_000,
                 poll_every: float = 5.0, trim_every: float = 60.0) -> None:
        self._store = store
        self._metrics = metrics
        self._dsn = dsn  # a secret: never logged
        self._clock = clock
        self.client_queue = client_queue
        self.keep_seconds = keep_seconds
        self.keep_rows = keep_rows
        self.poll_every = poll_every  # in case a notification is lost: read anyway
        self.trim_every = trim_every
        self.head = 0  # seq of the newest message dispatched on this node
        self._positioned = False  # `head` read from the database (`start`)
        self.following = False  # listening to the database right now
        self._outbox: deque[_Change] = deque()
        self._repeats: dict[uuid.UUID, _Change] = {}  # repeats waiting, by alert id
        self._outbox_limit = outbox
        self._outbox_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._overflowing = False
        self._subscriptions: set[Subscription] = set()
        r = metrics.registry
        self._clients = Gauge("vigie_feed_clients", "Live-feed clients on this node",
                              registry=r)
        self._dropped = Counter("vigie_feed_clients_dropped",
                                "Live-feed clients dropped for falling behind", registry=r)
        self._lost = Counter("vigie_feed_lost",
                             "Changes left out of the feed (outbox full or refused)",
                             registry=r)
        self._seq = Gauge("vigie_feed_seq", "Newest feed seq dispatched on this node",
                          registry=r)

    async def start(self) -> None:
        """Dispatch from the current end of the feed: a node does not replay history. With
        the database away, the end is read later (`start_on`), before anything is written."""
        try:
            _, self.head = await self.position()
        except StoreUnavailable:
            self._positioned = False
            return
        self._positioned = True
        self._seq.set(self.head)

    async def start_on(self, conn: Any) -> None:
        """`start`, late, on the given connection (a node started while the database was
        away, before its store opens to the writers); no-op if the follower did it first."""
        if not self._positioned:
            self.head = int(await conn.fetchval(_END))
            self._positioned = True
            self._seq.set(self.head)

    # producers: called on the event loop, never wait ---------------------------------------

    def alert_changed(self, change: AlertChange) -> None:
        """An AlertService listener. Repeats of an alert still waiting to be written fold
        into the waiting one (its count and last_seen_at move on): under a burst the feed
        carries each alert's latest state, not every repeat."""
        if change.action == "repeated":
            waiting = self._repeats.get(change.alert.id)
            if waiting is not None:
                waiting.body, waiting.at = change, self._clock()
                return
        pending = self._publish(f"alert.{change.action}", change.alert.site, self._clock(),
                                change)
        if pending is not None and change.action == "repeated":
            self._repeats[change.alert.id] = pending
        else:
            self._repeats.pop(change.alert.id, None)  # later news: do not fold into older

    def announce(self, change: AlertChange) -> None:
        """An AlertService listener of changes made in memory while the database is away:
        straight to this node's clients that take provisional messages."""
        self._tell_now(f"alert.{change.action}", change.alert.site, self._clock(),
                       {"actor": change.actor, "alert": change.alert.to_json()})

    def camera_state(self, site: str, camera: str, state: str, reasons: Iterable[str],
                     at: datetime) -> None:
        """The camera supervisor's hook: a camera's state or reasons changed."""
        body = {"camera": {"id": camera, "site": site, "state": state,
                           "reasons": sorted(reasons), "since": at.isoformat()}}
        self._publish("camera.state", site, at, body)
        if not self._store.available:
            # Not written before the database is back: this node's clients see it now (the
            # stored copy comes later; a state told twice is the same state).
            self._tell_now("camera.state", site, at, body)

    def _tell_now(self, type_: str, site: str, at: datetime, body: dict[str, Any]) -> None:
        """A provisional message (no seq) to the subscriptions that take them."""
        wire = orjson.dumps({"seq": None, "type": type_, "at": at.isoformat(), "site": site,
                             "provisional": True, **body}).decode()
        message = FeedMessage(self.head, type_, site, wire, provisional=True)
        behind = [s for s in self._subscriptions
                  if s.announced is not None and not s.offer(message)]
        if behind:
            self._subscriptions.difference_update(behind)
            self._dropped.inc(len(behind))
            self._clients.set(len(self._subscriptions))

    def _publish(self, type_: str, site: str, at: datetime,
                 body: dict[str, Any] | AlertChange) -> _Change | None:
        if len(self._outbox) >= self._outbox_limit:
            self._lost.inc()
            if not self._overflowing:
                log.error("feed: %d changes wait to be written; leaving new ones out",
                          len(self._outbox))
                self._overflowing = True
            return None
        change = _Change(at, type_, site, body)
        self._outbox.append(change)
        self._outbox_ready.set()
        self._drained.clear()
        return change

    # consumers ---------------------------------------------------------------------------

    def subscribe(self, sites: frozenset[str] | None, *, provisional: bool = False
                  ) -> Subscription:
        """Every message dispatched from now on (seq > the subscription's `start`); with
        `provisional`, the changes announced while the database is away too."""
        subscription = Subscription(sites, self.head, self.client_queue, provisional)
        self._subscriptions.add(subscription)
        self._clients.set(len(self._subscriptions))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        self._clients.set(len(self._subscriptions))

    def close_subscriptions(self, reason: str = SHUTDOWN) -> None:
        for subscription in self._subscriptions:
            subscription.close(reason)

    async def position(self) -> tuple[int, int]:
        """(trimmed_through, newest): a client that saw seq N has a gap if N is below the
        first, and comes from elsewhere if N is above the second."""
        async with self._store.connection() as conn:
            row = await conn.fetchrow(
                "SELECT trimmed_through, greatest(trimmed_through, (SELECT max(seq) FROM feed))"
                " AS newest FROM feed_horizon")
        return int(row["trimmed_through"]), int(row["newest"])

    async def replay(self, after: int, upto: int, sites: frozenset[str] | None,
                     limit: int = BATCH) -> tuple[int, list[FeedMessage]]:
        """(trimmed_through, the first `limit` stored messages in (after, upto] of `sites`),
        read in one snapshot: if trimmed_through > after, some are missing."""
        async with self._store.connection() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            horizon = await conn.fetchval("SELECT trimmed_through FROM feed_horizon")
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM feed WHERE seq > $1 AND seq <= $2"
                " AND ($3::text[] IS NULL OR site = ANY($3::text[])) ORDER BY seq LIMIT $4",
                after, upto, sorted(sites) if sites is not None else None, limit)
        return int(horizon), [FeedMessage.from_row(r) for r in rows]

    async def trim(self) -> int:
        """Forget what is older than `keep_seconds` or beyond the last `keep_rows`."""
        async with self._store.connection() as conn:
            return int(await conn.fetchval(_TRIM, float(self.keep_seconds), self.keep_rows))

    # loops -------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_forever(), name="vigie:feed-writer")
            tg.create_task(self._follow_forever(), name="vigie:feed-follower")
            tg.create_task(self._trim_forever(), name="vigie:feed-trim")

    async def flush(self, timeout: float) -> bool:
        """Wait until every change handed over is written (the writer must be running)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        if self._outbox:
            log.warning("feed: %d change(s) not written at shutdown", len(self._outbox))
        return not self._outbox

    async def _write_forever(self) -> None:
        delay = RETRY_MIN
        while True:
            await self._outbox_ready.wait()
            try:
                await self._write_some()
                delay = RETRY_MIN
            except StoreError as exc:
                self._metrics.db_errors.labels("feed").inc()
                log.warning("feed: cannot write %d change(s) yet: %s", len(self._outbox), exc)
                await asyncio.sleep(_jitter(delay))
                delay = min(2 * delay, RETRY_MAX)
            if not self._outbox:
                self._outbox_ready.clear()
                self._drained.set()
                self._overflowing = False

    async def _write_some(self) -> None:
        batch = list(islice(self._outbox, BATCH))
        for change in batch:  # being written: later repeats are news, not folds
            self._forget(change)
        try:
            await self._insert(batch)
        except StoreError as exc:
            if not isinstance(exc.__cause__, asyncpg.DataError):
                raise
            # One of them cannot be stored: keep the others, in order.
            for change in batch:
                try:
                    await self._insert([change])
                except StoreError as one:
                    if not isinstance(one.__cause__, asyncpg.DataError):
                        raise
                    self._lost.inc()
                    log.error("feed: the database refuses a %s change: %s", change.type, one)
                self._outbox.popleft()
            return
        for _ in batch:
            self._outbox.popleft()

    def _forget(self, written: _Change) -> None:
        """A repeat being written no longer takes folds: the next repeat is news again."""
        if isinstance(written.body, AlertChange) and written.type == "alert.repeated":
            alert_id = written.body.alert.id
            if self._repeats.get(alert_id) is written:
                del self._repeats[alert_id]

    async def _insert(self, changes: list[_Change]) -> None:
        if not changes:
            return
        async with self._store.connection() as conn:
            rows = await conn.fetch(_INSERT, [c.at for c in changes],
                                    [c.type for c in changes], [c.site for c in changes],
                                    [c.payload for c in changes], timeout=LOCK_WAIT)
        # Committed. This node's clients get them now, not after the notification's round
        # trip and a read: when nothing committed before them is still unread here (the
        # advisory lock makes seq order commit order), they are next in line. Otherwise,
        # or when they are more than the follower hands clients at once (a burst must not
        # look like a slow client), the follower reads them in order with what comes before.
        if rows and rows[0]["seq"] == self.head + 1 and len(rows) <= self._page:
            for row in rows:
                self._dispatch(FeedMessage.from_row(row))

    async def _follow_forever(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5, command_timeout=30,
                                             server_settings={"application_name": "vigie-feed"})
            except DRIVER_ERRORS as exc:
                log.warning("feed: cannot connect to follow changes: %s", redact_text(str(exc)))
            else:
                try:
                    await self._follow(conn)
                except DRIVER_ERRORS as exc:
                    log.warning("feed: lost the database, following again: %s",
                                redact_text(str(exc)) or type(exc).__name__)
                finally:
                    if self.following:
                        delay = RETRY_MIN
                    self.following = False
                    await close_quietly(conn)
            await asyncio.sleep(_jitter(delay))
            delay = min(2 * delay, RETRY_MAX)

    async def _follow(self, conn: Any) -> None:
        wake = asyncio.Event()
        conn.add_termination_listener(lambda _conn: wake.set())
        await conn.add_listener(CHANNEL, lambda *_: wake.set())
        await self.start_on(conn)  # started while the database was away
        self.following = True
        while True:
            wake.clear()  # before reading: a notification during the read is not lost
            await self._catch_up(conn)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_every):
                    await wake.wait()

    @property
    def _page(self) -> int:
        """Messages handed to clients at once: well below a client's queue, with the
        clients' senders running in between, so that a burst does not look like a slow
        client."""
        return max(1, min(BATCH, self.client_queue // 2))

    async def _catch_up(self, conn: Any) -> None:
        page = self._page
        while True:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM feed WHERE seq > $1 ORDER BY seq LIMIT $2",
                self.head, page)
            if rows and rows[0]["seq"] > self.head + 1:
                await self._check_continuity(conn)
            for row in rows:
                self._dispatch(FeedMessage.from_row(row))
            if len(rows) < page:
                return

    async def _check_continuity(self, conn: Any) -> None:
        """A hole in the seqs is usually a rolled-back write; but if what this node has not
        read yet was trimmed (it was away for long), its clients must resume elsewhere."""
        trimmed = await conn.fetchval("SELECT trimmed_through FROM feed_horizon")
        if trimmed > self.head:
            log.warning("feed: changes %d to %d were trimmed before this node read them",
                        self.head + 1, trimmed)
            self.close_subscriptions(LAGGED)

    def _dispatch(self, message: FeedMessage) -> None:
        if message.seq <= self.head:
            return  # dispatched already, by the writer or by an earlier read
        behind = [s for s in self._subscriptions if not s.offer(message)]
        if behind:
            self._subscriptions.difference_update(behind)
            self._dropped.inc(len(behind))
            self._clients.set(len(self._subscriptions))
        self.head = message.seq
        self._seq.set(message.seq)

    async def _trim_forever(self) -> None:
        while True:
            try:
                trimmed = await self.trim()
                if trimmed:
                    log.debug("feed: trimmed %d old message(s)", trimmed)
            except VigieError as exc:
                log.warning("feed: cannot trim: %s", exc)
            await asyncio.sleep(self.trim_every)


def _alert_id(message: FeedMessage) -> str:
    """The alert a message is about (parsed again: only for the few messages compared with
    what a client was told during an outage)."""
    alert = orjson.loads(message.wire).get("alert")
    return str(alert.get("id")) if isinstance(alert, dict) else ""

