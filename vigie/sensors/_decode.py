"""Turn MQTT messages into sensor events: route the topic, validate the payload.

This is the edge where broker input, hostile until proven otherwise, becomes a `SensorEvent`
or a `DeviceStatus`, or an `IngestError` whose `reason` is one of `REJECT_REASONS` (a metric
label) and whose `detail` says what is wrong without quoting the payload.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias

import orjson

from vigie.config import Config, JsonMapping, SensorConfig
from vigie.errors import ConfigError, IngestError
from vigie.events import DeviceStatus, SensorEvent

__all__ = ["REJECT_REASONS", "TopicRouter"]

REJECT_REASONS: Final = (
    "oversized",
    "binary",
    "not_json",
    "unknown_topic",
    "unknown_site",
    "unknown_sensor",
    "wrong_kind",
    "invalid",
)

Decoded: TypeAlias = "list[SensorEvent] | DeviceStatus"

# JSON whitespace (tab, LF, CR) is text; every other C0 control, DEL and C1 means binary.
_C0: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_C1: Final = re.compile("[\x80-\x9f]")
# The controls valid JSON may still hold, in UTF-8: DEL and C1 (U+0080 to U+009F).
_C1_UTF8: Final = re.compile(rb"\xc2[\x80-\x9f]")
# PostgreSQL cannot store NUL in text or jsonb, so an escaped one would poison a write batch.
_ESCAPED_NUL: Final = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_CONTROL_IN_FIELD: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
_MAX_AHEAD: Final = timedelta(days=1)
# orjson.dumps stops at 255 levels and nothing real nests this deep: cap what the store sees.
_MAX_DEPTH: Final = 32
_MAX_STATE: Final = 64
_MAX_ID: Final = 128
_MAX_ZONE: Final = 128
_MAX_DETAIL: Final = 200
_JSON_TYPES: Final[dict[type, str]] = {
    type(None): "null", bool: "boolean", int: "integer", float: "number",
    str: "string", list: "array", dict: "object",
}
_AVAILABILITY: Final = {"online": True, "offline": False}

# Keys for payloads that carry neither an id nor a timestamp: unique per reception.
_BOOT: Final = uuid.uuid4().hex[:16]
_RECEPTIONS: Final = itertools.count()


# --- routes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Path:
    """A dotted path into a JSON document; integer parts also index arrays."""

    text: str
    parts: tuple[tuple[str, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> _Path:
        parts = tuple(
            (p, int(p) if p.isascii() and p.isdigit() else None) for p in text.split(".")
        )
        return cls(text, parts)

    def find(self, doc: Any) -> Any:
        """The value at this path, or None when any part of it is absent."""
        node = doc
        for key, index in self.parts:
            if isinstance(node, dict):
                node = node.get(key)
            elif isinstance(node, list) and index is not None and index < len(node):
                node = node[index]
            else:
                return None
        return node


@dataclass(frozen=True, slots=True)
class _Mapping:
    state: _Path
    ts: _Path | None
    id: _Path | None
    values: dict[str, str]

    @classmethod
    def compile(cls, mapping: JsonMapping) -> _Mapping:
        return cls(
            state=_Path.parse(mapping.state),
            ts=_Path.parse(mapping.ts) if mapping.ts else None,
            id=_Path.parse(mapping.id) if mapping.id else None,
            values={k.strip().lower(): v.strip().lower() for k, v in mapping.values.items()},
        )


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a topic leads: one sensor, and the function that reads its messages."""

    site: str
    sensor: str
    kind: str
    zone: str
    handler: Callable[[_Route, str, bytes, datetime], Decoded]
    mapping: _Mapping | None = None


