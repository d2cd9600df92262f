"""The composition root: config → store → alerts → sensors → API, in one place.

Each resource is one async context, entered in dependency order and left in reverse on
shutdown: the API stops answering, the MQTT subscription stops, what was received is written
and acknowledged, the loops stop, then the database closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from vigie.alerts import (
    AlertChange,
    AlertService,
    AlertTimers,
    Clock,
    Decision,
    RuleBook,
    Schedule,
    SchoolCalendar,
    escalation_by_severity,
    utc_now,
)
from vigie.alerts._correlation import Correlator, WatchedCameras
from vigie.alerts._feed import Feed
from vigie.alerts._storms import StormGuard
from vigie.api import ApiContext, Authenticator, make_api
from vigie.api._stream import install_stream
from vigie.api._token_snapshot import FILE_NAME as TOKEN_SNAPSHOT
from vigie.api._token_snapshot import TokenSnapshot
from vigie.cameras import CameraSupervisor
from vigie.cluster import (
    HEARTBEAT_LOCK,
    MQTT_LOCK,
    CameraLeases,
    CameraStatusPublisher,
    Leadership,
    NodePresence,
)
from vigie.config import Config, MqttConfig
from vigie.console import install_console
from vigie.errors import StoreUnavailable, VigieError
from vigie.metrics import Metrics
from vigie.notify import Notifiers
from vigie.retention import RetentionJob
from vigie.sensors import HeartbeatMonitor, IngestWriter, MqttSubscriber, TopicRouter
from vigie.sensors._inbox import Inbox
from vigie.sensors._mqtt import Received
from vigie.spool import AuditSpool, Spool
from vigie.store import Store
from vigie.store._migrate import MigrationProgress
from vigie.store._sync import sync_config

__all__ = ["Node", "open_store", "running_node", "settle_memory"]

log = logging.getLogger("vigie")

# Of the shutdown budget, what is kept for the steps after the ingest drain (cameras, feed,
# database): the drain gets the rest.
AFTER_DRAIN = 0.4
# Seconds between attempts at a database away at start: one connection attempt is cheap,
# and the node is not ready until it gets through.
RETRY_MIN, RETRY_MAX = 0.25, 2.0


@dataclass
class Node:
    """The running parts of one vigie node."""

    config: Config
    metrics: Metrics
    clock: Clock
    store: Store
    alerts: AlertService
    schedule: Schedule | None = None
    cameras: CameraSupervisor | None = None
    feed: Feed | None = None
    notifiers: Notifiers | None = None
    subscriber: MqttSubscriber | None = None
    writer: IngestWriter | None = None
    api_url: str = ""
    dsn: str = ""
    leases: CameraLeases | None = None  # several nodes: this node's share of the cameras
    mqtt_election: Leadership | None = None  # cluster.mqtt: elected
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Started while PostgreSQL was away: what the parts put off until it answers (run in
    # order once migrated and synced, by `_open_when_reachable`).
    deferred: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    stopping_since: float | None = None  # time.monotonic() when shutdown began

    @property
    def db_ok(self) -> bool:
        return self.store.available

    def remaining(self) -> float:
        """Seconds left of the shutdown budget (the whole budget before shutdown)."""
        budget = self.config.node.shutdown_budget
        if self.stopping_since is None:
            return budget
        return max(0.0, budget - (time.monotonic() - self.stopping_since))

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Start a loop the node owns; `stop` cancels it and awaits the cancellation."""
        task = asyncio.create_task(coro, name=f"vigie:{name}")
        self.tasks[name] = task
        task.add_done_callback(_report_crash)

    async def stop(self, *names: str, budget: float = 10.0) -> None:
        """Cancel loops and wait for them, within a time budget (a loop that does not stop
        is named in the log; shutdown goes on)."""
        tasks = [self.tasks.pop(n) for n in names if n in self.tasks]
        for t in tasks:
            t.cancel()
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=budget)
        for t in stuck:
            log.error("loop %s did not stop within %.0fs", t.get_name(), budget)

    def readiness(self) -> dict[str, str]:
        checks = {"database": self.store.why_unavailable or "ok"}
        standby = self.mqtt_election is not None and not self.mqtt_election.leading
        if self.subscriber is not None and not standby:
            checks["mqtt"] = "ok" if self.subscriber.connected else (
                f"not connected to {self.subscriber.endpoint}")
        if self.writer is not None:
            checks["ingest"] = self.writer.failing or "ok"
        for name, task in self.tasks.items():
            if task.done():
                checks[f"loop:{name}"] = "stopped"
        return checks


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loop %s stopped: %r", task.get_name(), task.exception())


