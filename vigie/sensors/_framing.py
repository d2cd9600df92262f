"""MQTT framing on a read buffer: where each packet starts and ends, and PUBLISH decoding.

paho reads a packet with at least three `recv` calls (the command byte, each byte of the
remaining length, the rest) and decodes a PUBLISH through `struct` formats built per
message, a `Properties` object and an `MQTTMessage`: at ten thousand messages a second that
was a third of the node's time, more than the database write. vigie reads the socket in
large chunks into a buffer instead, frames packets here, decodes the PUBLISHes it receives
(QoS 0 and 1) itself, and hands every other packet, whole, to paho's protocol engine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Publish", "decode_publish", "frame"]

PUBLISH = 3


@dataclass(frozen=True, slots=True)
class Publish:
    topic: bytes
    payload: bytes
    mid: int
    qos: int
    dup: bool


def _varint(buf: bytearray, i: int, end: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at buf[i:]: (value, index after it); None if it runs
    past `end`. More than four bytes is a protocol error: (-1, index of the fifth)."""
    value = 0
    shift = 0
    while i < end:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            return -1, i
    return None


def frame(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """(start of the variable header, end of the packet) of the packet at `pos`, or None if
    the buffer does not hold all of it yet. A remaining length longer than four bytes is a
    protocol error: returned as framed (start = end = pos + 5) so that the caller hands it
    to paho, which closes the connection."""
    end = len(buf)
    length = _varint(buf, pos + 1, end)
    if length is None:
        return None
    value, i = length
    if value < 0:
        return i, i
    if i + value > end:
        return None
    return i, i + value


def decode_publish(buf: bytearray, header: int, start: int, end: int, v5: bool
                   ) -> Publish | None:
    """The PUBLISH in buf[start:end] (its variable header and payload), or None if it is
    malformed (paho then reports the protocol error and drops the connection)."""
    qos = (header >> 1) & 0x03
    if end - start < 2:
        return None
    topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1])
    i = topic_end
    mid = 0
    if qos:
        if i + 2 > end:
            return None
        mid = (buf[i] << 8) | buf[i + 1]
        i += 2
    if v5:  # properties: skipped (vigie announces no topic alias, so none is used)
        props = _varint(buf, i, end)
        if props is None or props[0] < 0:
            return None
        i = props[1] + props[0]
    if i > end or topic_end > end:
        return None
    return Publish(bytes(buf[start + 2:topic_end]), bytes(buf[i:end]), mid, qos,
                   bool(header & 0x08))