class TopicRouter:
    """Finds the sensor a topic belongs to and decodes the payload in that sensor's format.

    Every topic vigie listens to is a key of one dict built here, so the hot path costs one
    hash lookup. A sensor with an explicit `topic` sends its events there and only there; its
    availability still comes on the native status topic (and on `<topic>/availability` for
    zigbee2mqtt).
    """

    def __init__(self, config: Config) -> None:
        prefix = config.mqtt.topic_prefix
        if not prefix or any(c in prefix for c in "+#"):
            raise ConfigError(["mqtt.topic_prefix: expected a non-empty topic without + or #"])
        self._prefix = prefix
        self._max_payload = config.mqtt.max_payload
        self._sites = frozenset(site.id for site in config.sites)
        self._routes: dict[str, _Route] = {}
        self._moved: dict[str, str] = {}  # native event topic -> the sensor's own topic
        self._explicit: list[str] = []
        for site in config.sites:
            for sensor in site.sensors:
                self._add_sensor(site.id, sensor)

    def subscriptions(self) -> list[str]:
        """Topic filters to subscribe to, without overlaps.

        An explicit topic that the native wildcards already match is left out: overlapping
        subscriptions can deliver a message twice, and a payload without id or timestamp
        could then not be deduplicated.
        """
        filters = [f"{self._prefix}/+/+/event", f"{self._prefix}/+/+/status"]
        for topic in self._explicit:
            if topic not in filters and self._native_shape(topic) is None:
                filters.append(topic)
        return filters

    def decode(self, topic: str, payload: bytes, received_at: datetime) -> Decoded:
        """Decode one message; raise IngestError for anything not acceptable.

        `received_at` must be timezone-aware (UTC): it stands in for a missing device
        timestamp and bounds how far in the future a device timestamp may be.
        """
        if len(payload) > self._max_payload:
            raise IngestError("oversized", f"{len(payload)} bytes, limit {self._max_payload}")
        route = self._routes.get(topic)
        if route is None:
            raise self._unrouted(topic)
        return route.handler(route, topic, payload, received_at)

    def _add_sensor(self, site: str, sensor: SensorConfig) -> None:
        base = f"{self._prefix}/{site}/{sensor.id}"
        mapping = _Mapping.compile(sensor.mapping) if sensor.mapping is not None else None
        event = _Route(site, sensor.id, sensor.kind, sensor.zone,
                       _EVENT_HANDLERS[sensor.format], mapping)
        status = _Route(site, sensor.id, sensor.kind, sensor.zone, _decode_status)
        self._add(f"{base}/status", status)
        if sensor.topic is None:
            self._add(f"{base}/event", event)
            return
        self._moved[f"{base}/event"] = sensor.topic
        self._add(sensor.topic, event)
        self._explicit.append(sensor.topic)
        if sensor.format == "zigbee2mqtt":
            self._add(f"{sensor.topic}/availability", status)
            self._explicit.append(f"{sensor.topic}/availability")

    def _add(self, topic: str, route: _Route) -> None:
        other = self._routes.get(topic)
        if other is not None:
            raise ConfigError([
                f"topic {topic!r} leads to both {other.site}/{other.sensor} "
                f"and {route.site}/{route.sensor}"
            ])
        self._routes[topic] = route

    def _native_shape(self, topic: str) -> tuple[str, str] | None:
        """(site, sensor) if the topic has the shape of a native event or status topic."""
        if not topic.startswith(self._prefix + "/"):
            return None
        parts = topic[len(self._prefix) + 1:].split("/", 3)
        if len(parts) != 3 or parts[2] not in ("event", "status"):
            return None
        return parts[0], parts[1]

    def _unrouted(self, topic: str) -> IngestError:
        moved = self._moved.get(topic)
        if moved is not None:
            return _error("unknown_topic", f"this sensor publishes on its topic {moved!r}")
        shape = self._native_shape(topic)
        if shape is None:
            return _error("unknown_topic", "no sensor is configured on this topic")
        site, sensor = shape
        if site not in self._sites:
            return _error("unknown_site", f"no site {_excerpt(site)} in the configuration")
        return _error("unknown_sensor", f"no sensor {_excerpt(sensor)} at site {site}")