async def database_dsn(config: Config, stack: AsyncExitStack) -> str:
    """The configured PostgreSQL's DSN, or the embedded one's (started for the stack)."""
    configured = config.database.connect_dsn()  # password_file and sslmode merged in
    if configured is not None:
        return configured
    from vigie.store._embedded import embedded_postgres

    dsn: str = await stack.enter_async_context(embedded_postgres(config.node.data_dir))
    return dsn


def load_schedule(config: Config) -> Schedule:
    """Opening hours, public holidays and the school calendar, shared by rules and API."""
    path = config.alerts.school_calendar
    return Schedule(config.sites, SchoolCalendar.load(path) if path is not None else None)


async def open_store(config: Config, stack: AsyncExitStack, dsn: str | None = None,
                     on_progress: MigrationProgress | None = None) -> Store:
    """Connect to the configured PostgreSQL, or start the embedded one; migrate."""
    dsn = dsn or await database_dsn(config, stack)
    store = await Store.open(dsn, size=config.database.pool_size,
                             timeout=config.database.connect_timeout)
    stack.push_async_callback(store.close)
    applied = await store.migrate(on_progress)
    if applied:
        log.info("database schema migrated (%d migration(s))", applied)
    return store


async def _store_for_node(config: Config, stack: AsyncExitStack, dsn: str) -> Store:
    """`open_store`, or, if a configured PostgreSQL cannot be reached, a store that waits for
    it (`Store.open_later`): a node restarted during an outage must come up and spool. The
    embedded server is vigie's own: it is up, or the node does not start."""
    try:
        return await open_store(config, stack, dsn)
    except StoreUnavailable as exc:
        if config.database.connect_dsn() is None:
            raise
        log.warning("%s; starting without it: migrations, config sync and the spool's "
                    "replay wait until it answers", exc)
        store = await Store.open_later(dsn, size=config.database.pool_size,
                                       timeout=config.database.connect_timeout,
                                       reason=str(exc))
        stack.push_async_callback(store.close)
        return store


async def _open_when_reachable(node: Node) -> None:
    """Started while PostgreSQL was away: once it answers, migrate (under the advisory
    lock: other nodes may be at it too) and sync the config, then open the store to the
    rest of the node (the ingest writer replays its spool) and run what the parts put off."""
    delay = RETRY_MIN
    while True:
        try:
            applied = await node.store.migrate()
            async with node.store.connection(before_ready=True) as conn:
                await sync_config(conn, node.config)
                if node.feed is not None:  # before any change is written
                    await node.feed.start_on(conn)
            break
        except StoreUnavailable:
            pass  # still away
        except Exception as exc:  # reachable, but cannot be set up: say so, try again
            log.error("database reachable but not ready: %s", exc)
            node.store.pending = f"cannot be set up: {exc}"
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(2 * delay, RETRY_MAX)
    log.info("database reached: schema migrated (%d migration(s)), config synced", applied)
    node.store.opened()
    node.metrics.db_up.set(1)
    for step in node.deferred:
        while True:
            try:
                await step()
                break
            except StoreUnavailable:  # away again already: the step waits for it
                await asyncio.sleep(RETRY_MAX * random.uniform(0.5, 1.5))
            except VigieError as exc:
                log.warning("deferred start-up step failed: %s", exc)
                break
    node.deferred.clear()
    node.tasks.pop("db-start", None)  # done, not dead: /readyz must not call it stopped


