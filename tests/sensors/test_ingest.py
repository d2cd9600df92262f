"""Ingest under trouble, on real parts: a node from `running_node`, our Mosquitto, a fresh
PostgreSQL database. Nothing the broker delivered is lost or stored twice when the database
drops its connections, when vigie stops and restarts on its persistent session, and silent
sensors are noticed."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import SITES, Publisher, eventually, make_config
from vigie.app import Node, running_node
from vigie.config import Config

PASTEUR = "clg-pasteur"
T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)

# Every backend of the node's database but ours.
TERMINATE = """
SELECT count(*) FROM (
    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t
"""
# A node backend waiting on a lock we hold: a write is in progress and cannot finish.
WRITER_BLOCKED = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'
"""


async def terminate(db: asyncpg.Connection) -> int:
    """Terminate the node's backends; how many there were."""
    # Inside a transaction, pg_stat_activity is a snapshot taken at its first use.
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return int(await db.fetchval(TERMINATE))


async def writer_blocked(db: asyncpg.Connection) -> bool:
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return bool(await db.fetchval(WRITER_BLOCKED))


@pytest.fixture
async def publisher(mqtt_url: str) -> AsyncIterator[Publisher]:
    pub = Publisher(mqtt_url)
    yield pub
    pub.close()


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's own connection to the node's database (never terminated by the test)."""
    conn = await asyncpg.connect(fresh_dsn)
    yield conn
    await conn.close()


def topic(config: Config, sensor: str, site: str = PASTEUR) -> str:
    return f"{config.mqtt.topic_prefix}/{site}/{sensor}/event"


def events(prefix: str, n: int, state: str = "normal") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "ts": T0.isoformat(), "state": state} for i in range(n)]


def keys(prefix: str, n: int, sensor: str = "centrale") -> set[str]:
    return {f"id:{PASTEUR}/{sensor}/{prefix}-{i}" for i in range(n)}


@asynccontextmanager
async def node_of(config: Config) -> AsyncIterator[Node]:
    async with running_node(config) as node:
        assert node.subscriber is not None
        assert await node.subscriber.wait_connected(10)
        yield node


async def stored(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events"))


async def assert_stored_once(db: asyncpg.Connection, expected: set[str]) -> None:
    rows = await db.fetch("SELECT dedup_key FROM events")
    found = [r["dedup_key"] for r in rows]
    assert len(found) == len(set(found)), "an event was stored twice"
    assert set(found) == expected, (
        f"missing {len(expected - set(found))}, unexpected {len(set(found) - expected)}")


async def reaches(db: asyncpg.Connection, n: int, timeout: float = 60) -> None:
    async def check() -> bool:
        return await stored(db) >= n

    try:
        await eventually(check, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"{await stored(db)} events stored, expected {n}") from None


async def is_ready(node: Node) -> bool:
    if set(node.readiness().values()) != {"ok"}:
        return False
    async with aiohttp.ClientSession() as s, s.get(node.api_url + "/readyz") as r:
        return r.status == 200


def polled(predicate: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def check() -> Any:
        return predicate()

    return check


def sample(node: Node, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


def received(node: Node) -> float:
    return sample(node, "vigie_mqtt_messages_total")


class WritesBlocked:
    """Holds a lock that stops every insert into `events` (reads still pass)."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self.db = db
        self.held = False

    async def __aenter__(self) -> WritesBlocked:
        await self.db.execute("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE")
        self.held = True
        return self

    async def release(self) -> None:
        if self.held:
            self.held = False
            await self.db.execute("COMMIT")

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


async def stop_while_writing(stack: AsyncExitStack, node: Node, db: asyncpg.Connection,
                             block: WritesBlocked) -> None:
    """Stop the node while its writer is blocked mid-write: reading stops and the inbox
    closes; then the lock is released, within the shutdown's drain budget, and the writer
    finishes what was received (and acknowledges it) before the node disconnects."""
    await eventually(lambda: writer_blocked(db))
    stopping = asyncio.create_task(stack.aclose())
    assert node.writer is not None
    await eventually(polled(lambda: node.writer is not None and node.writer.inbox.closed))
    await block.release()
    await asyncio.wait_for(stopping, 30)


# --- (a) the database drops the node's connections mid-stream --------------------------------


async def test_database_connections_killed_mid_stream_lose_and_duplicate_nothing(
    fresh_dsn: str, mqtt_url: str, db: asyncpg.Connection, publisher: Publisher
) -> None:
    config = make_config(fresh_dsn, mqtt_url, database={"batch_size": 50})
    t = topic(config, "centrale")
    async with node_of(config) as node:
        # 1: killed while a write is surely in progress: it waits on a lock the test holds.
        async with WritesBlocked(db):
            first = publisher.publish(t, events("a", 1_000))
            await eventually(lambda: writer_blocked(db))
            assert await terminate(db) >= 1
            # The writer sees its write fail (a killed backend may still show as waiting
            # for a moment), reconnects and tries again, and waits again.
            await eventually(polled(
                lambda: sample(node, "vigie_db_errors_total", operation="write_events") >= 1))
            await eventually(lambda: writer_blocked(db))

        # 2: killed again while the stream flows, once writes have resumed.
        second = publisher.publish(t, events("b", 1_000))
        await reaches(db, 1)
        assert await terminate(db) >= 1

        await publisher.wait(first + second)
        await reaches(db, 2_000)
        await assert_stored_once(db, keys("a", 1_000) | keys("b", 1_000))
        await eventually(lambda: is_ready(node), timeout=20)
        assert node.writer is not None and node.writer.failing == ""


def kill_backends_now(dsn: str, spare: int) -> None:
    """Terminate the node's backends and wait until they are gone, from another thread and
    event loop, while the caller keeps the node's loop busy: the node has not yet read that
    its connections died when the caller goes on."""

    async def kill() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), $1)",
                spare)
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(kill(),))
    thread.start()
    thread.join()


