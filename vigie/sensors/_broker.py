"""An in-process MQTT broker (amqtt) for `vigie demo` when no broker is reachable.

What amqtt 0.12.1 does, measured with paho-mqtt 2.2 clients (tests/sensors/test_broker.py):

- MQTT 3.1.1 only. An MQTT 5 CONNECT is refused with CONNACK "unsupported protocol version",
  an MQTT 3.1 one is dropped: clients of this broker must use 3.1.1 (`PROTOCOL`), so no shared
  subscriptions — the demo runs one node.
- QoS 1 and persistent sessions (clean_session=False: subscriptions kept and QoS 1 messages
  queued while the client is away) work, but only for sessions amqtt does not flag anonymous.
  Its own AnonymousAuthPlugin flags every session anonymous, then forgets it on disconnect;
  hence `_DemoAuth`, which lets everyone in unflagged.
- An unacknowledged QoS 1 message is given up after 5 s without PUBACK, or when the connection
  drops, and never redelivered on reconnect (MQTT-4.4.0-1). With manual acks sent only once an
  event is stored, a crash of vigie can lose the events in flight: good enough for a demo, and
  the reason production uses Mosquitto or EMQX.
- No warnings, as long as the config names its plugins (amqtt's default plugin set warns,
  DeprecationWarning, about its $SYS plugin) and the sockets it forgets are closed for it
  (ResourceWarning: see `_DemoBroker`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin

from vigie.errors import VigieError

__all__ = ["PROTOCOL", "broker_reachable", "embedded_broker"]

log = logging.getLogger("vigie.sensors")

PROTOCOL = "3.1.1"  # the only MQTT version the embedded broker speaks


class _DemoAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Lets every client in, without the anonymous flag that would void its session."""

    async def authenticate(self, *, session: Any) -> bool:
        return True


class _DemoBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            # amqtt leaves the socket open when a client hangs up before its CONNECT, as a TCP
            # probe such as broker_reachable does: one leaked descriptor per probe otherwise.
            writer.close()


@asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[str, int]]:
    """Start an in-process MQTT broker; yield the (host, port) it listens on; stop it on exit."""
    broker = _DemoBroker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {f"{__name__}._DemoAuth": {}},
        }
    )
    try:
        await broker.start()
    except (BrokerError, OSError) as exc:
        raise VigieError(f"cannot start the embedded MQTT broker on {host}:{port}: {exc}") from exc
    try:
        bound = _bound_port(broker)
        log.info("embedded MQTT broker (amqtt, MQTT %s) listening on %s:%d", PROTOCOL, host, bound)
        yield host, bound
    finally:
        await broker.shutdown()
        log.info("embedded MQTT broker stopped")


def _bound_port(broker: Broker) -> int:
    # amqtt has no public accessor for the address it bound, which port 0 leaves unknown.
    server = getattr(broker, "_servers", {}).get("default")
    for sock in getattr(getattr(server, "instance", None), "sockets", None) or ():
        return int(sock.getsockname()[1])
    raise VigieError("the embedded MQTT broker started but reports no listening socket")


def broker_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port (blocking: use a thread)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
