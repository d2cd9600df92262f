"""Sensor traffic shared by several nodes on one Mosquitto: MQTT 5 shared subscriptions,
or one elected subscriber for brokers without them. Events are published while nodes stop,
join, or are SIGKILLed (a `vigie run` process, restarted under the same name as a
Kubernetes StatefulSet would); every event must be stored, and once."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.conftest import SITES, Publisher, eventually, make_config
from vigie.app import Node, running_node

pytestmark = pytest.mark.timeout(300)

# The test sites' sensors, without their camera (no RTSP here).
NO_CAMERAS = [{k: v for k, v in copy.deepcopy(s).items() if k != "cameras"} for s in SITES]
DOORS = [("clg-jean-moulin", "porte-hall"), ("clg-pasteur", "porte-gymnase")]
LEASE = 3.0


def _raw(dsn: str, mqtt_url: str, name: str, prefix: str, **cluster: Any) -> dict[str, Any]:
    return {"node": {"name": name, "camera_workers": 1}, "database": {"dsn": dsn},
            "mqtt": {"url": mqtt_url, "topic_prefix": prefix},
            "api": {"listen": "127.0.0.1:0"},
            "cluster": {"enabled": True, "lease_seconds": LEASE, "interval": 1.0, **cluster},
            "sites": NO_CAMERAS}


class Cluster:
    def __init__(self, dsn: str, mqtt_url: str, **cluster: Any) -> None:
        self.dsn, self.mqtt_url, self.settings = dsn, mqtt_url, cluster
        self.prefix = f"t{uuid.uuid4().hex[:6]}"
        self.running: dict[str, tuple[Node, AsyncExitStack]] = {}
        self.written: dict[str, int] = {}  # events each stopped node stored
        self.workdir = Path(tempfile.mkdtemp(prefix="vigie-mqtt-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    def raw(self, name: str) -> dict[str, Any]:
        return _raw(self.dsn, self.mqtt_url, name, self.prefix, **self.settings)

    async def start(self, name: str) -> Node:
        raw = self.raw(name)
        config = make_config(self.dsn, self.mqtt_url, node=raw["node"], sites=NO_CAMERAS,
                             mqtt={**raw["mqtt"], "client_id": None}, cluster=raw["cluster"])
        stack = AsyncExitStack()
        node = await stack.enter_async_context(running_node(config))
        self.running[name] = (node, stack)
        return node

    async def stop(self, name: str) -> None:
        node, stack = self.running.pop(name)
        await stack.aclose()
        assert node.writer is not None
        self.written[name] = node.writer.written

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """`vigie run` in a process group of its own (SIGKILLed with its workers)."""
        raw = self.raw(name)
        raw["node"]["data_dir"] = str(self.workdir / name)
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child has its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "vigie", "run", "--config", str(path)],
                stdout=log, stderr=log, start_new_session=True)
        self.processes.append(proc)
        return proc

    def topic(self, site: str, sensor: str) -> str:
        return f"{self.prefix}/{site}/{sensor}/event"

    async def close(self) -> None:
        for name in list(self.running):
            await self.stop(name)
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
async def cluster_factory(fresh_dsn: str, mqtt_url: str) -> AsyncIterator[Any]:
    made: list[Cluster] = []

    def make(**settings: Any) -> Cluster:
        made.append(Cluster(fresh_dsn, mqtt_url, **settings))
        return made[-1]

    yield make
    for c in made:
        await c.close()


class Streamer(Publisher):
    """Devices: QoS 1 events at a steady rate, from a thread of their own."""

    def __init__(self, mqtt_url: str) -> None:
        super().__init__(mqtt_url)
        self.sent = 0

    async def stream(self, cluster: Cluster, n: int, rate: float, with_id: bool) -> None:
        """`n` door events numbered in `data.n`; with an `id` or with nothing that
        identifies a redelivery (then a message delivered to two nodes is stored twice)."""
        infos = []
        for i in range(n):
            site, sensor = DOORS[i % len(DOORS)]
            payload: dict[str, Any] = {"state": "closed", "kind": "door", "data": {"n": i}}
            if with_id:
                payload["id"] = f"evt-{i}"
            infos += self.publish(cluster.topic(site, sensor), [payload])
            self.sent += 1
            await asyncio.sleep(1 / rate)
        await self.wait(infos)


@pytest.fixture
def publisher(mqtt_url: str) -> Iterator[Streamer]:
    pub = Streamer(mqtt_url)
    yield pub
    pub.close()


async def _stored(dsn: str) -> dict[int, int]:
    """How many times each numbered event was stored."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT (data->>'n')::int AS n, count(*) AS c FROM events "
                                "GROUP BY 1")
    finally:
        await conn.close()
    return {r["n"]: r["c"] for r in rows}