# --- checks shared by every format -----------------------------------------------------


def _error(reason: str, detail: str) -> IngestError:
    return IngestError(reason, detail[:_MAX_DETAIL])


def _invalid(detail: str) -> IngestError:
    return _error("invalid", detail)


def _excerpt(text: str) -> str:
    return repr(text[:40]) + ("…" if len(text) > 40 else "")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _check_text(payload: bytes) -> None:
    if _C0.search(payload) is not None:
        raise _error("binary", "control character in payload")
    if not payload.isascii():
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise _error("binary", "payload is not valid UTF-8") from None
        if _C1.search(text) is not None:
            raise _error("binary", "control character in payload")


def _load(payload: bytes) -> Any:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        _check_text(payload)  # binary rather than not_json, when it is
        # orjson's messages name the problem, never the input.
        raise _error("not_json", f"not valid JSON: {exc.msg[:120]} (at char {exc.pos})") from None
    # orjson has refused invalid UTF-8 and raw C0 controls; what valid JSON can still hold:
    if b"\x7f" in payload or (not payload.isascii() and _C1_UTF8.search(payload) is not None):
        raise _error("binary", "control character in payload")
    if b"\\u0000" in payload and _ESCAPED_NUL.search(payload) is not None:
        raise _error("binary", "escaped NUL character (\\u0000) in payload")
    return doc


