"""MQTT framing on the read buffer (pure logic): packets split anywhere across reads, MQTT 5
properties skipped, malformed packets left to paho."""

from __future__ import annotations

import struct

import pytest

from vigie.sensors._framing import PUBLISH, Publish, decode_publish, frame


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int = 1, mid: int = 7, dup: bool = False,
            props: bytes | None = None) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if props is not None:
        body += varint(len(props)) + props
    body += payload
    header = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0)
    return bytes([header]) + varint(len(body)) + body


def parse_all(buf: bytearray, v5: bool) -> tuple[list[Publish | int], int]:
    """Every whole packet in the buffer: decoded PUBLISHes, other packets by type."""
    out: list[Publish | int] = []
    pos = 0
    while (framed := frame(buf, pos)) is not None:
        start, end = framed
        header = buf[pos]
        msg = decode_publish(buf, header, start, end, v5) if header >> 4 == PUBLISH else None
        out.append(msg if msg is not None else header >> 4)
        pos = end
    return out, pos


PINGRESP = bytes([0xD0, 0x00])
SUBACK = bytes([0x90, 0x03, 0x00, 0x01, 0x01])


@pytest.mark.parametrize("v5", [False, True])
def test_a_stream_split_at_every_byte_gives_the_same_packets(v5: bool) -> None:
    props = b"\x01\x01" if v5 else None  # payload format indicator: UTF-8
    stream = (publish(b"vigie/a/b/event", b'{"state":"open"}', qos=1, mid=1, props=props)
              + SUBACK
              + publish(b"vigie/a/c/event", b"x" * 300, qos=0, props=props)  # 2-byte length
              + PINGRESP
              + publish(b"vigie/\xc3\xa9/d/event", b"", qos=1, mid=65535, dup=True,
                        props=props))
    whole, used = parse_all(bytearray(stream), v5)
    assert used == len(stream)
    assert whole == [
        Publish(b"vigie/a/b/event", b'{"state":"open"}', 1, 1, False), 9,
        Publish(b"vigie/a/c/event", b"x" * 300, 0, 0, False), 13,
        Publish(b"vigie/\xc3\xa9/d/event", b"", 65535, 1, True),
    ]
    for cut in range(len(stream) + 1):
        buf = bytearray(stream[:cut])
        first, pos = parse_all(buf, v5)
        assert pos <= cut
        del buf[:pos]
        buf += stream[cut:]
        rest, used = parse_all(buf, v5)
        assert used == len(buf)
        assert first + rest == whole, f"cut at {cut}"


def test_a_large_payload_with_a_four_byte_length() -> None:
    payload = b"p" * 2_100_000  # remaining length needs 4 bytes
    packet = publish(b"t/x/y/event", payload, qos=1, mid=3)
    assert frame(bytearray(packet[:-1]), 0) is None
    msgs, used = parse_all(bytearray(packet), v5=False)
    assert used == len(packet) and msgs == [Publish(b"t/x/y/event", payload, 3, 1, False)]


def test_mqtt5_properties_are_skipped_not_taken_for_payload() -> None:
    props = b"\x01\x01" + b"\x26" + struct.pack("!H", 3) + b"key" + struct.pack("!H", 1) + b"v"
    packet = publish(b"t/s/d/event", b"{}", qos=1, mid=9, props=props)
    msgs, _ = parse_all(bytearray(packet), v5=True)
    assert msgs == [Publish(b"t/s/d/event", b"{}", 9, 1, False)]


@pytest.mark.parametrize("packet", [
    bytes([0x32, 0x01, 0x00]),  # no room for the topic length
    bytes([0x32, 0x04, 0x00, 0x09, 0x61, 0x62]),  # topic longer than the packet
    bytes([0x32, 0x03, 0x00, 0x01, 0x61]),  # QoS 1 without a packet id
])
def test_a_malformed_publish_is_left_to_paho(packet: bytes) -> None:
    buf = bytearray(packet)
    framed = frame(buf, 0)
    assert framed is not None
    assert decode_publish(buf, buf[0], *framed, v5=False) is None


def test_mqtt5_properties_running_past_the_packet_are_malformed() -> None:
    body = struct.pack("!H", 1) + b"t" + struct.pack("!H", 1) + varint(50) + b"\x01\x01"
    buf = bytearray(bytes([0x32]) + varint(len(body)) + body)
    framed = frame(buf, 0)
    assert framed is not None
    assert decode_publish(buf, buf[0], *framed, v5=True) is None


def test_a_remaining_length_over_four_bytes_is_framed_for_paho_to_refuse() -> None:
    buf = bytearray([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00])
    assert frame(buf, 0) == (5, 5)