async def _now_or_later(node: Node, step: Callable[[], Awaitable[object]]) -> None:
    """A start-up step that needs the database: now, or, if the node started without it,
    once it answers (`_open_when_reachable`)."""
    if node.store.pending:
        node.deferred.append(step)
    else:
        await step()


async def _ping_forever(node: Node, interval: float = 2.0) -> None:
    """Notice an outage while nothing else uses the database, and reconnect after one: while
    the store is marked away, a ping fails at once until its (backed-off, jittered) time to
    try again, so this loop may run often."""
    while True:
        await asyncio.sleep(interval if node.store.available else 0.25)
        try:
            # Not wait_for: on Python 3.11 it swallows a cancel (the node stopping) that
            # comes in the loop turn the ping answers, and this loop would go on.
            async with asyncio.timeout(interval):
                await node.store.ping()
        except TimeoutError:
            node.store.mark_away(f"no answer within {interval:.0f}s")
        except VigieError:
            pass  # the store knows why, and when to try again
        node.metrics.db_up.set(1 if node.store.available else 0)


@asynccontextmanager
async def _sensors(node: Node) -> AsyncIterator[None]:
    config = node.config
    assert node.schedule is not None
    rules = RuleBook(config, node.schedule.is_open)
    inbox: Inbox[Received] = Inbox(config.database.write_queue)
    _measure(node, "ingest", inbox.__len__, inbox.capacity)
    node.metrics.queue_peak.labels("ingest").set_function(lambda: inbox.peak)
    mqtt, client_id = _mqtt_settings(config)
    subscriber = MqttSubscriber(mqtt, client_id, TopicRouter(config),
                                inbox, node.metrics, node.clock)
    spool: Spool | None = None
    if config.spool.enabled:
        spool = await Spool.open(config.node.data_dir / "spool", config.spool.segment_size)
        node.metrics.spool_limit.set(config.spool.max_size)
        if spool.pending_messages:
            log.info("spool: %d message(s) from before the restart, to be replayed",
                     spool.pending_messages)
    writer = IngestWriter(node.store, inbox, subscriber.ack_many, rules, node.alerts,
                          node.metrics, config.database.batch_size, spool=spool,
                          spool_limit=config.spool.max_size, node=config.node.name,
                          replay_batch=config.spool.replay_batch)
    node.subscriber, node.writer = subscriber, writer
    heartbeat = HeartbeatMonitor(config, rules, node.alerts, writer.last_seen, node.clock)

    async def seed() -> None:
        heartbeat.carry_silent(await _seed_last_seen(node.store, writer.last_seen))

    await _now_or_later(node, seed)
    if node.store.pending:
        node.deferred.append(writer.retry_soon)
    node.spawn("ingest-writer", writer.run())
    if heartbeat.enabled and config.cluster.enabled:
        # Each node stores only its share of the events: one node at a time watches for
        # silent sensors, on what all of them stored.
        node.spawn("heartbeat", Leadership(node.dsn, HEARTBEAT_LOCK, "sensor heartbeats").run(
            lambda: _heartbeat_leader(node, rules, writer)))
    elif heartbeat.enabled:
        node.spawn("heartbeat", heartbeat.run())
    if config.cluster.enabled and config.cluster.mqtt == "elected":
        node.mqtt_election = Leadership(
            node.dsn, MQTT_LOCK, "MQTT subscriber", interval=config.cluster.interval,
            on_change=lambda leading: node.metrics.cluster_mqtt_leader.set(int(leading)))
        node.spawn("mqtt", node.mqtt_election.run(subscriber.run))
    else:
        node.spawn("mqtt", subscriber.run())
    try:
        yield
    finally:
        # Stop reading; write (or spool) and acknowledge what was received, over the
        # connection that is still up; then disconnect. Anything else stays at the broker
        # for our session. In a shared group, leave it first: the others take this node's
        # share meanwhile.
        if mqtt.shared_group and not await subscriber.leave_shared_group(
                min(1.0, node.remaining() / 5)):
            log.warning("the broker did not confirm the unsubscription: messages may wait in "
                        "this node's session until a node of this name comes back")
        subscriber.pause()
        inbox.close()
        writing = node.tasks.get("ingest-writer")
        drain = max(0.5, node.remaining() - AFTER_DRAIN * node.config.node.shutdown_budget)
        if writing is not None:
            done, _ = await asyncio.wait({writing}, timeout=drain)
            if not done:
                log.warning("could not write every received message in %.1fs; the rest "
                            "was not acknowledged and the broker keeps it", drain)
        await subscriber.stop()
        await node.stop("mqtt", "ingest-writer", "heartbeat", budget=1.0)
        if spool is not None:
            await spool.close()


