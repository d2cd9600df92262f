"""The MQTT subscriber: paho's protocol engine driven by the event loop.

The socket is read on the event loop when it is readable (no network thread: a second busy
thread would contend with the writer for the GIL, which was measured to cost more than the
decoding itself), in large chunks into a buffer. PUBLISH packets of QoS 0 and 1 are framed
and decoded here (`_framing`); every other packet (CONNACK, SUBACK, PINGRESP, QoS 2 flows)
goes whole to paho's protocol engine, which reads it from the same buffer. Each message is
decoded and put in the inbox; the writer stores a batch, then acknowledges it (`ack_many`):
with `manual_ack`, an event the broker considers delivered is always in the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import struct
import time
from collections import OrderedDict
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
from vigie.sensors._framing import PUBLISH, Publish, decode_publish, frame
from vigie.sensors._inbox import Inbox
from vigie.store._events import DeadLetter

__all__ = ["MqttSubscriber", "Received"]

log = logging.getLogger("vigie.sensors")

_PUBACK = struct.Struct("!BBH")  # type, remaining length (2), packet id
# Bytes read per readable event: a few hundred messages, enough to amortise the wake-up,
# few enough that handling them (milliseconds) lets the writer and the API run in between.
_READ_SIZE = 32_768
CONNECT_TIMEOUT = 5.0
RECENTLY_ACKED = 4_000  # messages remembered after their ack (see `_same_as_before`)


Body = list[SensorEvent] | DeviceStatus | DeadLetter


@dataclass(frozen=True, slots=True)
class Received:
    """A message from the broker, decoded, waiting to be made durable and acknowledged."""

    mid: int
    qos: int
    body: list[SensorEvent] | DeviceStatus | DeadLetter
    # The connection it came on: a packet id means something on that connection only.
    connection: int = 0


def _set_tls(client: paho.Client, config: MqttConfig) -> ssl.SSLContext:
    """TLS with the configured CA (else the system's) and client certificate, if any."""
    tls = config.tls
    context = ssl.create_default_context(
        cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    if tls is not None and tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    client.tls_set_context(context)
    if tls is not None and not tls.check_hostname:
        client.tls_insecure_set(True)  # the certificate is still verified against the CA
    return context


class MqttSubscriber:
    def __init__(
        self, config: MqttConfig, client_id: str, router: TopicRouter,
        inbox: Inbox[Received], metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._router = router
        self._inbox = inbox
        self._metrics = metrics
        self._clock = clock
        self._read_at = clock()  # when the current read began: the messages' received_at
        self._connected = asyncio.Event()
        # Received, not yet acknowledged, by packet id: (topic, payload, decoded).
        self._unacked: dict[int, tuple[str, bytes, Body]] = {}
        self._acked: OrderedDict[int, tuple[str, bytes, Body]] = OrderedDict()
        self._accepted = asyncio.Event()  # CONNACK received on the current connection
        self._lost = asyncio.Event()
        self._sock: Any = None
        # Read from the socket, not yet handled: whole packets, then perhaps part of one.
        self._buf = bytearray()
        self._pos = 0
        self._read_error: OSError | None = None  # the connection failed after what is read
        self._eof = False
        self._paused = False
        self._stopping = False
        self._held = False
        self._received = 0
        self._connections = 0
        url = urlsplit(config.url)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self._v5 = config.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            # MQTT 3.1.1: a persistent session; MQTT 5 says it with clean_start in connect.
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        self._client.connect_timeout = CONNECT_TIMEOUT
        if config.username:
            password = config.secret_password()
            self._client.username_pw_set(
                config.username, password.reveal() if password else None)
        self._tls = _set_tls(self._client, config) if config.uses_tls else None
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        self._unsubscribed = asyncio.Event()
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write
        # paho reads its packets from our buffer (see `_readable`).
        self._client._sock_recv = self._buffered_recv  # type: ignore[method-assign,assignment]
        inbox.on_room = self._resume

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def endpoint(self) -> str:
        return f"{self._host}:{self._port}"

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Connect, serve, and reconnect with exponential backoff and jitter, until cancelled."""
        delay = 1.0
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._connect()
                await self._serve()
            except (OSError, TimeoutError) as exc:
                log.warning("cannot reach MQTT broker %s: %s", self.endpoint,
                            exc.strerror if isinstance(exc, OSError) and exc.strerror
                            else type(exc).__name__)
            finally:
                self._close_socket()
            if self._stopping:
                return
            if time.monotonic() - started > 60:
                delay = 1.0  # it worked for a while: a fresh outage starts from the bottom
            # Jitter: nodes that lost the broker together must not all come back together.
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 30.0)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        # Resolve and reach the broker without blocking the loop; paho's own connect is
        # then immediate (a blackholed host would otherwise stall everything for seconds).
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        address = str(infos[0][4][0])
        # Over TLS, the handshake too: a broker vigie cannot trust (or that refuses vigie's
        # certificate) fails here, on the loop, rather than in paho's blocking handshake,
        # which would also leave its socket unclosed.
        tls: dict[str, Any] = (
            {"ssl": self._tls, "server_hostname": self._host} if self._tls else {})
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(address, self._port, **tls), CONNECT_TIMEOUT)
        writer.close()
        kwargs: dict[str, Any] = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = int(self._config.session_expiry)
            # Our bounded inbox, not the broker's default window (often 20), limits how many
            # messages wait unacknowledged: enough for big batches.
            props.ReceiveMaximum = 65_535
            kwargs = {"clean_start": False, "properties": props}
        self._lost.clear()
        self._accepted.clear()
        # Over TLS the certificate names the host, not its address: paho resolves it again
        # (answered from the resolver's cache, just filled above).
        host = self._host if self._config.uses_tls else address
        self._client.connect(host, self._port, self._config.keepalive, **kwargs)
        # Only the CONNACK has a deadline. The SUBACK may sit behind a backlog the broker
        # replays for our session first; if our inbox is full meanwhile, it can take as
        # long as the database needs, and timing out there would throw the session's
        # progress away and start the replay over.
        await asyncio.wait_for(self._accepted.wait(), CONNECT_TIMEOUT)

    async def _serve(self) -> None:
        """Keep-alive pings until the connection is lost."""
        while not self._lost.is_set():
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # comes in the loop turn the event is set, and the task would go on.
            try:
                async with asyncio.timeout(1.0):
                    await self._lost.wait()
            except TimeoutError:
                self._client.loop_misc()

    def pause(self) -> None:
        """Stop reading from the broker for good (shutdown); the connection stays up, so
        acks still go out. Room made in the inbox no longer resumes reading."""
        self._held = True
        self._pause()

    async def stop(self, linger: float = 1.0) -> None:
        """Stop reading, send what is queued (acks) and a DISCONNECT (the session stays at
        the broker), release the socket. `run` returns after that.

        paho closes its socket as soon as the DISCONNECT is written. With messages we no
        longer read still in the socket's receive buffer, that close would be a reset, and
        the broker could drop our last acknowledgements with the connection (then deliver
        those messages again: a keyless event would be stored twice). So the connection is
        kept open on a duplicate of the socket, half-closed, and drained until the broker
        closes it (at most `linger` seconds).
        """
        self._stopping = True
        self.pause()
        sock = self._sock
        if sock is None:
            self._close_socket()
            return
        kept = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            self._client.disconnect()
            deadline = time.monotonic() + linger
            self._client.loop_write()  # the acks, then the DISCONNECT (paho closes then)
            while self._sock is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the send buffer was full: let it drain
                self._client.loop_write()
            self._close_socket()
            await _drain_until_closed(kept, deadline)
        finally:
            kept.close()

    def ack_many(self, received: Sequence[Received]) -> None:
        """Acknowledge a batch of QoS 1 messages with one write.

        paho queues each PUBACK separately; at tens of thousands of messages a second that
        costs more than the database write. A PUBACK is four bytes, so the batch goes out
        as one buffer of concatenated PUBACKs (paho only looks at the command of queued
        packets to spot QoS 0 PUBLISHes). QoS 2 messages, rare on sensors, take paho's path.

        Messages received on an earlier connection are not acknowledged: the broker sends
        them again on this one (persistent session), and their packet ids may by now name
        other messages, not yet stored. The copy is stored once, by its dedup key.
        """
        if self._sock is None:
            return  # the broker redelivers them to the next session; stored once by key
        current = [r for r in received if r.connection == self._connections]
        for r in current:
            # Kept a little longer: an ack written as the connection died may not have
            # reached the broker, which then sends the message again.
            if (entry := self._unacked.pop(r.mid, None)) is not None:
                self._acked[r.mid] = entry
                self._acked.move_to_end(r.mid)
        while len(self._acked) > RECENTLY_ACKED:
            self._acked.popitem(last=False)
        blob = b"".join(_PUBACK.pack(0x40, 2, r.mid) for r in current if r.qos == 1)
        if blob:
            self._client._packet_queue(0x40, blob, 0, 1)
        for r in current:
            if r.qos == 2:
                self._client.ack(r.mid, 2)

    # flow control -----------------------------------------------------------------------

    def _pause(self) -> None:
        if not self._paused and self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock)
        self._paused = True

    def _resume(self) -> None:
        if self._held:
            return
        if self._paused and self._sock is not None:
            loop = asyncio.get_running_loop()
            loop.add_reader(self._sock, self._readable)
            # What was read before the pause waits in the buffer, not in the socket: the
            # socket may never become readable again for it.
            loop.call_soon(self._handle_buffer)
        self._paused = False

    def _readable(self) -> None:
        # One clock reading per read, not per message: they arrived together (a read takes
        # milliseconds), and at tens of thousands of messages a second the calls show.
        self._read_at = self._clock()
        self._fill()
        self._handle_buffer()

    def _fill(self) -> None:
        """One large read from the socket into the buffer (over TLS, also what the TLS
        layer holds already decrypted: the socket would not signal it as readable)."""
        sock = self._sock
        try:
            while True:
                data = sock.recv(_READ_SIZE)
                if not data:
                    self._eof = True
                    return
                self._buf += data
                if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except ssl.SSLWantWriteError:
            self._client._call_socket_register_write()
        except OSError as exc:
            self._read_error = exc
        else:
            self._client._last_bytes_received = paho.time_func()  # keep-alive: data came

    def _handle_buffer(self) -> None:
        """Handle the whole packets in the buffer: PUBLISHes here, the rest by paho. Stops
        when the inbox is full (the writer resumes us); a failed connection is reported to
        paho once what arrived before the failure is handled."""
        if self._sock is None:
            return
        buf, pos, v5 = self._buf, self._pos, self._v5
        while not self._paused and pos < len(buf):
            framed = frame(buf, pos)
            if framed is None:
                break  # the rest of this packet is still on its way
            start, end = framed
            header = buf[pos]
            publish = None
            if header >> 4 == PUBLISH and header & 0x06 != 0x04:  # QoS 0 or 1
                publish = decode_publish(buf, header, start, end, v5)
            if publish is not None:
                pos = end
                self._deliver(publish)
                continue
            # paho reads this packet from the buffer (`_buffered_recv`) and handles it.
            self._pos = pos
            rc = self._client._packet_read()
            pos = self._pos
            if rc:
                self._client._loop_rc_handle(rc)
                return
            if self._sock is None:
                return  # paho closed the connection (a DISCONNECT from the broker)
        del buf[:pos]
        self._pos = 0
        if self._received:
            self._metrics.mqtt_messages.inc(self._received)
            self._received = 0
        if (self._eof or self._read_error) and not self._paused:
            # Let paho find the connection lost (its disconnect callbacks, the socket
            # closed): what is left in the buffer is part of a packet that will not come.
            buf.clear()
            self._client.loop_read()

    def _buffered_recv(self, size: int) -> bytes:
        """paho's socket read, served from the buffer; an empty buffer is an empty socket
        (or the failure that was found reading it)."""
        buf, pos = self._buf, self._pos
        if pos < len(buf):
            data = bytes(buf[pos:pos + size])
            self._pos = pos + len(data)
            return data
        if self._read_error is not None:
            raise self._read_error
        if self._eof:
            return b""
        if self._sock is None:
            raise ConnectionError("not connected")
        raise BlockingIOError

    def _close_socket(self) -> None:
        # paho closes the connection (calling _on_socket_close) and its wake-up socket pair.
        self._client._reset_sockets()

    # paho callbacks, all on the event loop ----------------------------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        self._buf.clear()
        self._pos = 0
        self._read_error = None
        self._eof = False
        if not self._paused:
            asyncio.get_running_loop().add_reader(sock, self._readable)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        self._sock = None
        self._lost.set()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        asyncio.get_running_loop().add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        asyncio.get_running_loop().remove_writer(sock)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.endpoint, reason)
            return
        self._accepted.set()
        self._connections += 1
        if self._connections > 1:
            self._metrics.mqtt_reconnects.inc()
        qos = self._config.qos
        topics: list[tuple[str, int]] = [(t, qos) for t in self._filters()]
        client.subscribe(topics)
        log.info("connected to MQTT broker %s (session present: %s), %d subscriptions",
                 self.endpoint, getattr(flags, "session_present", "?"), len(topics))
        if getattr(flags, "session_present", False):
            # The broker kept our subscriptions: nothing published from now on is missed,
            # even before the SUBACK of the re-subscription arrives.
            self._mark_connected()
        else:
            self._unacked.clear()  # a new session: packet ids start afresh
            self._acked.clear()

    # several nodes (vigie.cluster) --------------------------------------------------------

    def _filters(self) -> list[str]:
        """What to subscribe to: with shared subscriptions, the nodes of a cluster split the
        messages of each filter among them."""
        group = self._config.shared_group
        return [f"$share/{group}/{t}" if group else t for t in self._router.subscriptions()]

    async def leave_shared_group(self, timeout: float) -> bool:
        """Unsubscribe, and keep reading until the broker confirms (what it sent before
        is read, stored and acknowledged by the shutdown that follows). For a node leaving
        a shared group: the broker would otherwise keep queueing this node's share in its
        session (Mosquitto does), which a node scaled down never resumes. False if the
        broker did not confirm in time."""
        if self._sock is None or not self._config.shared_group:
            return False
        self._unsubscribed.clear()
        self._client.unsubscribe(self._filters())
        try:
            await asyncio.wait_for(self._unsubscribed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int,
                        reasons: list[ReasonCode], properties: Any) -> None:
        self._unsubscribed.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("MQTT broker %s refused %d subscription(s): %s", self.endpoint,
                      len(refused), refused[0])
        # Connected means subscribed: from here on, nothing published is missed.
        self._mark_connected()

    def _mark_connected(self) -> None:
        self._connected.set()
        self._metrics.mqtt_connected.set(1)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)
        self._lost.set()
        if was_connected and not self._stopping:
            log.warning("disconnected from MQTT broker %s: %s; reconnecting",
                        self.endpoint, reason)

    def _same_as_before(self, msg: Publish, topic: str, body: Body) -> Body:
        """A message the broker sends again (DUP, same packet id: its session resumed) that
        we received on an earlier connection and did not acknowledge there gets the same
        decoding, so the same dedup keys: a keyless event is not stored a second time.
        Remembered until acknowledged."""
        before = None
        if msg.dup:
            before = self._unacked.get(msg.mid) or self._acked.get(msg.mid)
        if before is not None and before[0] == topic and before[1] == msg.payload:
            body = before[2]
        self._unacked[msg.mid] = (topic, msg.payload, body)
        return body

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """A message paho decoded: QoS 2 (its PUBREL has come); the rest is `_deliver`ed
        straight from the buffer."""
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        self._deliver(Publish(msg._topic, payload, msg.mid, msg.qos, bool(msg.dup)))

    def _deliver(self, msg: Publish) -> None:
        self._received += 1  # counted into the metric once per read, not once per message
        received_at = self._read_at
        try:
            topic = msg.topic.decode()
        except UnicodeDecodeError:  # the spec requires UTF-8; a broken client may not care
            topic = "<undecodable topic>"
        body: list[SensorEvent] | DeviceStatus | DeadLetter
        try:
            body = self._router.decode(topic, msg.payload, received_at)
        except IngestError as exc:
            body = DeadLetter(received_at, topic, exc.reason, exc.detail, msg.payload)
        except Exception as exc:  # a decoder bug must not kill the connection
            log.exception("decoder failed on a message from %s", topic)
            body = DeadLetter(received_at, topic, "internal", type(exc).__name__, msg.payload)
        if msg.qos:
            body = self._same_as_before(msg, topic, body)
        self._inbox.append(Received(msg.mid, msg.qos, body, self._connections))
        if self._inbox.full:
            self._pause()  # the writer resumes us when it has made room


async def _drain_until_closed(sock: socket.socket, deadline: float) -> None:
    """Half-close, then read and drop whatever comes until the peer closes (or time is up),
    so that closing the socket sends a FIN after our data, not a reset."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(loop.sock_recv(sock, 65_536), left):
                return
    except (OSError, TimeoutError):
        return
