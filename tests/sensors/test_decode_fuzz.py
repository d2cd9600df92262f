"""Hostile input: whatever the bytes, the decoder returns valid values or raises IngestError."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie.config import parse_config
from vigie.errors import IngestError
from vigie.events import DeviceStatus, SensorEvent
from vigie.sensors._decode import REJECT_REASONS, TopicRouter

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CONFIG = parse_config({"sites": [{
    "id": "lycee-a", "name": "Lycée A", "uai": "0781234A",
    "sensors": [
        {"id": "door", "kind": "door"},
        {"id": "pir", "kind": "intrusion"},
        {"id": "tamper", "kind": "tamper"},
        {"id": "panic", "kind": "panic"},
        {"id": "smoke", "kind": "smoke"},
        {"id": "tech", "kind": "technical"},
        {"id": "z-door", "kind": "door", "format": "zigbee2mqtt", "topic": "z2m/door"},
        {"id": "z-pir", "kind": "intrusion", "format": "zigbee2mqtt", "topic": "z2m/pir"},
        {"id": "z-smoke", "kind": "smoke", "format": "zigbee2mqtt", "topic": "z2m/smoke"},
        {"id": "z-leak", "kind": "technical", "format": "zigbee2mqtt", "topic": "z2m/leak"},
        {"id": "z-sos", "kind": "panic", "format": "zigbee2mqtt", "topic": "z2m/sos"},
        {"id": "z-tamper", "kind": "tamper", "format": "zigbee2mqtt", "topic": "z2m/tamper"},
        {"id": "panel", "kind": "intrusion", "format": "json", "topic": "panel/1",
         "mapping": {"state": "p.alarm.state", "ts": "p.time", "id": "p.events.0.id",
                     "values": {"1": "alarm", "0": "normal"}}},
    ],
}]})
ROUTER = TopicRouter(CONFIG)

NATIVE = [f"vigie/lycee-a/{s}/event" for s in ("door", "pir", "tamper", "panic", "smoke", "tech")]
STATUS = ["vigie/lycee-a/door/status", "z2m/door/availability", "z2m/sos/availability"]
Z2M = ["z2m/door", "z2m/pir", "z2m/smoke", "z2m/leak", "z2m/sos", "z2m/tamper"]
TOPICS = [*NATIVE, *STATUS, *Z2M, "panel/1", "vigie/nosite/door/event",
          "vigie/lycee-a/nosensor/event", "elsewhere", ""]

VALID: list[tuple[str, bytes]] = [
    (NATIVE[0], b'{"id": "e-1", "ts": "2026-03-01T12:30:00+01:00", "kind": "door", '
                b'"state": "open", "zone": "hall", "data": {"n": [1, 2.5, null]}, "battery": 80}'),
    (NATIVE[1], b'{"state": "alarm", "ts": "2026-03-01T11:00:00Z"}'),
    (NATIVE[3], b'{"state": "alarm"}'),
    (STATUS[0], b"online"),
    (STATUS[1], b'{"state": "offline"}'),
    (Z2M[0], b'{"contact": false, "tamper": true, "battery": 91, "linkquality": 120, '
             b'"last_seen": "2026-03-01T12:04:05+01:00"}'),
    (Z2M[1], b'{"occupancy": true, "battery": 55.5, "last_seen": 1772366400000}'),
    (Z2M[3], b'{"water_leak": false, "gas": true}'),
    (Z2M[4], b'{"action": "emergency", "battery": 100}'),
    (Z2M[5], b'{"tamper": false, "voltage": 3000}'),
    ("panel/1", b'{"p": {"alarm": {"state": 1}, "time": "2026-03-01T12:00:00+01:00", '
                b'"events": [{"id": 4711}]}}'),
]

STATES = ("alarm", "normal", "open", "closed", "fault", "report")


def outcome(topic: str, payload: bytes) -> str:
    """Decode and check the result's invariants; the reason, or "ok"."""
    try:
        result = ROUTER.decode(topic, payload, NOW)
    except IngestError as exc:
        assert exc.reason in REJECT_REASONS
        assert 0 < len(exc.detail) <= 200
        return exc.reason
    if isinstance(result, DeviceStatus):
        assert result.received_at == NOW
        return "ok"
    assert isinstance(result, list)
    assert 1 <= len(result) <= 2
    for event in result:
        check_event(event)
    assert len({e.dedup_key for e in result}) == len(result)
    return "ok"