def _mqtt_settings(config: Config) -> tuple[MqttConfig, str]:
    """The broker settings and client id of this node: in a cluster, a shared subscription
    group ("vigie" unless named), or, elected, one client id for whichever node subscribes,
    so that the persistent session and what it holds follow the election."""
    if not config.cluster.enabled:
        return config.mqtt, config.mqtt_client_id
    if config.cluster.mqtt == "elected":
        return config.mqtt, config.mqtt.client_id or f"vigie-elected-{config.mqtt.topic_prefix}"
    group = config.mqtt.shared_group or "vigie"
    return config.mqtt.model_copy(update={"shared_group": group}), config.mqtt_client_id


async def _heartbeat_leader(node: Node, rules: RuleBook, writer: IngestWriter) -> None:
    """Silent sensors, watched by the elected node: silence counts from its election, the
    alerts already open are known, and what the other nodes stored is read every round."""
    silent = await _seed_last_seen(node.store, writer.last_seen)
    monitor = HeartbeatMonitor(node.config, rules, node.alerts, writer.last_seen, node.clock,
                               silent)

    async def follow() -> None:
        while True:
            await asyncio.sleep(monitor.interval)
            with contextlib.suppress(VigieError):
                await _seed_last_seen(node.store, writer.last_seen)

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(monitor.run())
        tasks.create_task(follow())


async def _seed_last_seen(store: Store, last_seen: dict[tuple[str, str], datetime]
                          ) -> set[tuple[str, str]]:
    """When each sensor last spoke; returns the sensors with an open device_silent alert."""
    async with store.connection() as conn:
        rows = await conn.fetch(
            "SELECT site, id, last_event_at FROM sensors WHERE last_event_at IS NOT NULL")
        silent = await conn.fetch(
            "SELECT site, source FROM alerts WHERE kind = 'device_silent' "
            "AND state <> 'resolved'")
    last_seen.update({(r["site"], r["id"]): r["last_event_at"] for r in rows})
    return {(r["site"], r["source"]) for r in silent}


@asynccontextmanager
async def _feed(node: Node, dsn: str) -> AsyncIterator[None]:
    """Before every producer of changes and the API, so it is left after them: what they
    published is written before it stops."""
    feed = Feed(node.store, node.metrics, dsn, clock=node.clock,
                keep_seconds=node.config.retention.feed)
    await feed.start()
    node.alerts.subscribe(feed.alert_changed)
    node.alerts.subscribe_provisional(feed.announce)
    node.feed = feed
    node.spawn("feed", feed.run())
    try:
        yield
    finally:
        # Away, the database takes nothing: do not spend the budget waiting for it.
        await feed.flush(max(0.1, node.remaining() - 0.5) if node.store.available else 0.2)
        await node.stop("feed", budget=1.0)


