"""A node that dies and does not come back, with shared subscriptions on persistent
sessions: what this machine's Mosquitto (2.0.11) does with the share of the group that the
dead session still holds, and how vigie's deployment keeps those events from being stranded
(a node of the same name, hence the same client id, resumes the session: the StatefulSet's
ordinal; see README "Several nodes / orphaned MQTT sessions")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from typing import Any

import asyncpg
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.cluster.test_mqtt import Streamer, _stored, _subscribed, cluster_factory, publisher
from tests.conftest import eventually

__all__ = ["cluster_factory", "publisher"]  # the fixtures, used here by name

pytestmark = pytest.mark.timeout(300)


async def test_a_dead_nodes_share_waits_in_its_session_and_a_node_of_its_name_stores_it(
        cluster_factory: Any, publisher: Streamer, fresh_dsn: str,
        caplog: pytest.LogCaptureFixture) -> None:
    cluster = cluster_factory()
    survivor = await cluster.start("n1")
    assert survivor.subscriber is not None and await survivor.subscriber.wait_connected(5)
    doomed = cluster.spawn("vigie-2")
    await eventually(lambda: _subscribed(fresh_dsn, "vigie-2"), timeout=60)
    os.killpg(doomed.pid, signal.SIGKILL)  # gone for good: nothing restarts it
    doomed.wait()

    n = 300
    await publisher.stream(cluster, n, rate=300, with_id=True)
    await eventually(lambda: _settled(fresh_dsn), timeout=30)
    stored = await _stored(fresh_dsn)
    # The finding: Mosquitto 2.0.11 deals the group's messages out in turn to every
    # session in it, connected or not; the dead node's turns are queued in its session,
    # which nobody reads, for as long as the session lives (mqtt.session_expiry).
    stranded = n - len(stored)
    print(f"\nwith one of two nodes dead: {len(stored)} of {n} events stored, {stranded} "
          "queued in the dead node's session")
    assert n / 4 < stranded < 3 * n / 4

    # Left like that for long, every live node names it and its session in its log.
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await conn.execute("UPDATE nodes SET expires_at = now() - interval '11 minutes' "
                           "WHERE name = 'vigie-2'")
    finally:
        await conn.close()
    # The check runs in the node's rounds (the first one right after its start), not in
    # its start: on a loaded machine it may come a moment after `start` returns.
    async def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "lost and not restarted" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="vigie.cluster"):
        await cluster.start("n3")
        [first, *_] = await eventually(warned, timeout=30)
    assert "vigie-2 (silent 11 min)" in first and "(vigie-vigie-2)" in first
    assert len(await _stored(fresh_dsn)) == len(stored)  # nothing more: still queued there

    # The replacement comes under the dead node's name (a StatefulSet's pod, or the
    # operator's `vigie run` with that node.name): same client id, same session, and it
    # stores what was queued there, each event once.
    replacement = await cluster.start("vigie-2")
    assert replacement.subscriber is not None
    await eventually(lambda: _all(fresh_dsn, n), timeout=60)
    assert set((await _stored(fresh_dsn)).values()) == {1}


async def _settled(dsn: str) -> bool:
    """Nothing more being stored: two reads a second apart agree."""
    before = sum((await _stored(dsn)).values())
    await asyncio.sleep(1.5)
    return before > 0 and sum((await _stored(dsn)).values()) == before


async def _all(dsn: str, n: int) -> bool:
    return len(await _stored(dsn)) == n


# --- the broker alone: what a short session expiry would do --------------------------------

class Member:
    """One MQTT 5 member of a shared group on a persistent session, driven by hand so that
    the test can cut its socket like a dead process (no DISCONNECT sent)."""

    def __init__(self, port: int, client_id: str, expiry: int) -> None:
        self.port, self.client_id, self.expiry = port, client_id, expiry
        self.received: list[bytes] = []
        self.session_present: bool | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5)
        self.client.on_message = lambda c, u, m: self.received.append(m.payload)
        self.client.on_connect = self._connected

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        self.session_present = bool(flags.session_present)

    def connect(self, topic: str | None) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.expiry
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.pump(lambda: self.session_present is not None)
        if topic is not None:
            self.client.subscribe(topic, qos=1)
            self.pump(lambda: False, seconds=0.3)

    def pump(self, done: Any, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            self.client.loop(0.05)

    def die(self) -> None:
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def test_a_short_session_expiry_drops_the_dead_members_share_rather_than_give_it_back(
        mqtt_url: str) -> None:
    port = int(mqtt_url.rsplit(":", 1)[1])
    tag = uuid.uuid4().hex[:6]
    topic = f"orphan-{tag}/events"
    live = Member(port, f"live-{tag}", expiry=3600)
    dead = Member(port, f"dead-{tag}", expiry=2)
    live.connect(f"$share/g{tag}/{topic}")
    dead.connect(f"$share/g{tag}/{topic}")
    dead.die()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{tag}")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for i in range(20):
            pub.publish(topic, str(i).encode(), qos=1).wait_for_publish(5)
        live.pump(lambda: False, seconds=1.0)
        first = len(live.received)
        assert 0 < first < 20  # the dead member's turns were queued for it
        time.sleep(3)  # its session expires: the broker deletes it, with its queue
        back = Member(port, f"dead-{tag}", expiry=2)
        back.connect(None)
        back.pump(lambda: False, seconds=1.0)
        assert back.session_present is False and back.received == []
        # Lost, not handed to the live member either; new messages now all go to it.
        live.pump(lambda: False, seconds=0.5)
        assert len(live.received) == first
        for i in range(20, 30):
            pub.publish(topic, str(i).encode(), qos=1).wait_for_publish(5)
        live.pump(lambda: len(live.received) == first + 10, seconds=5.0)
        assert len(live.received) == first + 10
        print(f"\nshort expiry: {20 - first} of 20 messages dropped with the dead session")
    finally:
        pub.loop_stop()
        pub.disconnect()
        live.client.disconnect()
        with contextlib.suppress(NameError):
            back.client.disconnect()