def check_event(event: SensorEvent) -> None:
    assert isinstance(event, SensorEvent)
    assert isinstance(event.state, str)
    assert 0 < len(event.state) <= 64
    assert event.state == event.state.lower().strip()
    assert event.ts.utcoffset() == timedelta(0)
    assert event.ts - NOW <= timedelta(days=1)
    assert event.dedup_key[:2] in ("id", "h:", "r:")
    assert event.battery is None or 0 <= event.battery <= 100
    assert isinstance(event.data, dict)
    # What the store will write: serialisable, and no NUL that PostgreSQL refuses.
    orjson.dumps(event.data)
    assert not any("\x00" in s for s in strings(event.data))
    assert "\x00" not in event.state + event.zone + event.dedup_key


def strings(doc: Any) -> list[str]:
    found, stack = [], [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, dict):
            found.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


# --- hypothesis ----------------------------------------------------------------------------


json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(STATES)
    | st.sampled_from(["2026-03-01T12:00:00Z", "2026-03-01T12:00:00", "online", "offline"])
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
FIELDS = ("id", "ts", "kind", "state", "zone", "data", "battery", "contact", "tamper",
          "occupancy", "smoke", "water_leak", "gas", "action", "last_seen", "p")
shaped = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=300))
def test_random_bytes(topic: str, payload: bytes) -> None:
    outcome(topic, payload)


@FUZZ
@given(topic=st.sampled_from(TOPICS), value=json_values | shaped)
def test_random_json(topic: str, value: Any) -> None:
    outcome(topic, json.dumps(value).encode())
    outcome(topic, json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@FUZZ
@given(topic=st.sampled_from(TOPICS), text=st.text(max_size=200))
def test_random_text(topic: str, text: str) -> None:
    outcome(topic, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(
    message=st.sampled_from(VALID),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10_000),
                  st.binary(min_size=1, max_size=8)),
        min_size=1, max_size=4,
    ),
)
def test_mutated_valid(message: tuple[str, bytes], edits: list[tuple[str, int, bytes]]) -> None:
    topic, payload = message
    for op, where, blob in edits:
        payload = edit(payload, op, where % (len(payload) + 1), blob)
    outcome(topic, payload)


def edit(payload: bytes, op: str, at: int, blob: bytes) -> bytes:
    if op == "flip" and at < len(payload):
        return payload[:at] + bytes([payload[at] ^ (1 << blob[0] % 8)]) + payload[at + 1:]
    if op == "cut":
        return payload[:at]
    if op == "delete":
        return payload[:at] + payload[at + len(blob):]
    return payload[:at] + blob + payload[at:]


@FUZZ
@given(message=st.sampled_from([m for m in VALID if m[1].startswith(b"{")]),
       key=st.sampled_from(FIELDS), value=json_values)
def test_field_replaced(message: tuple[str, bytes], key: str, value: Any) -> None:
    topic, payload = message
    doc = json.loads(payload)
    doc[key] = value
    outcome(topic, json.dumps(doc).encode())


def test_valid_corpus_decodes() -> None:
    for topic, payload in VALID:
        assert outcome(topic, payload) == "ok", (topic, payload)


# --- a deterministic fuzz loop -------------------------------------------------------------

NASTY = [
    b"\x00", b"\x01", b"\x1b", b"\x7f", b"\xff", b"\xc3", b"\xc2\x85", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\\u0000", b"\\ud800", b"\\\\u0000", b'"', b"\\", b"{", b"}", b"[",
    b"]", b",", b":", b"null", b"true", b"1e999", b"-1e999", b"18446744073709551616",
    b"-9223372036854775809", b"9" * 400, b"0." + b"0" * 400 + b"1", b"1e-999", b"NaN",
    b"Infinity", b'"2026-03-01T12:00:00Z"', b'"9999-12-31T23:59:59-23:59"', b'"\\u00e9"',
    "é☕\U0001f6a8".encode(), b"\xef\xbb\xbf", b" " * 50,
]