@asynccontextmanager
async def _notifiers(node: Node, dsn: str) -> AsyncIterator[None]:
    """After the feed they read (through the database): left before it."""
    if not node.config.notifiers:
        yield
        return
    # The wall clock, not the node's: an endsAt or a sent_at is read by another system
    # against its own clock.
    notifiers = Notifiers(node.config, dsn, node.metrics)
    node.notifiers = notifiers
    node.spawn("notifiers", notifiers.run())
    try:
        yield
    finally:
        await node.stop("notifiers")


@asynccontextmanager
async def _cameras(node: Node) -> AsyncIterator[None]:
    supervisor = CameraSupervisor(node.config, node.store, node.alerts, node.metrics,
                                  node.clock, workers=node.config.node.camera_workers)
    node.cameras = supervisor
    supervisor.on_state = node.feed.camera_state if node.feed else None
    await supervisor.start(watch_all=not node.config.cluster.enabled)
    if node.store.pending and not node.config.cluster.enabled:
        node.deferred.append(supervisor.carry_open_alerts)
    node.spawn("cameras", supervisor.run())
    _measure(node, "camera_history", supervisor.backlog, supervisor.backlog_limit)
    storms = node.alerts.storms
    if storms is not None:
        by_site: dict[str, list[Any]] = {}
        for state in supervisor.cameras.values():
            by_site.setdefault(state.site.id, []).append(state)
        storms.cameras_offline = lambda site: {
            s.camera.id for s in by_site.get(site, ()) if s.health.state == "offline"}
        node.spawn("storms", storms.run(_raise_held(node), _release_grouped(node)))
    try:
        yield
    finally:
        await node.stop("cameras", budget=1.0)
        try:
            # Workers are told to stop; what the database has not taken by then is given up.
            await asyncio.wait_for(supervisor.stop(), max(0.5, node.remaining() - 1.5))
        except TimeoutError:
            log.warning("camera supervisor did not stop within the shutdown budget")
        if storms is not None:
            await node.stop("storms", budget=0.5)
            with contextlib.suppress(TimeoutError):  # the cameras are judged again at start
                await asyncio.wait_for(storms.flush(_raise_held(node), everything=True),
                                       max(0.1, node.remaining() - 1.0))


def _release_grouped(node: Node) -> Callable[[], Awaitable[object]]:
    async def release() -> object:
        storms = node.alerts.storms
        assert storms is not None
        async with node.store.transaction() as conn:
            released = await storms.release(conn)
        node.alerts.publish([AlertChange(action, alert) for action, alert in released])
        return released
    return release


def _raise_held(node: Node) -> Callable[[list[Decision]], Awaitable[object]]:
    async def raise_(decisions: list[Decision]) -> object:
        return await node.alerts.raise_now(decisions, hold=False)
    return raise_