async def _all_stored(dsn: str, n: int) -> bool:
    return len(await _stored(dsn)) == n


async def test_shared_subscriptions_spread_events_and_store_each_once_as_nodes_leave_and_join(
        cluster_factory: Any, publisher: Streamer, fresh_dsn: str) -> None:
    cluster = cluster_factory()
    for name in ("n1", "n2", "n3"):
        node = await cluster.start(name)
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
    n = 1200
    sending = asyncio.create_task(publisher.stream(cluster, n, rate=150, with_id=False))
    await asyncio.sleep(2.5)
    await cluster.stop("n3")  # gracefully: leaves the group, writes what it received
    await asyncio.sleep(2.5)
    joined = await cluster.start("n4")
    assert joined.subscriber is not None and await joined.subscriber.wait_connected(5)
    await sending
    await eventually(lambda: _all_stored(fresh_dsn, n), timeout=30)
    stored = await _stored(fresh_dsn)
    # Without an id or a timestamp nothing folds a duplicate: a message the broker gave to
    # two nodes would be here twice.
    assert sorted(stored) == list(range(n)) and set(stored.values()) == {1}
    for name, (node, _) in cluster.running.items():
        assert node.writer is not None
        cluster.written[name] = node.writer.written
    # Spread: each node stored a part, the one that left too.
    print(f"\nevents stored per node: {cluster.written}")
    assert set(cluster.written) == {"n1", "n2", "n3", "n4"}
    assert all(count > 0 for count in cluster.written.values()), cluster.written
    assert sum(cluster.written.values()) == n


async def test_a_sigkilled_node_restarted_under_its_name_stores_its_share_lost_nothing(
        cluster_factory: Any, publisher: Streamer, fresh_dsn: str) -> None:
    cluster = cluster_factory()
    for name in ("n1", "n2"):
        node = await cluster.start(name)
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
    victim = cluster.spawn("p")
    await eventually(lambda: _subscribed(fresh_dsn, "p"), timeout=60)
    n = 1500
    sending = asyncio.create_task(publisher.stream(cluster, n, rate=150, with_id=True))
    await asyncio.sleep(3)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    await asyncio.sleep(3)
    # Its share waits in its session at the broker (messages in flight, and those queued
    # since): a node of the same name resumes it.
    cluster.spawn("p")
    await sending
    await eventually(lambda: _all_stored(fresh_dsn, n), timeout=60)
    stored = await _stored(fresh_dsn)
    assert sorted(stored) == list(range(n)) and set(stored.values()) == {1}


async def _subscribed(dsn: str, name: str) -> bool:
    """The process node is up (its row), and has had time to subscribe."""
    conn = await asyncpg.connect(dsn)
    try:
        up = await conn.fetchval("SELECT state = 'up' AND now() - started_at > interval '2s' "
                                 "FROM nodes WHERE name = $1", name)
    except asyncpg.UndefinedTableError:
        return False  # not migrated yet
    finally:
        await conn.close()
    return bool(up)