def deep(rng: random.Random) -> bytes:
    depth = rng.choice([31, 32, 33, 64, 255, 256, 1000, 1024, 1025, 5000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'{"data":[', b"]}")])
    inner = opener * depth + b"1" + closer * depth
    if rng.random() < 0.5:
        return b'{"state": "open", "data": {"x": ' + inner + b"}}"
    return inner


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.4:
        return rng.choice([None, True, False, 0, -1, 100, 101, 2**64, 1.5, -0.0, "", "open",
                           "ALARM", "x" * 70, "2026-03-01T12:00:00+01:00", "online"])
    if roll < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(FIELDS): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def mutate(rng: random.Random, payload: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(payload))
        op = rng.randrange(5)
        if op == 0 and payload:
            at = min(at, len(payload) - 1)
            payload = payload[:at] + bytes([payload[at] ^ (1 << rng.randrange(8))]) \
                + payload[at + 1:]
        elif op == 1:
            payload = payload[:at]
        elif op == 2:
            payload = payload[:at] + rng.choice(NASTY) + payload[at:]
        elif op == 3:
            payload = payload[:at] + payload[at + rng.randint(1, 8):]
        else:
            payload = payload[:at] + payload[at:at + rng.randint(1, 40)] * 2 + payload[at:]
    return payload


def fuzz_case(rng: random.Random) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.03:
        size = rng.choice([65_535, 65_536, 65_537, 200_000])
        return rng.choice(TOPICS), b'{"state": "open", "data": "' + b"x" * size + b'"}'
    if roll < 0.13:
        return rng.choice(TOPICS), rng.randbytes(rng.randint(0, 200))
    if roll < 0.18:
        return rng.choice(VALID)[0], deep(rng)
    if roll < 0.30:
        return rng.choice(TOPICS), json.dumps(random_json(rng)).encode()
    topic, payload = rng.choice(VALID)
    if roll < 0.60 and payload.startswith(b"{"):
        doc = json.loads(payload)
        for _ in range(rng.randint(1, 3)):
            doc[rng.choice(FIELDS)] = random_json(rng, depth=3)
        return topic, json.dumps(doc).encode()
    return topic, mutate(rng, payload)


def test_deterministic_fuzz() -> None:
    rng = random.Random(20260301)
    counts: Counter[str] = Counter()
    runs = 12_000
    for _ in range(runs):
        topic, payload = fuzz_case(rng)
        counts[outcome(topic, payload)] += 1
    print(f"\ndecode fuzz, {runs} payloads:",
          ", ".join(f"{k}={v}" for k, v in counts.most_common()))
    assert sum(counts.values()) == runs
    assert set(counts) - {"ok"} <= set(REJECT_REASONS)
    assert counts["ok"] > 1_000
    for reason in ("oversized", "binary", "not_json", "invalid", "unknown_topic"):
        assert counts[reason] > 0, reason


def test_hostile_backslashes_stay_fast() -> None:
    # The escaped-NUL check must not go quadratic on long runs of backslashes.
    started = time.perf_counter()
    payload = b'{"state": "open", "data": {"s": "' + b"\\" * 59_999 + b'u0000"}}'
    assert outcome(NATIVE[0], payload) == "binary"  # odd: the last one escapes u0000
    payload = b'{"state": "open", "data": {"s": "' + b"\\" * 60_000 + b'u0000"}}'
    assert outcome(NATIVE[0], payload) == "ok"  # even: backslashes, then the text u0000
    payload = b'{"state": "open", "data": {"a": "' + b"\\\\" * 30_000 + b'", "b": "\\u0000"}}'
    assert outcome(NATIVE[0], payload) == "binary"
    assert time.perf_counter() - started < 0.5