def _api_tls(config: Config) -> ssl.SSLContext | None:
    """HTTPS served directly, when a certificate and key are configured (TLS 1.2 or later)."""
    if config.api.tls_cert is None or config.api.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.api.tls_cert), str(config.api.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise VigieError(f"api.tls_cert / api.tls_key: cannot load ({exc})") from None
    return context


@asynccontextmanager
async def _cluster(node: Node) -> AsyncIterator[None]:
    """After the cameras and before the sensors: the leases say which cameras this node
    watches; on shutdown they are released before the supervisor stops, so the other nodes
    take them over at once. A lone node only says it is up (GET /api/v1/nodes)."""
    assert node.cameras is not None
    if node.config.cluster.enabled:
        leases = CameraLeases(node.config, node.dsn, node.cameras, node.metrics)
        node.leases = leases
        if node.store.pending:
            # Started while the database was away: no lease can be proven, so no camera is
            # watched until the rounds (which register the node) run on a migrated schema.
            async def join() -> None:
                node.spawn("cluster", leases.run())

            node.deferred.append(join)
        else:
            await leases.start()
            node.spawn("cluster", leases.run())
        node.spawn("camera-status", CameraStatusPublisher(
            node.store, node.cameras, leases, node.config.retention.snapshots,
            node.metrics, node.config.node.data_dir).run())
        try:
            yield
        finally:
            await node.stop("camera-status", "cluster", budget=1.0)
            await leases.leave()
        return
    cameras = node.cameras
    presence = NodePresence(node.config.node.name, node.store, lambda: len(cameras.cameras))
    await _now_or_later(node, presence.start)
    node.spawn("presence", presence.run())
    try:
        yield
    finally:
        await node.stop("presence", budget=1.0)
        await presence.leave()


@asynccontextmanager
async def _correlation(node: Node) -> AsyncIterator[None]:
    """After the cameras whose snapshots it attaches: left before them."""
    cameras = node.cameras
    watched = WatchedCameras(cameras) if cameras is not None and cameras.cameras else None
    patience = max((c.checks.analyse_every for c in cameras.cameras.values()), default=2.0
                   ) if cameras is not None else 2.0
    correlator = Correlator(node.config, node.store, node.alerts, node.metrics, watched,
                            feed=node.feed, clock=node.clock, fresh_within=patience + 1.0)
    node.alerts.subscribe(correlator.alert_changed)
    node.spawn("correlation", correlator.run())
    try:
        yield
    finally:
        await node.stop("correlation")


@asynccontextmanager
async def _api(node: Node) -> AsyncIterator[None]:
    config = node.config
    audit: AuditSpool | None = None
    if config.spool.enabled:  # audit entries of calls made while the database is away
        audit = await AuditSpool.open(config.node.data_dir / "spool-audit", node.store,
                                      config.node.name)
        node.metrics.queue_length.labels("audit_spool").set_function(lambda: audit.pending)
        node.spawn("audit-spool", audit.run())
    # Read before the first request: after a restart while the database is away, tokens
    # are checked against what the node knew of them before it stopped.
    config.node.data_dir.mkdir(parents=True, exist_ok=True)
    tokens = await TokenSnapshot.load(config.node.data_dir / TOKEN_SNAPSHOT,
                                      database_up=node.store.available)
    node.metrics.token_snapshot_age.set_function(lambda: tokens.age(node.clock()))
    ctx = ApiContext(config=config, store=node.store, alerts=node.alerts, metrics=node.metrics,
                     auth=Authenticator(node.store, config.api.auth_failures_per_minute,
                                        tokens),
                     schedule=node.schedule or Schedule(()),
                     readiness=node.readiness, clock=node.clock, cameras=node.cameras,
                     feed=node.feed, audit_spool=audit, leases=node.leases)
    app = make_api(ctx)
    install_stream(app, node.feed)
    install_console(app)
    runner = web.AppRunner(app, access_log=None,
                           shutdown_timeout=min(2.0, config.node.shutdown_budget / 5))
    await runner.setup()
    tls = _api_tls(config)
    site = web.TCPSite(runner, config.api.host, config.api.port, ssl_context=tls)
    await site.start()
    host, port = runner.addresses[0][:2]
    node.api_url = f"{'https' if tls else 'http'}://{host}:{port}"
    log.info("API listening on %s", node.api_url)
    node.spawn("token-snapshot", tokens.run(node.store, node.dsn, config.api.token_snapshot_every,
                                            node.clock))
    try:
        yield
    finally:
        await runner.cleanup()
        await node.stop("token-snapshot", budget=1.0)
        if audit is not None:  # what waits stays on disk for the next start
            await node.stop("audit-spool", budget=1.0)
            await audit.close()


@asynccontextmanager
async def running_node(
    config: Config, *, clock: Clock = utc_now, metrics: Metrics | None = None,
    with_mqtt: bool = True,
) -> AsyncIterator[Node]:
    """Start every component of a node; stop them in reverse order on exit, within
    `node.shutdown_budget`, and log one summary line."""
    metrics = metrics or Metrics(config.node.name)
    started: list[Node] = []
    async with AsyncExitStack() as stack:
        stack.push_async_callback(_summary, started)  # runs last, after everything stopped
        dsn = await database_dsn(config, stack)
        store = await _store_for_node(config, stack, dsn)
        if store.available:
            async with store.connection() as conn:
                await sync_config(conn, config)
        metrics.db_up.set(1 if store.available else 0)
        alerts = AlertService(store, metrics, clock, escalation_by_severity(config))
        if config.alerts.storm.enabled:
            alerts.storms = StormGuard(config, metrics, clock)
        node = Node(config=config, metrics=metrics, clock=clock, store=store, alerts=alerts,
                    schedule=load_schedule(config), dsn=dsn)
        await _now_or_later(node, alerts.refresh)
        started.append(node)
        stack.push_async_callback(node.stop, *("db-ping", "alerts-refresh", "retention"))
        node.spawn("db-ping", _ping_forever(node))
        node.spawn("alerts-refresh", alerts.refresh_forever())
        if config.retention.on_nodes:
            node.spawn("retention", RetentionJob(store, config, clock).run())
        await stack.enter_async_context(_feed(node, dsn))
        await stack.enter_async_context(_notifiers(node, dsn))
        await stack.enter_async_context(_cameras(node))
        await stack.enter_async_context(_cluster(node))
        await stack.enter_async_context(_correlation(node))
        if with_mqtt:
            await stack.enter_async_context(_sensors(node))
        # After every listener subscribed (the feed): the first tick may publish at once.
        node.spawn("alert-timers", AlertTimers(alerts).run())
        stack.push_async_callback(node.stop, "alert-timers")
        await stack.enter_async_context(_api(node))
        if store.pending:  # after every part put off what it must: nothing races the list
            node.spawn("db-start", _open_when_reachable(node))
            stack.push_async_callback(node.stop, "db-start")
        try:
            yield node
        finally:
            node.stopping_since = time.monotonic()


GC_FULL_EVERY = 1_000


def settle_memory() -> None:
    """Once a node runs (`vigie run`): what start-up built (modules, config, routes, rules)
    lives as long as the process; out of the cycle collector's reach, a full collection
    scans only what came since. Over the ~100k start-up objects, one paused the event loop
    for 50-90 ms, the worst of both the event-to-WebSocket and the API latency. Not for a
    process that starts nodes again and again (tests): what it freezes is never collected.
    """
    gc.collect()
    gc.freeze()
    # Full collections (of the oldest generation, tens of ms with ten thousand open
    # alerts in memory) at most every GC_FULL_EVERY collections of the middle one: at 500
    # API requests/s, objects of requests in flight promoted there brought one on every
    # few seconds by the default (10). Cyclic garbage waits that much longer.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_EVERY)


def _measure(node: Node, queue: str, length: Callable[[], int], capacity: int) -> None:
    node.metrics.queue_length.labels(queue).set_function(length)
    node.metrics.queue_capacity.labels(queue).set(capacity)


async def _summary(started: list[Node]) -> None:
    since = started[0].stopping_since if started else None
    if since is None:
        return
    node = started[0]
    took = time.monotonic() - since
    parts = [f"stopped in {took:.1f}s (budget {node.config.node.shutdown_budget:.0f}s)"]
    writer = node.writer
    if writer is not None:
        left = len(writer.inbox) + writer.held
        parts.append(f"{writer.written} event(s) stored, {writer.spooled} message(s) "
                     f"spooled, {writer.replayed} replayed, {writer.spool_pending} waiting "
                     f"in the spool, {left} left unacknowledged at the broker")
    if node.cameras is not None:
        parts.append(f"{len(node.cameras.cameras)} camera(s) released")
    (log.info if took <= node.config.node.shutdown_budget else log.warning)(
        "; ".join(parts))
