"""The MQTT subscriber: paho's network thread decodes and hands messages to the writer.

Messages are acknowledged to the broker by the writer (`ack`), only once they are durable:
with `manual_ack`, an event the broker considers delivered is always in the database.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vigie.config import MqttConfig
from vigie.errors import IngestError
from vigie.events import DeviceStatus, SensorEvent
from vigie.metrics import Metrics
from vigie.sensors._decode import TopicRouter
from vigie.sensors._handoff import Handoff
from vigie.store._events import DeadLetter

__all__ = ["MqttSubscriber", "Received"]

log = logging.getLogger("vigie.sensors")

_PUBACK = struct.Struct("!BBH")  # type, remaining length (2), packet id


@dataclass(frozen=True, slots=True)
class Received:
    """A message from the broker, decoded, waiting to be made durable and acknowledged."""

    mid: int
    qos: int
    body: list[SensorEvent] | DeviceStatus | DeadLetter


class MqttSubscriber:
    def __init__(
        self, config: MqttConfig, client_id: str, router: TopicRouter,
        handoff: Handoff[Received], metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._router = router
        self._handoff = handoff
        self._metrics = metrics
        self._clock = clock
        self._connected = threading.Event()
        self._connections = 0
        self._stopping = False
        url = urlsplit(config.url)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        v5 = config.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            # MQTT 3.1.1: a persistent session; MQTT 5 says it with clean_start below.
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if config.username:
            self._client.username_pw_set(
                config.username, config.password.reveal() if config.password else None)
        if url.scheme == "mqtts":
            self._client.tls_set()
        # Backoff between reconnects; the jitter comes from the random first delay below.
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def endpoint(self) -> str:
        return f"{self._host}:{self._port}"

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself after a loss."""
        props = None
        kwargs: dict[str, Any] = {}
        if self._config.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = int(self._config.session_expiry)
            # Our bounded hand-off, not the broker's default window (often 20), limits how
            # many messages wait unacknowledged: enough for big batches.
            props.ReceiveMaximum = 65_535
            kwargs = {"clean_start": False, "properties": props}
        self._client.connect_async(self._host, self._port, self._config.keepalive, **kwargs)
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._handoff.close()
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message to the broker (safe from any thread)."""
        if qos > 0:
            self._client.ack(mid, qos)

    def ack_many(self, received: Sequence[Received]) -> None:
        """Acknowledge a batch of QoS 1 messages with one write.

        paho queues each PUBACK separately, waking its thread once per message; at tens of
        thousands of messages a second that costs more than the database write. A PUBACK is
        four bytes, so the batch goes out as one buffer of concatenated PUBACKs (paho only
        looks at the command of queued packets to detect QoS 0 PUBLISHes). QoS 2 messages,
        rare on sensors, take paho's own path.
        """
        blob = b"".join(_PUBACK.pack(0x40, 2, r.mid) for r in received if r.qos == 1)
        if blob:
            self._client._packet_queue(0x40, blob, 0, 1)
        for r in received:
            if r.qos == 2:
                self._client.ack(r.mid, 2)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # paho callbacks, on paho's network thread ------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.endpoint, reason)
            return
        self._connections += 1
        if self._connections > 1:
            self._metrics.mqtt_reconnects.inc()
        qos = self._config.qos
        topics: list[tuple[str, int]] = [(t, qos) for t in self._router.subscriptions()]
        client.subscribe(topics)
        self._connected.set()
        self._metrics.mqtt_connected.set(1)
        log.info("connected to MQTT broker %s (session present: %s), %d subscriptions",
                 self.endpoint, getattr(flags, "session_present", "?"), len(topics))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Any) -> None:
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)
        if not self._stopping:
            log.warning("disconnected from MQTT broker %s: %s; reconnecting",
                        self.endpoint, reason)
            # Jitter: nodes that lost the broker together must not all come back together.
            threading.Event().wait(random.uniform(0, 1))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._metrics.mqtt_messages.inc()
        received_at = self._clock()
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # the spec requires UTF-8; a broken client may not care
            topic = "<undecodable topic>"
        body: list[SensorEvent] | DeviceStatus | DeadLetter
        try:
            body = self._router.decode(topic, bytes(msg.payload), received_at)
        except IngestError as exc:
            body = DeadLetter(received_at, topic, exc.reason, exc.detail, bytes(msg.payload))
        # Blocks while the writer is behind: backpressure reaches the broker, nothing drops.
        while not self._handoff.put(Received(msg.mid, msg.qos, body), timeout=1.0):
            if self._stopping:
                return  # not acknowledged: the broker delivers it again next session
