"""This node's share of the cameras, held through leases in PostgreSQL.

Every `cluster.interval` (and at once when another node sends a nudge) the node reads the
cluster's census and its handovers, and acts: claims free cameras up to its fair share plus a
margin; hands cameras over to a node below its share; takes over what is handed to it.
Every `lease_seconds / 3` it renews its leases. It talks to PostgreSQL over a connection of
its own, so a busy pool never delays a renewal.

Handover, without a gap and without two nodes judging one camera:

1. the holder, above its share, offers the camera to a node below it ('offered');
2. the taker starts reading the stream, without judging it, and once packets flow (or
   after `WARM_UP` for a camera that sends none) says 'ready';
3. the holder stops judging the camera, then hands the lease over ('done') and stops
   reading the stream;
4. the taker, nudged by the holder, starts judging it from the alerts left open.

The camera is judged by nobody only between 3 and 4: one round trip through the database,
at most one `interval` if the nudge is lost. Its stream is read all along.

A node that cannot renew stops judging and reading every camera when its `LeaseClock`
says it can no longer prove its leases, before any other node may take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

import asyncpg

from vigie.cluster import _sql as sql
from vigie.cluster._plan import Census, LeaseClock, claim_count, handovers
from vigie.config import CAMERA_REASONS, Config
from vigie.errors import VigieError
from vigie.metrics import Metrics
from vigie.secrets import redact_text
from vigie.store import _alerts as alerts_q

__all__ = ["CameraLeases", "CameraWatch", "Superseded"]

log = logging.getLogger("vigie.cluster")

# A taker says 'ready' once packets flow, or after this long for a camera that sends none
# (an offline camera has nothing to warm up, and must not hold the handover forever).
WARM_UP = 5.0
# A node silent this long was not restarted under its name: say so, this often.
LOST_AFTER = 600.0
LOST_WARN_EVERY = 3600.0
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, VigieError)


class CameraWatch(Protocol):
    """What the leases drive: the camera supervisor, or a stand-in in tests."""

    def assign(self, watch: AbstractSet[str], judge: AbstractSet[str], *,
               references: Mapping[str, bytes] | None = None,
               open_reasons: Mapping[str, Collection[str]] | None = None) -> None: ...

    def receiving(self, key: str) -> bool:
        """Whether the camera's stream delivers packets here (a handover may complete)."""
        ...


class Superseded(VigieError):
    """Another process registered under this node's name: it holds the name now."""