async def test_a_writer_cancelled_as_its_connection_dies_stops(
    fresh_dsn: str, mqtt_url: str, db: asyncpg.Connection, publisher: Publisher
) -> None:
    """SIGTERM while PostgreSQL goes away (both restarted together, say): the node cancels
    its writer, whose connection has just died. The writer must stop — the node's shutdown
    waits for it — not take the cancellation for one more failed write and retry forever."""
    config = make_config(fresh_dsn, mqtt_url, database={"batch_size": 5})
    async with node_of(config) as node:
        writer = node.tasks["ingest-writer"]
        async with WritesBlocked(db):
            await publisher.wait(publisher.publish(topic(config, "centrale"), events("x", 20)))
            await eventually(lambda: writer_blocked(db))
            kill_backends_now(fresh_dsn, db.get_server_pid())
            writer.cancel()  # what the node's stop does first
            await asyncio.wait([writer], timeout=20)
            try:
                assert writer.done(), "the cancelled writer is still running"
                assert writer.cancelled()
            finally:
                if not writer.done():  # let the node stop despite the failure
                    node.tasks.pop("ingest-writer", None)
                    while not writer.done():
                        writer.cancel()
                        await asyncio.wait([writer], timeout=1)


# --- (b) stopped with messages at the broker, restarted on the same session ------------------


async def test_messages_sent_while_vigie_is_down_are_stored_once_after_restart(
    fresh_dsn: str, mqtt_url: str, db: asyncpg.Connection, publisher: Publisher
) -> None:
    """At the stop, the broker holds messages of every sort for vigie's session: received and
    written during the stop, received and never written (the writer's cancelled batch),
    sent but unread (the inbox was full), and queued; then more are queued while it is down.
    The restart, on the same client id, stores each of them once."""
    config = make_config(fresh_dsn, mqtt_url, database={"batch_size": 20, "write_queue": 100})
    t = topic(config, "centrale")
    stack = AsyncExitStack()
    try:
        node = await stack.enter_async_context(node_of(config))
        await publisher.wait(publisher.publish(t, events("before", 200)))
        await reaches(db, 200)
        async with WritesBlocked(db) as block:
            burst = publisher.publish(t, events("burst", 1_000))
            await eventually(polled(lambda: received(node) >= 200 + 100))  # the inbox is full
            await stop_while_writing(stack, node, db, block)
    finally:
        await stack.aclose()
    await publisher.wait(burst)
    at_stop = await stored(db)
    assert 200 + 100 <= at_stop < 1_200  # at least the full inbox, drained at the stop

    # Down: the broker queues these for vigie's persistent session.
    await publisher.wait(publisher.publish(t, events("down", 1_000)))
    assert await stored(db) == at_stop

    async with node_of(config):  # same client id, same session
        await reaches(db, 2_200)
        await assert_stored_once(
            db, keys("before", 200) | keys("burst", 1_000) | keys("down", 1_000))


async def test_graceful_stop_under_load_stores_keyless_events_once(
    fresh_dsn: str, mqtt_url: str, db: asyncpg.Connection, publisher: Publisher
) -> None:
    """Payloads with neither id nor timestamp (zigbee2mqtt's default: no `last_seen`) can
    only be told apart by reception. What vigie received and wrote while stopping gracefully
    must be acknowledged then, or the broker redelivers it and it is stored a second time."""
    config = make_config(fresh_dsn, mqtt_url, database={"batch_size": 10})
    t = topic(config, "porte-gymnase")
    stack = AsyncExitStack()
    try:
        node = await stack.enter_async_context(node_of(config))
        async with WritesBlocked(db) as block:
            await publisher.wait(publisher.publish(
                t, [{"state": "closed", "data": {"n": i}} for i in range(100)]))
            await eventually(polled(lambda: received(node) >= 100))
            await stop_while_writing(stack, node, db, block)
    finally:
        await stack.aclose()
    # Everything received was written, and acknowledged, while stopping.
    assert await stored(db) == 100

    async with node_of(config):
        # Messages of a subscription arrive in order: once this one is stored, whatever the
        # broker had kept for the session before it is stored too.
        await publisher.wait(publisher.publish(t, [{"id": "marker", "state": "closed"}]))

        async def marker() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM events WHERE dedup_key LIKE 'id:%marker'"))

        await eventually(marker, timeout=30)
        assert await stored(db) == 100 + 1


