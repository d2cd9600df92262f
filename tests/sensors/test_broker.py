"""The embedded MQTT broker for `vigie demo`, driven by real paho-mqtt clients.

paho runs its network loop in threads, and the broker runs on the test's event loop: every
client scenario runs in a worker thread so that the loop stays free to serve it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from vigie.sensors._broker import PROTOCOL, broker_reachable, embedded_broker

TIMEOUT = 10.0


@contextmanager
def connected(
    port: int, client_id: str, *, clean_session: bool = True, manual_ack: bool = False,
    on_message: Callable[[mqtt.Client, object, mqtt.MQTTMessage], None] | None = None,
) -> Iterator[tuple[mqtt.Client, dict[str, object]]]:
    """An MQTT 3.1.1 client connected and looping; yields it with its CONNACK flags.

    `on_message` is set before connecting: a resumed session delivers right after CONNACK.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
        clean_session=clean_session, manual_ack=manual_ack,
    )
    connack: dict[str, object] = {}
    ready = threading.Event()

    def on_connect(c: mqtt.Client, u: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                   p: object) -> None:
        connack.update(session_present=flags.session_present, reason=str(rc))
        ready.set()

    client.on_connect = on_connect
    if on_message is not None:
        client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert ready.wait(TIMEOUT), "no CONNACK"
        assert connack["reason"] == "Success"
        yield client, connack
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(client: mqtt.Client, topic: str) -> None:
    granted = threading.Event()
    client.on_subscribe = lambda *args: granted.set()
    client.subscribe(topic, qos=1)
    assert granted.wait(TIMEOUT), "no SUBACK"


def publish(port: int, topic: str, payloads: list[bytes]) -> None:
    with connected(port, "publisher") as (client, _):
        for info in [client.publish(topic, p, qos=1) for p in payloads]:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def connack_reason(port: int, protocol: MQTTProtocolVersion) -> str:
    """What the broker answers to a CONNECT in `protocol` ('' if it just hangs up)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{protocol}",
                         protocol=protocol)
    answer: list[str] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        answer.append(str(rc))
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *args: done.set()
    if protocol == mqtt.MQTTv5:
        client.connect("127.0.0.1", port, clean_start=False)  # how vigie's ingest connects
    else:
        client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        done.wait(TIMEOUT)
    finally:
        client.disconnect()
        client.loop_stop()
    return answer[0] if answer else ""


async def test_hundred_qos1_messages_all_arrive() -> None:
    def scenario(port: int) -> list[bytes]:
        received: list[bytes] = []

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            received.append(bytes(m.payload))
            c.ack(m.mid, m.qos)  # as vigie's ingest does, once the event is stored

        with connected(
            port, "ingest", clean_session=False, manual_ack=True, on_message=on_message
        ) as (sub, _):
            subscribe(sub, "vigie/+/+/event")
            publish(port, "vigie/clg-a/porte-hall/event", [b"%d" % i for i in range(100)])
            wait_for(lambda: len(received) >= 100)
        return received

    async with embedded_broker() as (host, port):
        assert (host, port != 0) == ("127.0.0.1", True)
        received = await asyncio.to_thread(scenario, port)
    assert sorted(received, key=int) == [b"%d" % i for i in range(100)]


async def test_speaks_mqtt_311_only() -> None:
    async with embedded_broker() as (_, port):
        v311 = await asyncio.to_thread(connack_reason, port, mqtt.MQTTv311)
        v5 = await asyncio.to_thread(connack_reason, port, mqtt.MQTTv5)
    assert PROTOCOL == "3.1.1"
    assert v311 == "Success"
    assert v5 == "Unsupported protocol version"


async def test_persistent_session_keeps_messages_sent_while_away() -> None:
    def scenario(port: int) -> tuple[object, list[bytes]]:
        with connected(port, "ingest", clean_session=False) as (sub, _):
            subscribe(sub, "vigie/#")
        publish(port, "vigie/clg-a/centrale-a/event", [b"a", b"b", b"c"])
        received: list[bytes] = []
        with connected(
            port, "ingest", clean_session=False,
            on_message=lambda c, u, m: received.append(bytes(m.payload)),
        ) as (_, connack):
            wait_for(lambda: len(received) >= 3)
        return connack["session_present"], received

    async with embedded_broker() as (_, port):
        session_present, received = await asyncio.to_thread(scenario, port)
    assert session_present is True
    assert received == [b"a", b"b", b"c"]


async def test_reachable_only_while_running() -> None:
    async with embedded_broker() as (host, port):
        assert await asyncio.to_thread(broker_reachable, host, port)
    assert not await asyncio.to_thread(broker_reachable, host, port)


@pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="amqtt drops an unacknowledged QoS 1 message on disconnect",
)
async def test_unacknowledged_message_is_redelivered_after_reconnect() -> None:
    # MQTT-4.4.0-1, which "nothing accepted is lost" relies on: fails on amqtt 0.12.1, so the
    # reliability tests must run against Mosquitto, never against the embedded broker.
    def scenario(port: int) -> list[bytes]:
        held: list[bytes] = []
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="ingest", protocol=mqtt.MQTTv311,
            clean_session=False, manual_ack=True,
        )
        client.on_message = lambda c, u, m: held.append(bytes(m.payload))  # never acknowledged
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            subscribe(client, "vigie/#")
            publish(port, "vigie/clg-a/centrale-a/event", [b"alarm"])
            wait_for(lambda: held == [b"alarm"])
        finally:
            client.loop_stop()
            sock = client.socket()
            assert sock is not None
            sock.close()  # vigie crashes before storing the event
        redelivered: list[bytes] = []
        with connected(
            port, "ingest", clean_session=False,
            on_message=lambda c, u, m: redelivered.append(bytes(m.payload)),
        ):
            wait_for(lambda: bool(redelivered), timeout=2.0)
        return redelivered

    async with embedded_broker() as (_, port):
        redelivered = await asyncio.to_thread(scenario, port)
    assert redelivered == [b"alarm"]