class CameraLeases:
    def __init__(self, config: Config, dsn: str, cameras: CameraWatch, metrics: Metrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        cluster = config.cluster
        self.name = config.node.name
        self.incarnation = uuid.uuid4()
        self._dsn = dsn
        self._cameras = cameras
        self._metrics = metrics
        self._configured = [f"{s.id}/{c.id}" for s in config.sites for c in s.cameras]
        self.lease = LeaseClock(cluster.lease_seconds, clock)
        self._interval = cluster.interval
        self._margin = cluster.margin
        self._step = cluster.handover_step
        self._timeout = max(self._interval, self.lease.renew_every)
        self.held: set[str] = set()  # ours, as the database last said
        self.judging: set[str] = set()  # ours, judged by the supervisor
        self.warming: dict[str, float] = {}  # offered to us: read, not judged; since when
        self.members = 0
        self._conn: Any = None
        self._wake = asyncio.Event()
        # Pictures other nodes asked for, of cameras this node judges (vigie.cluster._status).
        self.pictures_wanted: set[str] = set()
        self.picture_asked = asyncio.Event()
        self._next_renew = -1.0
        self._next_lost_check = 0.0
        self._client_id = config.mqtt_client_id
        self._shared = config.cluster.mqtt == "shared"
        self._registered = False
        self._stopped = False

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Register, renew and run a first round: when this returns, the node watches its
        share (or everything, if it is alone)."""
        conn = await self._connection()
        await self._renew(conn)
        await self._round(conn)

    async def run(self) -> None:
        """Rounds and renewals until cancelled; the watchdog alongside."""
        watchdog = asyncio.create_task(self._watchdog(), name="vigie:lease-watchdog")
        try:
            await self._rounds()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    async def leave(self, budget: float = 2.0) -> None:
        """Graceful shutdown: stop judging and reading every camera, then free the leases so
        that the other nodes take them at once (not after they expire)."""
        self._stopped = True
        count = len(self.held)
        self._let_go()
        if not self._registered:
            return
        try:
            async with asyncio.timeout(budget):
                conn = await self._connection()
                freed = await conn.fetchval(sql.RELEASE, self.incarnation, self.name)
                await self._nudge(conn)
            log.info("left the cluster: %d camera lease(s) released", freed or 0)
        except DB_ERRORS as exc:
            log.warning("could not release %d camera lease(s) (%s): the other nodes take "
                        "them when they expire, within %.0fs", count, _why(exc),
                        self.lease.lease_seconds)
        finally:
            await self._close()

    # the loops ---------------------------------------------------------------------------

    async def _rounds(self) -> None:
        failures = 0
        while not self._stopped:
            try:
                conn = await self._connection()
                if self.lease.now() >= self._next_renew:
                    await self._renew(conn)
                await self._round(conn)
                if self.lease.now() >= self._next_lost_check:
                    self._next_lost_check = self.lease.now() + LOST_WARN_EVERY
                    await self._warn_lost(conn)
                failures = 0
            except Superseded as exc:
                log.error("%s; this process stops watching cameras", exc)
                self._let_go()
                return
            except DB_ERRORS as exc:
                failures += 1
                self._metrics.cluster_renew_failures.inc()
                (log.warning if failures == 1 else log.debug)(
                    "cluster round failed (%s); %.1fs of lease left", _why(exc),
                    max(0.0, self.lease.remaining()))
                await self._close()
            await self._sleep(self._interval if failures == 0
                              else min(self._interval, self.lease.renew_every / 2))

    async def _watchdog(self) -> None:
        """Let go of everything the moment the leases can no longer be proven."""
        while True:
            remaining = self.lease.remaining()
            if remaining <= 0 and (self.judging or self.warming):
                log.warning("no lease renewal for %.1fs: stopped watching %d camera(s), which "
                            "other nodes may take from now", self.lease.lease_seconds -
                            self.lease.guard, len(self.judging))
                self._metrics.cluster_lease_lapses.inc()
                self._let_go()
            await asyncio.sleep(min(remaining, self._interval) if remaining > 0
                                else self._interval)

    async def _sleep(self, seconds: float) -> None:
        until_renew = self._next_renew - self.lease.now()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
        # comes in the loop turn a nudge wakes it, and the rounds would go on after a stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(seconds, until_renew))):
                await self._wake.wait()
        self._wake.clear()

    # the steps ---------------------------------------------------------------------------

    async def _renew(self, conn: Any) -> None:
        sent = self.lease.now()
        async with asyncio.timeout(self._timeout), conn.transaction():
            alive = await conn.fetchval(sql.HEARTBEAT, self.name, self.incarnation,
                                        self.lease.lease_seconds, len(self.judging))
            if not alive:
                raise Superseded(f"node name {self.name!r} was taken by another process")
            rows = await conn.fetch(sql.RENEW, self.incarnation, self.lease.lease_seconds)
        self.lease.renewed(sent)
        self._next_renew = sent + self.lease.renew_every
        self.held = {r["camera"] for r in rows}
        lost = self.judging - self.held
        if lost:
            log.warning("%d camera lease(s) taken by other nodes while this one could not "
                        "renew them", len(lost))
            self.judging -= lost
            self._apply()

    async def _round(self, conn: Any) -> None:
        async with asyncio.timeout(self._timeout):
            census = await self._census(conn)
            nudge = await self._handovers(conn)
            nudge |= await self._claim(conn, census)
            nudge |= await self._offer(conn, census)
            await self._start(conn, self.held - self.judging)
            if nudge:
                await self._nudge(conn)

    async def _census(self, conn: Any) -> Census:
        members, free, total = sql.census_members(await conn.fetch(sql.CENSUS))
        self.members = len(members)
        self._metrics.cluster_nodes.set(len(members))
        return Census(self.incarnation, members, free, total)

    async def _handovers(self, conn: Any) -> bool:
        """Both sides of the handovers this node takes part in; True if others should look."""
        rows = await conn.fetch(sql.HANDOVERS, self.incarnation)
        me = self.incarnation
        offered = {r["camera"]: r["handover"] for r in rows if r["offered_to"] == me
                   and r["incarnation"] != me}
        done = {r["camera"] for r in rows if r["incarnation"] == me and r["handover"] == "done"}
        ready = {r["camera"] for r in rows if r["incarnation"] == me and r["handover"] == "ready"
                 and r["offered_to"] != me}
        # Taking: read the offered streams; say ready when they flow. Not while our own
        # leases cannot be proven: we may be cut off from the database.
        if not self.lease.valid:
            offered = {}
        now = self.lease.now()
        changed = False
        for camera in offered.keys() - self.warming.keys():
            self.warming[camera] = now
            changed = True
        for camera in self.warming.keys() - offered.keys() - done:
            del self.warming[camera]  # withdrawn (or we lost it to a claim)
            changed = True
        if changed:
            self._apply(await sql.references(conn, offered.keys() - self.judging))
        warm = [c for c, state in offered.items() if state == "offered" and (
            self._cameras.receiving(c) or now - self.warming[c] >= WARM_UP)]
        if warm and await conn.fetch(sql.READY, me, warm):
            await self._nudge(conn)  # the holder may hand them over now
        if done:
            adopted = {r["camera"] for r in await conn.fetch(sql.ADOPT, me)}
            self.held |= adopted
            await self._start(conn, adopted)
            self._metrics.cluster_handovers.labels("in").inc(len(adopted))
            log.info("took over %d camera(s) handed over by other nodes", len(adopted))
        # Giving: stop judging first, then hand the lease over; the stream goes after.
        if ready:
            self.judging -= ready
            self._apply()
            given = {r["camera"] for r in await conn.fetch(
                sql.TRANSFER, me, list(ready), self.lease.lease_seconds)}
            self.held -= given
            self._apply()
            if given:
                # Nobody judges these until the taker adopts them: tell it at once.
                await self._nudge(conn)
                self._metrics.cluster_handovers.labels("out").inc(len(given))
                log.info("handed %d camera(s) over to other nodes", len(given))
        withdrawn = await conn.fetch(sql.WITHDRAW, me, WARM_UP + 10 * self._interval)
        return bool(withdrawn)

    async def _claim(self, conn: Any, census: Census) -> bool:
        n = claim_count(census, self._margin)
        if n <= 0:
            return False
        rows = await conn.fetch(sql.CLAIM, self.name, self.incarnation, self._configured,
                                self.lease.lease_seconds, n)
        claimed = {r["camera"] for r in rows}
        if claimed:
            self.held |= claimed
            self._metrics.cluster_claims.inc(len(claimed))
            log.info("took %d free camera(s) (%d live node(s), %d camera(s))", len(claimed),
                     len(census.members), census.total)
            await self._start(conn, claimed)
        return False

    async def _offer(self, conn: Any, census: Census) -> bool:
        offered = 0
        for taker, n in handovers(census, self._step):
            offered += len(await conn.fetch(sql.OFFER, self.incarnation, taker, n))
        return offered > 0

    async def _start(self, conn: Any, cameras: AbstractSet[str]) -> None:
        """Judge cameras that became ours, resuming from the alerts their last holder left
        open; not while our leases cannot be proven (the next renewal brings them back)."""
        cameras = set(cameras) - self.judging
        if not cameras or not self.lease.valid:
            return
        reasons = await alerts_q.open_camera_reasons(conn, cameras, CAMERA_REASONS)
        refs = await sql.references(conn, cameras - self.warming.keys())
        self.judging |= cameras & self.held
        for camera in cameras:
            self.warming.pop(camera, None)
        self._apply(refs, reasons)

    def _apply(self, references: Mapping[str, bytes] | None = None,
               reasons: Mapping[str, Collection[str]] | None = None) -> None:
        self._cameras.assign(self.judging | self.warming.keys(), set(self.judging),
                             references=references, open_reasons=reasons)
        self._metrics.cluster_cameras_leased.set(len(self.held))

    def _let_go(self) -> None:
        self.judging.clear()
        self.warming.clear()
        self.held.clear()
        self.lease.lapse()
        self._apply()

    # the connection ----------------------------------------------------------------------

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        await self._close()
        conn = await asyncpg.connect(
            self._dsn, timeout=self._timeout,
            server_settings={"application_name": f"vigie-cluster {self.name}"[:63],
                             "statement_timeout": str(int(self._timeout * 1000))})
        # Every statement on this connection is the lease protocol's: counted, so that
        # what coordination costs the database is a figure (tests/bench/cluster.py).
        queries = self._metrics.cluster_queries.labels("leases")
        conn.add_query_logger(lambda record: queries.inc())
        try:
            if not self._registered:
                await self._register(conn)
            await conn.add_listener(sql.CHANNEL, self._heard)
            await conn.add_listener(sql.PICTURE_CHANNEL, self._picture_asked)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def _register(self, conn: Any) -> None:
        async with conn.transaction():
            previous = await conn.fetchrow(sql.PREVIOUS, self.name)
            await conn.execute(sql.REGISTER, self.name, self.incarnation, True,
                               self.lease.lease_seconds, 0)
            await conn.execute(sql.KNOW_CAMERAS, self._configured)
            await conn.execute(sql.FORGET_OLD_NODES)
            others = await conn.fetch(sql.OTHERS, self.name)
        if previous is not None and previous["state"] == "up" and previous["live"]:
            log.warning("node %r was still up in the database: a restart after a crash, or "
                        "another process with this name (it stops at its next heartbeat); "
                        "its camera leases are taken when they expire", self.name)
        lone = sorted(r["name"] for r in others if not r["clustered"])
        if lone:
            log.warning("node(s) %s share this database without cluster.enabled: they watch "
                        "every camera, so these cameras are watched twice", ", ".join(lone))
        self._registered = True
        log.info("joined the cluster as %s (%d other live node(s), %d camera(s) configured)",
                 self.name, len(others), len(self._configured))
        await self._nudge(conn)

    async def _warn_lost(self, conn: Any) -> None:
        rows = await conn.fetch(sql.LOST, LOST_AFTER)
        if not rows:
            return
        names = ", ".join(f"{r['name']} (silent {r['silent'].total_seconds() / 60:.0f} min)"
                          for r in rows)
        if self._shared:
            # Its MQTT client id, as this node's is built from its own name.
            ids = ", ".join(self._client_id.replace(self.name, r["name"], 1)
                            if self.name in self._client_id else f"vigie-{r['name']}"
                            for r in rows)
            log.warning("node(s) %s lost and not restarted under their name: the broker "
                        "keeps their share of the sensor events in their MQTT session(s) "
                        "(%s); start a node under each name once to store them (README: "
                        "orphaned MQTT sessions)", names, ids)
        else:
            log.warning("node(s) %s lost and not restarted under their name", names)

    def _picture_asked(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload in self.judging:
            self.pictures_wanted.add(payload)
            self.picture_asked.set()

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload != str(self.incarnation):
            self._wake.set()

    async def _nudge(self, conn: Any) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", sql.CHANNEL, str(self.incarnation))

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*DB_ERRORS):
                await asyncio.wait_for(conn.close(), 1.0)
            if not conn.is_closed():
                conn.terminate()


def _why(exc: BaseException) -> str:
    return redact_text(str(exc)) or type(exc).__name__