# --- (c) heartbeat ---------------------------------------------------------------------------


def with_heartbeat(fresh_dsn: str, mqtt_url: str, client_id: str | None = None) -> Config:
    sites = copy.deepcopy(SITES)
    [centrale] = [s for s in sites[1]["sensors"] if s["id"] == "centrale"]
    centrale["heartbeat"] = "1s"
    mqtt = {"client_id": client_id} if client_id else {}
    return make_config(fresh_dsn, mqtt_url, sites=sites, **({"mqtt": mqtt} if mqtt else {}))


async def silent_alerts(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await db.fetch(
        "SELECT * FROM alerts WHERE kind = 'device_silent' ORDER BY opened_at"))


async def test_a_silent_sensor_raises_device_silent_resolved_when_it_speaks(
    fresh_dsn: str, mqtt_url: str, db: asyncpg.Connection, publisher: Publisher
) -> None:
    config = with_heartbeat(fresh_dsn, mqtt_url)
    async with node_of(config):
        [alert] = await eventually(lambda: silent_alerts(db), timeout=15)
        assert (alert["site"], alert["source"], alert["state"], alert["severity"]) == (
            PASTEUR, "centrale", "open", "major")
        assert alert["fingerprint"] == f"{PASTEUR}/centrale/device_silent"

        await publisher.wait(publisher.publish(topic(config, "centrale"), [
            {"id": "alive", "ts": datetime.now(UTC).isoformat(), "state": "normal"}]))

        async def resolved() -> bool:
            return bool(await db.fetchval("SELECT state FROM alerts WHERE id = $1",
                                          alert["id"]) == "resolved")

        await eventually(resolved, timeout=15)
        history = await db.fetch("SELECT actor, action, comment FROM alert_history "
                                 "WHERE alert_id = $1 ORDER BY at, id", alert["id"])
        assert [(h["actor"], h["action"]) for h in history] == [("vigie", "opened"),
                                                                ("vigie", "resolved")]
        assert history[1]["comment"] == "device speaks again"
        # Only the sensor with a heartbeat is watched.
        assert {a["source"] for a in await silent_alerts(db)} == {"centrale"}


async def test_a_silent_alert_from_before_a_restart_resolves_when_the_sensor_speaks(
    fresh_dsn: str, mqtt_url: str, db: asyncpg.Connection, publisher: Publisher
) -> None:
    config = with_heartbeat(fresh_dsn, mqtt_url)
    async with node_of(config):
        [alert] = await eventually(lambda: silent_alerts(db), timeout=15)

    async with node_of(config):
        # The sensor is back and speaks every 200 ms: it is not silent any more.
        async def speak() -> None:
            for i in range(1_000):
                publisher.publish(topic(config, "centrale"), [
                    {"id": f"alive-{i}", "ts": datetime.now(UTC).isoformat(),
                     "state": "normal"}])
                await asyncio.sleep(0.2)

        speaking = asyncio.create_task(speak())
        try:
            async def resolved() -> bool:
                return bool(await db.fetchval("SELECT state FROM alerts WHERE id = $1",
                                              alert["id"]) == "resolved")

            await eventually(resolved, timeout=8)
        finally:
            speaking.cancel()
            await asyncio.gather(speaking, return_exceptions=True)


async def test_a_long_backlog_ahead_of_the_suback_does_not_restart_the_session(
    fresh_dsn: str, mqtt_url: str, db: asyncpg.Connection, publisher: Publisher
) -> None:
    """On reconnect the broker replays the session's backlog before it answers our
    re-subscription. With the inbox full and the database slow, the SUBACK can wait longer
    than the connect timeout; that must not count as a failed connection (which would drop
    the session's progress and start the replay over, again and again)."""
    from vigie.sensors._mqtt import CONNECT_TIMEOUT

    config = make_config(fresh_dsn, mqtt_url, database={"batch_size": 20, "write_queue": 100})
    t = topic(config, "centrale")
    async with node_of(config):
        pass  # creates the persistent session at the broker
    await publisher.wait(publisher.publish(t, events("queued", 1_000)))
    async with WritesBlocked(db) as block, node_of(config) as node:
        await eventually(polled(lambda: received(node) >= 100))  # the inbox is full
        await asyncio.sleep(CONNECT_TIMEOUT + 2)  # past the connect deadline, still blocked
        await block.release()
        await reaches(db, 1_000)
        assert sample(node, "vigie_mqtt_reconnects_total") == 0
    await assert_stored_once(db, keys("queued", 1_000))