def _object(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _invalid(f"expected a JSON object, got {_json_type(doc)}")
    return doc


def _check_depth(doc: Any, payload: bytes) -> None:
    if payload.count(b"{") + payload.count(b"[") <= _MAX_DEPTH:
        return  # cannot nest deeper than it has brackets
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _invalid(f"nested deeper than {_MAX_DEPTH} levels")
        if not isinstance(node, dict | list):
            continue
        children: Iterable[Any] = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _invalid(f"field {name!r}: expected a string, got {_json_type(value)}")
    text: str = value.strip()
    if not text:
        raise _invalid(f"field {name!r}: empty")
    if len(text) > limit:
        raise _invalid(f"field {name!r}: longer than {limit} characters")
    if _CONTROL_IN_FIELD.search(text) is not None:
        raise _invalid(f"field {name!r}: control character")
    return text


def _optional_text(value: Any, name: str, limit: int) -> str | None:
    return None if value is None else _text(value, name, limit)


def _not_ahead(ts: datetime, name: str, received_at: datetime) -> datetime:
    if ts - received_at > _MAX_AHEAD:
        raise _invalid(f"field {name!r}: more than a day in the future")
    return ts


def _timestamp(value: Any, name: str, received_at: datetime) -> datetime:
    if not isinstance(value, str):
        raise _invalid(f"field {name!r}: expected an RFC 3339 string, got {_json_type(value)}")
    if len(value) > 40 or _RFC3339.fullmatch(value) is None:
        raise _invalid(
            f"field {name!r}: expected RFC 3339 with an offset, e.g. 2026-01-02T03:04:05+01:00"
        )
    try:
        ts = datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _invalid(f"field {name!r}: not a valid date and time") from None
    return _not_ahead(ts, name, received_at)


def _epoch(value: Any, name: str, received_at: datetime) -> datetime:
    """Seconds since 1970, or milliseconds when too large to be seconds (after year 5138)."""
    seconds = value / 1000 if abs(value) >= 100_000_000_000 else value
    try:
        ts = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise _invalid(f"field {name!r}: epoch time out of range") from None
    return _not_ahead(ts, name, received_at)


def _any_timestamp(value: Any, name: str, received_at: datetime) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _epoch(value, name, received_at)
    return _timestamp(value, name, received_at)


def _dedup_key(route: _Route, device_id: str | None, timed: bool, topic: str,
               payload: bytes) -> str:
    """See SensorEvent: device id, else hash of a timestamped message, else per reception."""
    if device_id is not None:
        return f"id:{route.site}/{route.sensor}/{device_id}"
    if timed:
        blob = topic.encode("utf-8", "surrogatepass") + b"\0" + payload
        return "h:" + hashlib.blake2b(blob, digest_size=16).hexdigest()
    return f"r:{_BOOT}-{next(_RECEPTIONS):x}"


# --- status: native and zigbee2mqtt availability -----------------------------------------


def _decode_status(route: _Route, topic: str, payload: bytes,
                   received_at: datetime) -> DeviceStatus:
    _check_text(payload)
    word: Any = payload.strip().decode("utf-8").lower()
    if not word:
        raise _invalid("empty status payload")
    if word[0] in '{"':
        doc = _load(payload)
        word = doc.get("state") if isinstance(doc, dict) else doc
        word = word.strip().lower() if isinstance(word, str) else None
    online = _AVAILABILITY.get(word) if isinstance(word, str) else None
    if online is None:
        raise _invalid('status: expected online, offline or {"state": "online"|"offline"}')
    return DeviceStatus(site=route.site, sensor=route.sensor, online=online,
                        received_at=received_at)


# --- native events -------------------------------------------------------------------------


def _battery(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise _invalid(f"field 'battery': expected an integer 0-100, got {_json_type(value)}")
    return value


def _data(value: Any, payload: bytes) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"field 'data': expected an object, got {_json_type(value)}")
    _check_depth(value, payload)
    return value


def _check_kind(value: Any, kind: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _invalid(f"field 'kind': expected a string, got {_json_type(value)}")
    if value.strip().lower() != kind:
        raise _error("wrong_kind", f"field 'kind' does not match the configured kind {kind}")


def _decode_native(route: _Route, topic: str, payload: bytes,
                   received_at: datetime) -> list[SensorEvent]:
    doc = _object(_load(payload))
    _check_kind(doc.get("kind"), route.kind)
    state = _text(doc.get("state"), "state", _MAX_STATE).lower()
    device_id = _optional_text(doc.get("id"), "id", _MAX_ID)
    raw_ts = doc.get("ts")
    ts = received_at if raw_ts is None else _timestamp(raw_ts, "ts", received_at)
    zone = _optional_text(doc.get("zone"), "zone", _MAX_ZONE)
    return [SensorEvent(
        site=route.site, sensor=route.sensor, kind=route.kind, state=state, ts=ts,
        received_at=received_at,
        dedup_key=_dedup_key(route, device_id, raw_ts is not None, topic, payload),
        zone=route.zone if zone is None else zone,
        data=_data(doc.get("data"), payload),
        battery=_battery(doc.get("battery")),
    )]


# --- zigbee2mqtt ---------------------------------------------------------------------------

_PANIC_ACTIONS: Final = frozenset(
    {"emergency", "panic", "sos", "single", "double", "triple", "hold", "long", "press"}
)


def _flag(doc: dict[str, Any], name: str) -> bool | None:
    value = doc.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _invalid(f"field {name!r}: expected true or false, got {_json_type(value)}")


def _alarm_flags(*names: str) -> Callable[[dict[str, Any]], str | None]:
    def state(doc: dict[str, Any]) -> str | None:
        flags = [f for f in (_flag(doc, n) for n in names) if f is not None]
        if not flags:
            return None
        return "alarm" if any(flags) else "normal"

    return state


def _door(doc: dict[str, Any]) -> str | None:
    contact = _flag(doc, "contact")
    if contact is None:
        return None
    return "closed" if contact else "open"


def _panic(doc: dict[str, Any]) -> str | None:
    action = doc.get("action")
    if action is None or action == "":
        return None
    if not isinstance(action, str):
        raise _invalid(f"field 'action': expected a string, got {_json_type(action)}")
    return "alarm" if action.lower() in _PANIC_ACTIONS else None


# The state a device of each kind reports; None when the message says nothing about it.
_Z2M_STATE: Final[dict[str, Callable[[dict[str, Any]], str | None]]] = {
    "door": _door,
    "intrusion": _alarm_flags("occupancy", "presence"),
    "smoke": _alarm_flags("smoke"),
    "technical": _alarm_flags("water_leak", "gas", "carbon_monoxide"),
    "panic": _panic,
    "tamper": _alarm_flags("tamper"),
}


def _z2m_battery(value: Any) -> int | None:
    # Lenient on purpose: a strange battery reading must not cost us the alarm next to it.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        return None
    return round(value)


def _decode_z2m(route: _Route, topic: str, payload: bytes,
                received_at: datetime) -> list[SensorEvent]:
    doc = _object(_load(payload))
    _check_depth(doc, payload)
    state = _Z2M_STATE[route.kind](doc)
    tamper = route.kind != "tamper" and _flag(doc, "tamper") is True
    seen = doc.get("last_seen")
    ts = received_at if seen is None else _any_timestamp(seen, "last_seen", received_at)
    key = _dedup_key(route, None, seen is not None, topic, payload)
    battery = _z2m_battery(doc.get("battery"))
    events = []
    if state is not None or not tamper:
        # Nothing about the kind (a battery or link report): still an event, so the
        # battery and the heartbeat are tracked.
        events.append(SensorEvent(
            site=route.site, sensor=route.sensor, kind=route.kind, state=state or "report",
            ts=ts, received_at=received_at, dedup_key=key, zone=route.zone, data=doc,
            battery=battery,
        ))
    if tamper:
        # One report, one battery reading: it rides on the first event only.
        events.append(SensorEvent(
            site=route.site, sensor=route.sensor, kind="tamper", state="alarm", ts=ts,
            received_at=received_at, dedup_key=key + ":tamper", zone=route.zone, data=doc,
            battery=None if events else battery,
        ))
    return events


# --- generic JSON with a mapping -----------------------------------------------------------


def _mapped_state(value: Any, mapping: _Mapping) -> str:
    if value is None:
        raise _invalid(f"path {mapping.state.text!r}: missing or null")
    if isinstance(value, bool):
        raw = "true" if value else "false"
    elif isinstance(value, str | int | float):
        raw = str(value).strip().lower()
    else:
        raise _invalid(
            f"path {mapping.state.text!r}: expected a string, number or boolean, "
            f"got {_json_type(value)}"
        )
    return _text(mapping.values.get(raw, raw), mapping.state.text, _MAX_STATE)


def _mapped_id(value: Any, path: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _optional_text(value, path, _MAX_ID)


def _decode_mapped(route: _Route, topic: str, payload: bytes,
                   received_at: datetime) -> list[SensorEvent]:
    mapping = route.mapping
    assert mapping is not None  # every json route is built with one
    doc = _load(payload)
    _check_depth(doc, payload)
    state = _mapped_state(mapping.state.find(doc), mapping)
    device_id = None if mapping.id is None else _mapped_id(mapping.id.find(doc), mapping.id.text)
    raw_ts = None if mapping.ts is None else mapping.ts.find(doc)
    ts = received_at
    if mapping.ts is not None and raw_ts is not None:
        ts = _any_timestamp(raw_ts, mapping.ts.text, received_at)
    return [SensorEvent(
        site=route.site, sensor=route.sensor, kind=route.kind, state=state, ts=ts,
        received_at=received_at,
        dedup_key=_dedup_key(route, device_id, raw_ts is not None, topic, payload),
        zone=route.zone, data=doc if isinstance(doc, dict) else {"value": doc},
    )]


_EVENT_HANDLERS: Final[dict[str, Callable[[_Route, str, bytes, datetime], Decoded]]] = {
    "native": _decode_native,
    "zigbee2mqtt": _decode_z2m,
    "json": _decode_mapped,
}