async def test_elected_subscriber_fails_over_to_a_standby_without_losing_events(
        cluster_factory: Any, publisher: Streamer, fresh_dsn: str) -> None:
    cluster = cluster_factory(mqtt="elected")
    leader = cluster.spawn("p")
    await eventually(lambda: _subscribed(fresh_dsn, "p"), timeout=60)
    standby = await cluster.start("n1")
    assert standby.mqtt_election is not None
    await asyncio.sleep(2)
    # The process took the lock first: this node waits, and is ready all the same.
    assert not standby.mqtt_election.leading
    assert standby.readiness().get("mqtt", "ok") == "ok"
    n = 900
    sending = asyncio.create_task(publisher.stream(cluster, n, rate=150, with_id=True))
    await asyncio.sleep(2)
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    # PostgreSQL frees the dead session's lock at once; the standby takes it and the
    # subscriber's session, with what the broker kept for it.
    await eventually(lambda: _true(standby.mqtt_election is not None
                                   and standby.mqtt_election.leading), timeout=10)
    await sending
    await eventually(lambda: _all_stored(fresh_dsn, n), timeout=60)
    stored = await _stored(fresh_dsn)
    assert sorted(stored) == list(range(n)) and set(stored.values()) == {1}
    assert standby.metrics.cluster_mqtt_leader._value.get() == 1


async def _true(value: bool) -> bool:
    return value


async def test_alarms_spread_over_nodes_make_one_alert_and_silence_is_judged_once(
        cluster_factory: Any, publisher: Streamer, fresh_dsn: str) -> None:
    cluster = cluster_factory()
    nodes = []
    for name in ("n1", "n2", "n3"):
        raw = cluster.raw(name)
        config = make_config(fresh_dsn, cluster.mqtt_url, node=raw["node"], sites=NO_CAMERAS,
                             mqtt={**raw["mqtt"], "client_id": None}, cluster=raw["cluster"],
                             defaults={"sensor": {"heartbeat": "3s"}})
        stack = AsyncExitStack()
        node = await stack.enter_async_context(running_node(config))
        cluster.running[name] = (node, stack)
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
        nodes.append(node)
    # Two sensors speak in turn for 8 s, well within their 3 s heartbeat. The broker deals
    # the messages out in turn, so each node may see only one of them: a node judging
    # silence on what it received alone would call the other one silent.
    talkers = [("clg-jean-moulin", "centrale-a"), ("clg-pasteur", "centrale")]
    for i in range(32):
        site, sensor = talkers[i % 2]
        publisher.client.publish(cluster.topic(site, sensor), json.dumps(
            {"id": f"alarm-{i}", "kind": "intrusion", "state": "alarm"}).encode(), qos=1)
        await asyncio.sleep(0.25)
    await eventually(lambda: _alerts_settled(fresh_dsn, 16), timeout=20)
    alerts = await _alerts(fresh_dsn)
    # One alert per fingerprint whichever node stored each alarm; count = every alarm.
    assert alerts[("clg-jean-moulin", "centrale-a", "intrusion")] == (1, 16)
    assert alerts[("clg-pasteur", "centrale", "intrusion")] == (1, 16)
    assert not [k for k in alerts if k[2] == "device_silent" and (k[0], k[1]) in talkers]
    # The sensors that said nothing are silent: one alert each, raised once (by the one
    # node that watches for silence), not once per node.
    silent = {(k[0], k[1]): v for k, v in alerts.items() if k[2] == "device_silent"}
    assert silent and all(v == (1, 1) for v in silent.values()), silent


async def _alerts(dsn: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(site, source, kind): (alerts, their total count)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT site, source, kind, count(*) AS n, sum(count) AS c "
                                "FROM alerts GROUP BY 1, 2, 3")
    finally:
        await conn.close()
    return {(r["site"], r["source"], r["kind"]): (r["n"], r["c"]) for r in rows}


async def _alerts_settled(dsn: str, per_talker: int) -> bool:
    alerts = await _alerts(dsn)
    return all(alerts.get(k, (0, 0))[1] == per_talker for k in (
        ("clg-jean-moulin", "centrale-a", "intrusion"), ("clg-pasteur", "centrale", "intrusion")))
