"""TopicRouter: routing, every payload format, dedup keys and every rejection reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vigie.config import Config, parse_config
from vigie.errors import ConfigError, IngestError
from vigie.events import DeviceStatus, SensorEvent
from vigie.sensors._decode import REJECT_REASONS, TopicRouter

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SITE = "lycee-a"

SENSORS: list[dict[str, Any]] = [
    {"id": "door-1", "kind": "door", "zone": "hall"},
    {"id": "pir-1", "kind": "intrusion", "zone": "cdi"},
    {"id": "tamper-1", "kind": "tamper"},
    {"id": "panic-1", "kind": "panic"},
    {"id": "smoke-1", "kind": "smoke"},
    {"id": "tech-1", "kind": "technical"},
    {"id": "door-2", "kind": "door", "topic": "legacy/door-2"},
    {"id": "z-door", "kind": "door", "zone": "hall", "format": "zigbee2mqtt",
     "topic": "zigbee2mqtt/porte hall"},
    {"id": "z-pir", "kind": "intrusion", "format": "zigbee2mqtt", "topic": "zigbee2mqtt/pir"},
    {"id": "z-smoke", "kind": "smoke", "format": "zigbee2mqtt", "topic": "zigbee2mqtt/smoke"},
    {"id": "z-leak", "kind": "technical", "format": "zigbee2mqtt", "topic": "zigbee2mqtt/leak"},
    {"id": "z-panic", "kind": "panic", "format": "zigbee2mqtt", "topic": "zigbee2mqtt/sos"},
    {"id": "z-tamper", "kind": "tamper", "format": "zigbee2mqtt",
     "topic": "zigbee2mqtt/tamper"},
    {"id": "panel", "kind": "intrusion", "zone": "bat-b", "format": "json",
     "topic": "centrale/lycee-a/zone1",
     "mapping": {"state": "payload.alarm.state", "ts": "payload.time",
                 "id": "payload.events.0.id",
                 "values": {"1": "alarm", "0": "normal", "TRUE": "Alarm", "false": "normal"}}},
    {"id": "panel-2", "kind": "technical", "format": "json", "mapping": {"state": "status"}},
    # Its explicit topic is also a native-shaped topic: no second subscription needed.
    {"id": "door-3", "kind": "door", "topic": "vigie/other/door-3/event"},
]


def make_config(sensors: list[dict[str, Any]] = SENSORS, **mqtt: Any) -> Config:
    return parse_config({
        "mqtt": mqtt,
        "sites": [
            {"id": SITE, "name": "Lycée A", "uai": "0781234A", "sensors": sensors},
            {"id": "college-b", "name": "Collège B", "uai": "0781235B",
             "sensors": [{"id": "door-1", "kind": "door"}]},
        ],
    })


ROUTER = TopicRouter(make_config())


def events(topic: str, payload: Any, received_at: datetime = NOW) -> list[SensorEvent]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    result = ROUTER.decode(topic, raw, received_at)
    assert isinstance(result, list)
    return result


def one(topic: str, payload: Any, received_at: datetime = NOW) -> SensorEvent:
    [event] = events(topic, payload, received_at)
    return event


def native(sensor: str) -> str:
    return f"vigie/{SITE}/{sensor}/event"


def rejected(topic: str, payload: Any) -> IngestError:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(IngestError) as info:
        ROUTER.decode(topic, raw, NOW)
    assert info.value.reason in REJECT_REASONS
    assert 0 < len(info.value.detail) <= 200
    return info.value


# --- subscriptions and routing -----------------------------------------------------------


def test_subscriptions() -> None:
    subs = ROUTER.subscriptions()
    assert subs[:2] == ["vigie/+/+/event", "vigie/+/+/status"]
    assert len(subs) == len(set(subs))
    for topic in ("legacy/door-2", "zigbee2mqtt/porte hall", "zigbee2mqtt/porte hall/availability",
                  "centrale/lycee-a/zone1", "zigbee2mqtt/tamper/availability"):
        assert topic in subs
    assert "legacy/door-2/availability" not in subs  # availability is zigbee2mqtt's
    assert "centrale/lycee-a/zone1/availability" not in subs
    assert "vigie/other/door-3/event" not in subs  # covered by the wildcard


def test_custom_prefix() -> None:
    router = TopicRouter(make_config(topic_prefix="acme/vigie"))
    assert router.subscriptions()[:2] == ["acme/vigie/+/+/event", "acme/vigie/+/+/status"]
    result = router.decode(f"acme/vigie/{SITE}/door-1/event", b'{"state": "open"}', NOW)
    assert isinstance(result, list)
    assert result[0].sensor == "door-1"
    with pytest.raises(IngestError) as info:
        router.decode(f"vigie/{SITE}/door-1/event", b'{"state": "open"}', NOW)
    assert info.value.reason == "unknown_topic"


def test_same_sensor_id_on_two_sites() -> None:
    assert one(native("door-1"), {"state": "open"}).site == SITE
    assert one("vigie/college-b/door-1/event", {"state": "open"}).site == "college-b"


def test_explicit_topic_routing() -> None:
    event = one("legacy/door-2", {"state": "open"})
    assert (event.site, event.sensor, event.kind) == (SITE, "door-2", "door")
    # Its events come on its own topic only; its status still on the native one.
    err = rejected(native("door-2"), {"state": "open"})
    assert err.reason == "unknown_topic"
    assert "legacy/door-2" in err.detail
    status = ROUTER.decode(f"vigie/{SITE}/door-2/status", b"offline", NOW)
    assert status == DeviceStatus(SITE, "door-2", False, NOW)
    assert one("vigie/other/door-3/event", {"state": "closed"}).sensor == "door-3"


def test_topic_collision_is_a_config_error() -> None:
    sensors = [{"id": "a", "kind": "door"},
               {"id": "b", "kind": "door", "topic": f"vigie/{SITE}/a/event"}]
    with pytest.raises(ConfigError, match="leads to both"):
        TopicRouter(make_config(sensors))


@pytest.mark.parametrize("prefix", ["", "vigie/+", "#"])
def test_bad_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError):
        TopicRouter(make_config(topic_prefix=prefix))


# --- native events -------------------------------------------------------------------------


def test_native_full_event() -> None:
    event = one(native("door-1"), {
        "id": "evt-1", "ts": "2026-03-01T12:30:00+01:00", "kind": "door", "state": " OPEN ",
        "zone": "préau", "data": {"door": 3}, "battery": 87, "firmware": "1.2",
    })
    assert event == SensorEvent(
        site=SITE, sensor="door-1", kind="door", state="open",
        ts=datetime(2026, 3, 1, 11, 30, tzinfo=UTC), received_at=NOW,
        dedup_key=f"id:{SITE}/door-1/evt-1", zone="préau", data={"door": 3}, battery=87,
    )


def test_native_minimal_event_uses_configuration_and_reception() -> None:
    event = one(native("pir-1"), {"state": "alarm"})
    assert (event.kind, event.state, event.zone, event.ts) == ("intrusion", "alarm", "cdi", NOW)
    assert event.data == {}
    assert event.battery is None
    assert event.dedup_key.startswith("r:")


def test_native_null_means_absent() -> None:
    event = one(native("door-1"), {"state": "open", "id": None, "ts": None, "zone": None,
                                   "data": None, "battery": None, "kind": None})
    assert (event.zone, event.ts, event.data) == ("hall", NOW, {})


@pytest.mark.parametrize(("ts", "utc"), [
    ("2026-03-01T12:30:00+01:00", datetime(2026, 3, 1, 11, 30, tzinfo=UTC)),
    ("2026-03-01T12:30:00Z", datetime(2026, 3, 1, 12, 30, tzinfo=UTC)),
    ("2026-03-01t12:30:00z", datetime(2026, 3, 1, 12, 30, tzinfo=UTC)),
    ("2026-03-01 12:30:00-05:30", datetime(2026, 3, 1, 18, 0, tzinfo=UTC)),
    ("2026-03-01T12:30:00.123456789+00:00", datetime(2026, 3, 1, 12, 30, 0, 123456, tzinfo=UTC)),
    ("2026-03-02T11:59:00+00:00", datetime(2026, 3, 2, 11, 59, tzinfo=UTC)),  # < 1 day ahead
    ("1999-12-31T23:59:59+00:00", datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)),
])
def test_timestamps_converted_to_utc(ts: str, utc: datetime) -> None:
    event = one(native("door-1"), {"state": "open", "ts": ts})
    assert event.ts == utc
    assert event.ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize("ts", [
    "2026-03-01T12:30:00",  # naive
    "2026-03-01",
    "2026-03-01T12:30+01:00",
    "yesterday",
    "2026-02-30T12:00:00Z",
    "2026-03-01T25:00:00Z",
    "2026-03-01T12:00:00+24:00",
    "9999-12-31T23:59:59-23:59",  # overflows when converted to UTC
    "0001-01-01T00:00:00+01:00",
    "2026-03-02T12:00:01Z",  # more than a day ahead
    1767225600,
    True,
    ["2026-03-01T12:30:00Z"],
])
def test_bad_timestamps(ts: Any) -> None:
    err = rejected(native("door-1"), {"state": "open", "ts": ts})
    assert err.reason == "invalid"
    assert "'ts'" in err.detail


def test_wrong_kind() -> None:
    assert one(native("door-1"), {"state": "open", "kind": "Door"}).kind == "door"
    err = rejected(native("door-1"), {"state": "alarm", "kind": "smoke"})
    assert err.reason == "wrong_kind"
    assert rejected(native("door-1"), {"state": "open", "kind": 3}).reason == "invalid"


@pytest.mark.parametrize(("payload", "field"), [
    ({}, "state"),
    ({"state": None}, "state"),
    ({"state": ""}, "state"),
    ({"state": "   "}, "state"),
    ({"state": 1}, "state"),
    ({"state": "x" * 65}, "state"),
    ({"state": "al\u0007arm"}, "state"),
    ({"state": "open", "id": 12}, "id"),
    ({"state": "open", "id": "x" * 129}, "id"),
    ({"state": "open", "zone": ["a"]}, "zone"),
    ({"state": "open", "data": [1, 2]}, "data"),
    ({"state": "open", "data": "x"}, "data"),
    ({"state": "open", "battery": 101}, "battery"),
    ({"state": "open", "battery": -1}, "battery"),
    ({"state": "open", "battery": 50.5}, "battery"),
    ({"state": "open", "battery": True}, "battery"),
    ({"state": "open", "battery": "50"}, "battery"),
])
def test_native_invalid_fields(payload: dict[str, Any], field: str) -> None:
    err = rejected(native("door-1"), payload)
    assert err.reason == "invalid"
    assert f"'{field}'" in err.detail


def test_type_error_detail() -> None:
    assert rejected(native("door-1"), {"state": 3}).detail == (
        "field 'state': expected a string, got integer"
    )


@pytest.mark.parametrize("payload", [[], [{"state": "open"}], "open", 1, None, True])
def test_native_needs_an_object(payload: Any) -> None:
    assert rejected(native("door-1"), payload).reason == "invalid"


def test_limits_are_inclusive() -> None:
    event = one(native("door-1"), {"state": "S" * 64, "id": "i" * 128, "battery": 100})
    assert event.state == "s" * 64
    assert one(native("door-1"), {"state": "open", "battery": 0}).battery == 0


def test_data_nesting_is_capped() -> None:
    def nest(levels: int) -> Any:
        value: Any = 1
        for i in range(levels):  # containers, alternately arrays and objects
            value = {"a": value} if i % 2 else [value]
        return value

    data = {"x": nest(31)}  # 32 levels, counting `data` itself
    assert one(native("door-1"), {"state": "open", "data": data}).data == data
    err = rejected(native("door-1"), {"state": "open", "data": {"x": nest(32)}})
    assert (err.reason, err.detail) == ("invalid", "nested deeper than 32 levels")
    # Many brackets side by side are not depth.
    wide = {"items": [{"n": [i]} for i in range(200)]}
    assert one(native("door-1"), {"state": "open", "data": wide}).data == wide


# --- status and availability -------------------------------------------------------------


@pytest.mark.parametrize(("payload", "online"), [
    (b"online", True), (b"offline", False), (b" Online\n", True), (b"OFFLINE", False),
    (b'{"state": "online"}', True), (b'{"state":"offline","since":3}', False),
    (b'"online"', True),
])
def test_status(payload: bytes, online: bool) -> None:
    status = ROUTER.decode(f"vigie/{SITE}/door-1/status", payload, NOW)
    assert status == DeviceStatus(site=SITE, sensor="door-1", online=online, received_at=NOW)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "invalid"), (b"   ", "invalid"), (b"up", "invalid"), (b"1", "invalid"),
    (b'{"state": true}', "invalid"), (b'{"online": true}', "invalid"), (b"[]", "invalid"),
    (b'{"state": "online"', "not_json"), (b'"online', "not_json"),
])
def test_bad_status(payload: bytes, reason: str) -> None:
    assert rejected(f"vigie/{SITE}/door-1/status", payload).reason == reason


@pytest.mark.parametrize(("payload", "online"), [
    (b"online", True), (b"offline", False), (b'{"state":"online"}', True),
    (b'{"state":"offline"}', False),
])
def test_z2m_availability(payload: bytes, online: bool) -> None:
    status = ROUTER.decode("zigbee2mqtt/porte hall/availability", payload, NOW)
    assert status == DeviceStatus(site=SITE, sensor="z-door", online=online, received_at=NOW)


def test_native_status_of_a_z2m_sensor() -> None:
    status = ROUTER.decode(f"vigie/{SITE}/z-door/status", b"offline", NOW)
    assert isinstance(status, DeviceStatus)
    assert status.sensor == "z-door"


# --- zigbee2mqtt ---------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "payload", "kind", "state"), [
    ("zigbee2mqtt/porte hall", {"contact": False}, "door", "open"),
    ("zigbee2mqtt/porte hall", {"contact": True}, "door", "closed"),
    ("zigbee2mqtt/pir", {"occupancy": True}, "intrusion", "alarm"),
    ("zigbee2mqtt/pir", {"occupancy": False}, "intrusion", "normal"),
    ("zigbee2mqtt/pir", {"presence": True}, "intrusion", "alarm"),
    ("zigbee2mqtt/smoke", {"smoke": True}, "smoke", "alarm"),
    ("zigbee2mqtt/smoke", {"smoke": False, "test": False}, "smoke", "normal"),
    ("zigbee2mqtt/leak", {"water_leak": True}, "technical", "alarm"),
    ("zigbee2mqtt/leak", {"water_leak": False, "gas": True}, "technical", "alarm"),
    ("zigbee2mqtt/leak", {"water_leak": False, "gas": False}, "technical", "normal"),
    ("zigbee2mqtt/sos", {"action": "emergency"}, "panic", "alarm"),
    ("zigbee2mqtt/sos", {"action": "single"}, "panic", "alarm"),
    ("zigbee2mqtt/sos", {"action": "SOS"}, "panic", "alarm"),
    ("zigbee2mqtt/sos", {"action": "release"}, "panic", "report"),
    ("zigbee2mqtt/sos", {"action": ""}, "panic", "report"),
    ("zigbee2mqtt/tamper", {"tamper": True}, "tamper", "alarm"),
    ("zigbee2mqtt/tamper", {"tamper": False}, "tamper", "normal"),
    ("zigbee2mqtt/porte hall", {"battery": 91, "linkquality": 120}, "door", "report"),
    ("zigbee2mqtt/porte hall", {"contact": None, "voltage": 3000}, "door", "report"),
    ("zigbee2mqtt/smoke", {"occupancy": True}, "smoke", "report"),  # not a smoke field
])
def test_z2m_states(topic: str, payload: dict[str, Any], kind: str, state: str) -> None:
    event = one(topic, payload)
    assert (event.kind, event.state) == (kind, state)
    assert event.data == payload


def test_z2m_full_message_with_tamper() -> None:
    payload = {"contact": False, "tamper": True, "battery": 91, "linkquality": 120,
               "last_seen": "2026-03-01T12:04:05+01:00"}
    door, tamper = events("zigbee2mqtt/porte hall", payload)
    ts = datetime(2026, 3, 1, 11, 4, 5, tzinfo=UTC)
    assert (door.site, door.sensor, door.kind, door.state) == (SITE, "z-door", "door", "open")
    assert (tamper.site, tamper.sensor, tamper.kind, tamper.state) == (
        SITE, "z-door", "tamper", "alarm")
    for event in (door, tamper):
        assert (event.ts, event.zone, event.data) == (ts, "hall", payload)
    # One report, one battery reading: counted once, on the door event.
    assert (door.battery, tamper.battery) == (91, None)
    assert door.dedup_key.startswith("h:")
    assert tamper.dedup_key == door.dedup_key + ":tamper"


def test_z2m_tamper_alone() -> None:
    [event] = events("zigbee2mqtt/pir", {"tamper": True, "battery": 40})
    assert (event.kind, event.state, event.battery) == ("tamper", "alarm", 40)
    assert one("zigbee2mqtt/pir", {"tamper": False}).state == "report"


def test_z2m_tamper_sensor_yields_one_event() -> None:
    assert len(events("zigbee2mqtt/tamper", {"tamper": True})) == 1


def test_z2m_last_seen_epoch_ms() -> None:
    event = one("zigbee2mqtt/pir", {"occupancy": True, "last_seen": 1772366400000})
    assert event.ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert event.dedup_key.startswith("h:")


@pytest.mark.parametrize(("battery", "expected"), [
    (91, 91), (87.6, 88), (0, 0), (100, 100), (255, None), (-1, None), ("91", None),
    (True, None), (None, None),
])
def test_z2m_battery_is_lenient(battery: Any, expected: int | None) -> None:
    assert one("zigbee2mqtt/porte hall", {"contact": True, "battery": battery}).battery == expected


@pytest.mark.parametrize(("payload", "field"), [
    ({"contact": "open"}, "contact"),
    ({"contact": 0}, "contact"),
    ({"contact": True, "tamper": "yes"}, "tamper"),
    ({"contact": True, "last_seen": "2026-03-01 12:04"}, "last_seen"),
    ({"contact": True, "last_seen": 10**30}, "last_seen"),
    ({"contact": True, "last_seen": "2030-01-01T00:00:00Z"}, "last_seen"),
])
def test_z2m_invalid(payload: dict[str, Any], field: str) -> None:
    err = rejected("zigbee2mqtt/porte hall", payload)
    assert err.reason == "invalid"
    assert f"'{field}'" in err.detail


def test_z2m_panic_action_type() -> None:
    assert rejected("zigbee2mqtt/sos", {"action": 1}).reason == "invalid"
    assert rejected("zigbee2mqtt/porte hall", [{"contact": True}]).reason == "invalid"


# --- generic JSON mapping ------------------------------------------------------------------

PANEL = "centrale/lycee-a/zone1"


def panel(state: Any, **extra: Any) -> dict[str, Any]:
    return {"payload": {"alarm": {"state": state}, **extra}}


@pytest.mark.parametrize(("raw", "state"), [
    (1, "alarm"), ("1", "alarm"), (0, "normal"), (True, "alarm"), (False, "normal"),
    ("true", "alarm"), ("Intrusion", "intrusion"), (2, "2"), (1.5, "1.5"),
])
def test_mapped_states(raw: Any, state: str) -> None:
    event = one(PANEL, panel(raw))
    assert (event.site, event.sensor, event.kind, event.zone) == (SITE, "panel", "intrusion",
                                                                  "bat-b")
    assert event.state == state
    assert event.ts == NOW
    assert event.dedup_key.startswith("r:")


def test_mapped_id_and_ts() -> None:
    payload = panel(1, time="2026-03-01T13:00:00+01:00", events=[{"id": 4711}, {"id": 2}])
    event = one(PANEL, payload)
    assert event.ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert event.dedup_key == f"id:{SITE}/panel/4711"
    assert event.data == payload
    assert one(PANEL, panel(1, time=1772366400)).ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert one(PANEL, panel(1, time=1772366400000)).ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert one(PANEL, panel(1, events=[])).dedup_key.startswith("r:")
    assert one(PANEL, panel(1, events={"0": {"id": "a"}})).dedup_key == f"id:{SITE}/panel/a"


@pytest.mark.parametrize("payload", [
    {}, {"payload": None}, {"payload": {"alarm": []}}, panel(None), panel({"x": 1}),
    panel([1]), panel(""), panel("x" * 65), panel(1, time="soon"), panel(1, time=10**20),
    panel(1, events=[{"id": True}]), panel(1, events=[{"id": ""}]), [1, 2], "alarm",
])
def test_mapped_invalid(payload: Any) -> None:
    assert rejected(PANEL, payload).reason == "invalid"


def test_mapped_on_the_native_topic() -> None:
    event = one(native("panel-2"), {"status": "FAULT"})
    assert (event.sensor, event.kind, event.state) == ("panel-2", "technical", "fault")


def test_mapped_array_root() -> None:
    sensors = [{"id": "p", "kind": "smoke", "format": "json", "mapping": {"state": "1.s"}}]
    router = TopicRouter(make_config(sensors))
    [event] = router.decode(f"vigie/{SITE}/p/event", b'[{"s": 0}, {"s": "ALARM"}]', NOW)
    assert event.state == "alarm"
    assert event.data == {"value": [{"s": 0}, {"s": "ALARM"}]}


# --- dedup keys ----------------------------------------------------------------------------


def test_same_device_id_same_key() -> None:
    a = one(native("door-1"), {"id": "e1", "state": "open"})
    b = one(native("door-1"), {"id": "e1", "state": "open", "ts": "2026-03-01T12:00:00Z"})
    c = one(native("pir-1"), {"id": "e1", "state": "alarm"})
    assert a.dedup_key == b.dedup_key == f"id:{SITE}/door-1/e1"
    assert c.dedup_key != a.dedup_key  # an id is only unique per device


def test_redelivered_timestamped_payload_same_key() -> None:
    raw = b'{"state": "open", "ts": "2026-03-01T12:00:00Z"}'
    a, b = one(native("door-1"), raw), one(native("door-1"), raw, NOW + timedelta(seconds=5))
    assert a.dedup_key == b.dedup_key
    assert a.dedup_key.startswith("h:")
    assert len(a.dedup_key) == 2 + 32
    other = one(native("door-1"), b'{"state": "open", "ts": "2026-03-01T12:00:01Z"}')
    assert other.dedup_key != a.dedup_key
    assert one("vigie/college-b/door-1/event", raw).dedup_key != a.dedup_key


def test_untimed_payload_unique_keys() -> None:
    raw = b'{"state": "open"}'
    keys = {one(native("door-1"), raw).dedup_key for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("r:") for k in keys)
    z2m = {events("zigbee2mqtt/porte hall", {"contact": False, "tamper": True})[1].dedup_key
           for _ in range(10)}
    assert len(z2m) == 10
    assert all(k.startswith("r:") and k.endswith(":tamper") for k in z2m)


# --- rejections ----------------------------------------------------------------------------


def test_reject_reasons_are_fixed() -> None:
    assert REJECT_REASONS == ("oversized", "binary", "not_json", "unknown_topic",
                              "unknown_site", "unknown_sensor", "wrong_kind", "invalid")


def test_oversized_comes_first() -> None:
    router = TopicRouter(make_config(max_payload=256))
    assert router.decode(native("door-1"), b'{"state":"open"}'.ljust(256), NOW)
    for topic in (native("door-1"), "nowhere", "vigie/nosite/x/event"):
        with pytest.raises(IngestError) as info:
            router.decode(topic, b"\xff" * 257, NOW)
        assert (info.value.reason, info.value.detail) == ("oversized", "257 bytes, limit 256")


@pytest.mark.parametrize("payload", [
    b'{"state": "open"}\x00', b'{"state": "op\x01en"}', b"\x1b[31m", b'{"state": "\x7f"}',
    b"\xff\xfe{}", b'{"state": "\xc3"}', b'{"state": "\xed\xa0\x80"}', b'{"s": "\xc2\x85"}',
    b'{"state": "open", "data": {"k": "a\\u0000b"}}', b'{"state": "open\\\\\\u0000"}',
    b"\x89PNG\r\n\x1a\n",
])
def test_binary(payload: bytes) -> None:
    assert rejected(native("door-1"), payload).reason == "binary"


def test_text_that_looks_binary_but_is_not() -> None:
    event = one(native("door-1"), b'{\t"state":\r\n"open", "data": {"path": "C:\\\\u0000"}}')
    assert event.data == {"path": "C:\\u0000"}
    assert one(native("door-1"), '{"state": "ouvert", "zone": "réfectoire ☕"}'.encode()).zone \
        == "réfectoire ☕"


@pytest.mark.parametrize("payload", [
    b"", b"{", b"open", b"{'state': 'open'}", b'{"state": "open",}', b'{"state": NaN}',
    b'{"a": 1e999}', b'{"state": "open"} {}', b"[" * 1100 + b"]" * 1100,
    b'\xef\xbb\xbf{"state": "open"}', b'{"state": "\\ud800"}',
])
def test_not_json(payload: bytes) -> None:
    err = rejected(native("door-1"), payload)
    assert err.reason == "not_json"
    assert err.detail.startswith("not valid JSON")


@pytest.mark.parametrize(("topic", "reason"), [
    ("vigie/nosite/door-1/event", "unknown_site"),
    ("vigie/nosite/door-1/status", "unknown_site"),
    (f"vigie/{SITE}/nosensor/event", "unknown_sensor"),
    (f"vigie/{SITE}/nosensor/status", "unknown_sensor"),
    (f"vigie/{SITE}/door-1/other", "unknown_topic"),
    (f"vigie/{SITE}/door-1/event/x", "unknown_topic"),
    (f"vigie/{SITE}/event", "unknown_topic"),
    ("zigbee2mqtt/other", "unknown_topic"),
    ("zigbee2mqtt/porte hall/set", "unknown_topic"),
    ("legacy/door-2/availability", "unknown_topic"),
    ("", "unknown_topic"),
    ("vigie/" + "s" * 10_000 + "/x/event", "unknown_site"),
])
def test_unknown_topics(topic: str, reason: str) -> None:
    err = rejected(topic, {"state": "open"})
    assert err.reason == reason


def test_detail_never_quotes_the_payload() -> None:
    secret = "SECRET-PAYLOAD-CONTENT"
    payloads = [
        {"state": secret * 10}, {"state": 1, "x": secret}, {"kind": secret, "state": "a"},
        {"state": "open", "ts": secret}, {"state": "open", "battery": secret},
    ]
    for payload in payloads:
        assert secret not in rejected(native("door-1"), payload).detail
    for raw in (secret.encode() + b"{", b'{"' + secret.encode() + b'": }'):
        assert secret not in rejected(native("door-1"), raw).detail
    assert secret not in rejected(f"vigie/{SITE}/door-1/status", secret.encode()).detail
