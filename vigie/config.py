"""Configuration: load YAML, substitute ${ENV}, validate, report every error by path.

The models are frozen: inside vigie the configuration is already valid.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
import zoneinfo
from collections.abc import Callable, Iterator
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from vigie.errors import ConfigError
from vigie.secrets import Secret, redact_url, register_secret

__all__ = [
    "CAMERA_REASONS",
    "DEFAULT_CONFIG_PATH",
    "SENSOR_KINDS",
    "AlertRule",
    "AlertmanagerNotifier",
    "ApiConfig",
    "CameraConfig",
    "ClusterConfig",
    "Config",
    "CorrelationConfig",
    "DatabaseConfig",
    "EscalationConfig",
    "LoggingConfig",
    "MqttConfig",
    "NodeConfig",
    "Notifier",
    "OpeningHours",
    "RetentionConfig",
    "SensorConfig",
    "SiteConfig",
    "SpoolConfig",
    "StormConfig",
    "WebhookNotifier",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("config/vigie.yaml")
SENSOR_KINDS = ("door", "intrusion", "tamper", "panic", "smoke", "technical")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SEVERITIES = ("critical", "major", "minor", "info")

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV = re.compile(r"\$\{(?:file:(?P<file>[^}]+)"
                  r"|(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}")


def _duration(value: Any) -> float:
    """`5s`, `500ms`, `2m`, `1h`, `1d` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 500ms, 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 5s, 500ms, 2m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("expected a positive duration")
    return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size(value: Any) -> int:
    """`512MiB`, `2GB`, `64KiB` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 2GB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    else:
        raise ValueError("expected a size such as 512MiB or 2GB")
    if size <= 0:
        raise ValueError("expected a positive size")
    return size


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError("expected a slug: lowercase letters, digits, '-' or '_' (max 63)")
    return value


def _secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return Secret(value)


Duration = Annotated[float, BeforeValidator(_duration)]
ByteSize = Annotated[int, BeforeValidator(_size)]
Slug = Annotated[str, AfterValidator(_slug)]
SecretStr = Annotated[
    Secret, BeforeValidator(_secret), PlainSerializer(lambda s: "***", return_type=str)
]
SecretUrl = Annotated[
    Secret,
    BeforeValidator(_secret),
    PlainSerializer(lambda s: redact_url(s.reveal()), return_type=str),
]
Severity = Literal["critical", "major", "minor", "info"]
SensorKind = Literal["door", "intrusion", "tamper", "panic", "smoke", "technical"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class NodeConfig(_Model):
    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=63)
    data_dir: Path = Path("./var")
    # Processes decoding and analysing camera streams (None: one per core, at most 8, and
    # more for over 100 cameras a worker; see vigie.cameras._workers.worker_count).
    camera_workers: int | None = Field(default=None, ge=1, le=64)
    # SIGTERM: stop reading, write or spool what was received, stop the loops, within this.
    shutdown_budget: Duration = 10.0


class DatabaseConfig(_Model):
    # None means: start the embedded PostgreSQL under node.data_dir.
    dsn: SecretUrl | None = None
    pool_size: int = Field(default=10, ge=2, le=200)
    # Events waiting to be written; when full, ingest stops acknowledging to the broker.
    write_queue: int = Field(default=50_000, ge=100, le=10_000_000)
    batch_size: int = Field(default=2_000, ge=1, le=50_000)
    connect_timeout: Duration = 5.0
    # The password, from a file (a mounted secret) rather than in the DSN.
    password_file: Path | None = None
    # libpq's TLS settings, passed through to the connection (asyncpg reads them).
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                     "verify-full"] | None = None
    sslrootcert: Path | None = None
    sslcert: Path | None = None
    sslkey: Path | None = None

    def connect_dsn(self) -> str | None:
        """The DSN to connect with: the password from `password_file` and the ssl settings
        merged in. Never logged: it holds the password."""
        if self.dsn is None:
            return None
        parts = urlsplit(self.dsn.reveal())
        netloc = parts.netloc
        if self.password_file is not None:
            password = _read_secret_file(self.password_file)
            user, _, host = netloc.rpartition("@")
            name = user.partition(":")[0]
            netloc = f"{name}:{quote(password, safe='')}@{host}"
        query = dict(parse_qsl(parts.query))
        for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            value = getattr(self, key)
            if value is not None:
                query[key] = str(value)
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    @field_validator("password_file", "sslrootcert", "sslcert", "sslkey", mode="after")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _readable_file(value)

    @field_validator("dsn", mode="after")
    @classmethod
    def _postgres(cls, value: Secret | None) -> Secret | None:
        # asyncpg takes URIs only (not libpq's key=value form); never echo the value back.
        if value is not None and not re.match(r"^postgres(ql)?://", value.reveal()):
            raise ValueError("expected postgresql://user[:password]@host[:port]/dbname")
        return value


class SpoolConfig(_Model):
    """Where acknowledged messages wait while PostgreSQL is away (node.data_dir/spool)."""

    enabled: bool = True
    # At the cap, vigie stops acknowledging: the broker keeps the messages, none is dropped.
    max_size: ByteSize = 1024**3
    segment_size: ByteSize = 64 * 1024**2
    replay_batch: int = Field(default=5_000, ge=1, le=100_000)  # messages per transaction


class MqttTls(_Model):
    """TLS to the broker: the CA that signed its certificate, and a client certificate
    when the broker asks for one."""

    ca_file: Path | None = None  # None: the system's trusted CAs
    cert_file: Path | None = None
    key_file: Path | None = None
    # Check that the certificate names the host of `url` (turn off only for tests).
    check_hostname: bool = True

    @field_validator("ca_file", "cert_file", "key_file", mode="after")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _readable_file(value)

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttConfig(_Model):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # instead of `password`: a mounted secret
    tls: MqttTls | None = None  # also implied by mqtts://
    client_id: str | None = None  # default: vigie-<node.name>; fixed so the session persists
    topic_prefix: str = "vigie"
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(default=30, ge=5, le=3600)
    session_expiry: Duration = 86_400.0
    max_payload: int = Field(default=65_536, ge=256, le=16_777_216)
    protocol: Literal["3.1.1", "5"] = "5"
    # MQTT 5 shared subscriptions: subscribe to $share/<group>/<filter>, so that the nodes
    # of a cluster split the sensor traffic (default with cluster.enabled: "vigie").
    shared_group: str | None = Field(default=None, pattern=r"^[^/+#$]{1,64}$")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^mqtts?://[^/:]+(:\d+)?/?$", value):
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        return value

    @field_validator("password_file", mode="after")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _readable_file(value)

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def secret_password(self) -> Secret | None:
        """The password, from the config or from `password_file` (read when connecting, so
        a rotated secret file is picked up at the next connection)."""
        if self.password_file is not None:
            return Secret(_read_secret_file(self.password_file))
        return self.password

    @property
    def uses_tls(self) -> bool:
        return self.tls is not None or self.url.startswith("mqtts://")


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r}: expected an IP address or network, e.g. 10.0.0.0/8"
                         ) from None
    return value


def _origin(value: str) -> str:
    if value != "*" and not re.match(r"^https?://[^/\s]+$", value):
        raise ValueError(f"{value!r}: expected an origin such as https://csu.example.fr")
    return value


class ApiConfig(_Model):
    listen: str = "127.0.0.1:8080"
    # How operators and other tools reach this API (links in notifications); default:
    # http://<listen>.
    public_url: str | None = None
    # Serve HTTPS directly (both or neither); else plain HTTP, e.g. behind a TLS proxy.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: the client address of
    # the audit log and of the authentication throttle is taken from them only.
    trusted_proxies: tuple[Annotated[str, AfterValidator(_network)], ...] = ()
    # Browser origins allowed to call the API (CORS); none by default.
    cors_origins: tuple[Annotated[str, AfterValidator(_origin)], ...] = ()
    # Failed authentications allowed per client address and minute before 429: slows down
    # token guessing; raise it for a proxy that forwards no client address.
    auth_failures_per_minute: int = Field(default=20, ge=1, le=100_000)
    # The valid tokens (hashes, never the tokens) are read into node.data_dir this often,
    # and at once on a change: tokens keep working while the database is away. A token
    # revoked while a node could not hear of it may be accepted there during an outage
    # for up to this long after its revocation.
    token_snapshot_every: Duration = Field(default=30.0, ge=1.0, le=3600.0)

    @field_validator("tls_cert", "tls_key", mode="after")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _readable_file(value)

    @model_validator(mode="after")
    def _pair(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, e.g. 127.0.0.1:8080")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#@\s]+(/[^?#\s]*)?$", value):
            raise ValueError("expected http(s)://host[:port][/path], without credentials")
        return value.rstrip("/") if value else value

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.listen}"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


CAMERA_REASONS = ("offline", "low_fps", "frozen", "black", "too_dark", "too_bright",
                  "blurred", "covered", "moved")


class CameraChecks(_Model):
    """Thresholds of the camera checks; every field can be overridden per camera."""

    offline_after: Duration = 5.0  # no packet for this long (or cannot connect)
    frozen_after: Duration = 10.0  # picture unchanged this long while packets still flow
    min_fps: float = Field(default=2.0, ge=0)  # measured over `fps_window`
    fps_window: Duration = 10.0
    analyse_every: Duration = 2.0  # one keyframe decoded this often for the picture checks
    black_below: float = Field(default=10.0, ge=0, le=255)  # mean luma, 0-255
    dark_below: float = Field(default=35.0, ge=0, le=255)
    bright_above: float = Field(default=225.0, ge=0, le=255)
    # Sharpness below this share of the camera's learned reference: blurred.
    blur_ratio: float = Field(default=0.35, gt=0, lt=1)
    # Share of the view that is uniform, without texture: covered (hand, tape, paint).
    covered_fraction: float = Field(default=0.75, gt=0, le=1)
    # Similarity of the scene to the learned reference below this: moved (turned, displaced).
    moved_below: float = Field(default=0.5, gt=0, lt=1)
    learn_for: Duration = 120.0  # the reference is learned from this much good picture
    bad_samples: int = Field(default=3, ge=1, le=100)  # hysteresis: to enter a bad state
    good_samples: int = Field(default=3, ge=1, le=100)  # and to leave it
    disabled: tuple[Literal["low_fps", "frozen", "black", "too_dark", "too_bright", "blurred",
                            "covered", "moved"], ...] = ()  # e.g. [moved] on a PTZ camera


class SensorDefaults(_Model):
    # A sensor silent for longer than this raises a technical alert (None: no heartbeat).
    heartbeat: Duration | None = None
    battery_low: int = Field(default=20, ge=0, le=100)


class Defaults(_Model):
    camera: CameraChecks = CameraChecks()
    sensor: SensorDefaults = SensorDefaults()


class CameraConfig(_Model):
    id: Slug
    name: str = ""
    url: SecretUrl
    zone: str = ""
    transport: Literal["tcp", "udp"] = "tcp"
    checks: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url", mode="after")
    @classmethod
    def _rtsp(cls, value: Secret) -> Secret:
        if not re.match(r"^(rtsps?://[^/]+|file:///.+)", value.reveal()):
            raise ValueError("expected rtsp://[user:pass@]host[:port]/path "
                             "(or file:///path/clip.mp4, replayed in a loop: demos, tests)")
        return value

    @field_validator("checks")
    @classmethod
    def _checks(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every CameraChecks field has a default, so validating the overrides alone checks
        # exactly the keys given (unknown ones included) and reports all of them at once.
        checks = CameraChecks.model_validate(value)
        return {key: getattr(checks, key) for key in value}


def _json_keys(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {k if isinstance(k, str) else json.dumps(k): v for k, v in value.items()}


class JsonMapping(_Model):
    """Where a generic JSON panel puts its fields (dotted paths)."""

    state: str
    ts: str | None = None
    id: str | None = None
    # Map raw values to vigie states, e.g. {1: alarm, 0: normal}. YAML turns such keys into
    # ints and booleans; they are kept in their JSON spelling ("1", "true", "null").
    values: Annotated[dict[str, str], BeforeValidator(_json_keys)] = Field(default_factory=dict)


class SensorConfig(_Model):
    id: Slug
    kind: SensorKind
    name: str = ""
    zone: str = ""
    format: Literal["native", "zigbee2mqtt", "json"] = "native"
    # Validated even when left out, so that a missing topic or mapping is reported on its
    # own path, next to any other error of the sensor (a model validator would not run).
    topic: str | None = Field(default=None, validate_default=True)
    mapping: JsonMapping | None = Field(default=None, validate_default=True)
    heartbeat: Duration | None = None
    battery_low: int | None = Field(default=None, ge=0, le=100)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("format") == "zigbee2mqtt" and not value:
            raise ValueError("required for format zigbee2mqtt (zigbee2mqtt/<friendly name>)")
        if value is not None and any(c in value for c in "+#"):
            raise ValueError("must not contain MQTT wildcards")
        return value

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: JsonMapping | None, info: ValidationInfo) -> JsonMapping | None:
        fmt = info.data.get("format")
        if fmt == "json" and value is None:
            raise ValueError("required for format json: {state: <path>, ts: <path>}")
        if fmt is not None and fmt != "json" and value is not None:
            raise ValueError("only used with format json")
        return value


def _time(text: str) -> time:
    hours, _, minutes = text.strip().partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"bad time {text.strip()!r}, expected HH:MM")
    h, m = int(hours), int(minutes)
    if h == 24 and m == 0:
        return time.max
    if h > 23 or m > 59:
        raise ValueError(f"bad time {text.strip()!r}, expected HH:MM")
    return time(h, m)


def _ranges(value: Any) -> tuple[tuple[time, time], ...]:
    """`"07:30-12:00, 13:30-17:00"` or a list of such ranges."""
    if isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, list):
        parts = value
    else:
        raise ValueError('expected ranges such as "07:30-18:30" or "08:00-12:00, 13:30-17:00"')
    out = []
    for part in parts:
        if not isinstance(part, str) or part.count("-") != 1:
            shown = part.strip() if isinstance(part, str) else part
            raise ValueError(f"bad range {shown!r}, expected HH:MM-HH:MM")
        start, end = (_time(t) for t in part.split("-"))
        if end <= start:
            raise ValueError(f"range {part.strip()!r} ends before it starts")
        out.append((start, end))
    return tuple(sorted(out))


def _show_ranges(ranges: tuple[tuple[time, time], ...]) -> list[str]:
    """Back to the config's own spelling, so a dumped config reads and loads again."""

    def hhmm(t: time) -> str:
        return "24:00" if t == time.max else t.strftime("%H:%M")

    return [f"{hhmm(start)}-{hhmm(end)}" for start, end in ranges]


TimeRanges = Annotated[
    tuple[tuple[time, time], ...],
    BeforeValidator(_ranges),
    PlainSerializer(_show_ranges, return_type=list[str]),
]


class OpeningHours(_Model):
    mon: TimeRanges = ()
    tue: TimeRanges = ()
    wed: TimeRanges = ()
    thu: TimeRanges = ()
    fri: TimeRanges = ()
    sat: TimeRanges = ()
    sun: TimeRanges = ()

    def ranges(self, weekday: int) -> tuple[tuple[time, time], ...]:
        """Opening ranges of a weekday (0 = Monday)."""
        ranges: tuple[tuple[time, time], ...] = getattr(self, WEEKDAYS[weekday])
        return ranges


def _field(item: Any, name: str) -> Any:
    """A field of a raw mapping or of an already-built model."""
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _duplicate(loc: tuple[int | str, ...], message: str, value: Any) -> InitErrorDetails:
    return {"type": PydanticCustomError("duplicate", message), "loc": loc, "input": value}


def _duplicate_ids(what: str, items: list[Any]) -> list[InitErrorDetails]:
    errors: list[InitErrorDetails] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        ident = _field(item, "id")
        if not isinstance(ident, str):
            continue
        if ident in first:
            message = f"duplicate {what} id {ident!r} (already used by {what}s[{first[ident]}])"
            errors.append(_duplicate((i, "id"), message, ident))
        else:
            first[ident] = i
    return errors


def _duplicate_topics(sites: list[Any]) -> list[InitErrorDetails]:
    errors: list[InitErrorDetails] = []
    owner: dict[str, str] = {}
    for i, site in enumerate(sites):
        for j, sensor in enumerate(_items(_field(site, "sensors"))):
            topic = _field(sensor, "topic")
            if not isinstance(topic, str):
                continue
            if topic in owner:
                message = f"topic {topic!r} already used by {owner[topic]}"
                errors.append(_duplicate((i, "sensors", j, "topic"), message, topic))
            else:
                owner[topic] = f"sites[{i}].sensors[{j}]"
    return errors


def _unique(
    *checks: Callable[[list[Any]], list[InitErrorDetails]],
) -> WrapValidator:
    """Cross-item checks of a list, reported on each offending item's path together with
    the items' own errors: an `after` validator would only run once every item is valid."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        dupes = [e for check in checks for e in check(_items(value))]
        try:
            out = handler(value)
        except ValidationError as exc:
            if not dupes:
                raise
            # Re-raised as custom errors: they keep type, message and context, and custom
            # types (a nested list's duplicates) cannot be rebuilt from their name.
            own: list[InitErrorDetails] = [
                {
                    "type": PydanticCustomError(e["type"], e["msg"], e.get("ctx")),
                    "loc": e["loc"],
                    "input": e["input"],
                }
                for e in exc.errors()
            ]
            raise ValidationError.from_exception_data(exc.title, own + dupes) from None
        if dupes:
            raise ValidationError.from_exception_data("duplicates", dupes)
        return out

    return WrapValidator(validate)


class SiteConfig(_Model):
    id: Slug
    name: str = Field(min_length=1)
    uai: str = Field(pattern=r"^\d{7}[A-Z]$", description="official school code, e.g. 0781234A")
    commune: str = ""
    timezone: str = "Europe/Paris"
    holiday_zone: Literal["A", "B", "C"] | None = None
    opening_hours: OpeningHours = OpeningHours()
    cameras: Annotated[
        tuple[CameraConfig, ...], _unique(lambda items: _duplicate_ids("camera", items))
    ] = ()
    sensors: Annotated[
        tuple[SensorConfig, ...], _unique(lambda items: _duplicate_ids("sensor", items))
    ] = ()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def sensor(self, sensor_id: str) -> SensorConfig | None:
        return next((s for s in self.sensors if s.id == sensor_id), None)


class AlertRule(_Model):
    """Turns a sensor event into an alert: match on kind and state, give a severity."""

    kind: SensorKind
    states: tuple[str, ...]
    severity: Severity
    # Severity while the site is closed (outside opening hours); None: same as `severity`.
    severity_closed: Severity | None = None
    # States that resolve the alert by themselves (a door closing); empty: an operator must.
    resolve_on: tuple[str, ...] = ()
    title: str | None = None
    # Not acknowledged after `escalate_after`: escalate (level + 1, notified again), then
    # every `escalate_repeat` up to `escalate_max` times. None: `alerts.escalation` of the
    # alert's severity, if any.
    escalate_after: Duration | None = None
    escalate_repeat: Duration | None = None
    escalate_max: int = Field(default=3, ge=1, le=100)

    @field_validator("states", "resolve_on", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("escalate_repeat", mode="after")
    @classmethod
    def _repeat_needs_after(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("escalate_after") is None:
            raise ValueError("escalate_repeat needs escalate_after")
        return value


class EscalationConfig(_Model):
    """Escalation of the alerts of one severity that no rule gives a policy (camera and
    device alerts, rules without escalate_after)."""

    after: Duration
    repeat: Duration | None = None
    max: int = Field(default=3, ge=1, le=100)


DEFAULT_RULES = (
    AlertRule(kind="intrusion", states=("alarm",), severity="critical"),
    AlertRule(kind="panic", states=("alarm",), severity="critical"),
    AlertRule(kind="smoke", states=("alarm",), severity="critical"),
    AlertRule(kind="tamper", states=("alarm", "open"), severity="major"),
    AlertRule(
        kind="door",
        states=("open",),
        severity="info",
        severity_closed="critical",
        resolve_on=("closed",),
    ),
    AlertRule(
        kind="technical", states=("alarm", "fault"), severity="minor", resolve_on=("normal",)
    ),
)


CameraReason = Literal["offline", "low_fps", "frozen", "black", "too_dark", "too_bright",
                       "blurred", "covered", "moved"]


def _camera_severities() -> dict[CameraReason, Severity]:
    return {"offline": "major", "covered": "critical", "moved": "critical", "low_fps": "minor",
            "frozen": "minor", "black": "minor", "too_dark": "minor", "too_bright": "minor",
            "blurred": "minor"}


class StormConfig(_Model):
    """A site whose network drops shows all its cameras (or sensors) unreachable at once:
    one `site_unreachable` alert groups them instead of a page per device."""

    enabled: bool = True
    # Share of a site's cameras (or of its sensors) unreachable at once.
    fraction: float = Field(default=0.8, gt=0, le=1)
    min_sources: int = Field(default=3, ge=1)  # and at least this many of them
    severity: Severity = "critical"  # of the site alert: the whole site is blind
    # Camera offline alerts wait this long before being raised, so that those of one site
    # going down together are seen together (the camera's state is live meanwhile).
    window: Duration = 5.0
    # Devices still down this long after their site came back are released from the group
    # (un-silenced: notified on their own); those back within it are never paged.
    release_after: Duration = 60.0


class CorrelationConfig(_Model):
    """What a sensor alarm gathers: snapshots of its zone's cameras, and links."""

    # Sensor alerts at least this grave get the snapshots of the cameras of their zone
    # (intrusion, panic, tamper, a door at night; not a door during class hours).
    min_severity: Severity = "major"
    # A second snapshot this long after the alarm (None: only the one at the alarm time).
    snapshot_after: Duration | None = 5.0
    # No snapshot for an alarm handled later than this (a backlog replayed after an
    # outage): the camera's picture then is not the picture at the alarm time.
    max_delay: Duration = 60.0
    # An intrusion alarm links to the camera alerts of its site opened this long before it;
    # a camera alert links to every intrusion alarm of its site still unresolved.
    link_window: Duration = 600.0


class AlertsConfig(_Model):
    rules: tuple[AlertRule, ...] = DEFAULT_RULES
    correlation: CorrelationConfig = CorrelationConfig()
    # Severity of each camera health reason: covered and moved are likely tampering.
    camera: dict[CameraReason, Severity] = Field(default_factory=_camera_severities)

    @field_validator("camera", mode="after")
    @classmethod
    def _camera_defaults(cls, value: dict[CameraReason, Severity]
                         ) -> dict[CameraReason, Severity]:
        return {**_camera_severities(), **value}  # override some, keep the others
    # School holidays, in the format of the Ministry's fr-en-calendrier-scolaire dataset
    # (update with `vigie calendar import`); relative to the config file. None: the
    # calendar shipped with vigie.
    school_calendar: Path | None = None
    # Severity of device-health alerts (sensor offline / silent, battery low).
    device_offline_severity: Severity = "major"
    battery_low_severity: Severity = "minor"
    # Escalation by severity, for alerts whose rule sets none: {critical: {after: 5m}}.
    escalation: dict[Severity, EscalationConfig] = Field(default_factory=dict)
    storm: StormConfig = StormConfig()


NOTIFIER_TYPES = ("webhook", "alertmanager")
# Alert changes a webhook can be told of (the live feed's alert.<action> messages).
NotifyAction = Literal["opened", "repeated", "acknowledged", "unacknowledged", "assigned",
                       "resolved", "commented", "escalated", "silenced", "unsilenced",
                       "correlated"]


def _http_url(value: Secret) -> Secret:
    # Never echo the value: a notifier URL may carry a token or a password.
    if not re.match(r"^https?://[^/?#\s]+(/\S*)?$", value.reveal()):
        raise ValueError("expected http(s)://host[:port][/path]")
    return value


def _not_empty(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("must list at least one")
    return value


def _strong_secret(value: Secret) -> Secret:
    if len(value.reveal()) < 16:
        raise ValueError("too short: at least 16 characters (e.g. openssl rand -hex 32)")
    return value


class _NotifierBase(_Model):
    name: Slug  # metric label and the key of its progress in PostgreSQL: keep it stable
    url: Annotated[SecretUrl, AfterValidator(_http_url)]
    severities: Annotated[tuple[Severity, ...], AfterValidator(_not_empty)] = (
        "critical", "major", "minor", "info")
    sites: tuple[str, ...] | None = None  # None: every site
    timeout: Duration = 10.0  # per request
    max_attempts: int = Field(default=6, ge=1, le=100)  # then a dead letter
    retry_first: Duration = 1.0  # first retry delay, doubled at each attempt (with jitter)
    retry_max: Duration = 300.0


class WebhookNotifier(_NotifierBase):
    """POST a JSON body signed with HMAC-SHA256 (X-Vigie-Signature-256) per alert change."""

    type: Literal["webhook"]
    secret: Annotated[SecretStr, AfterValidator(_strong_secret)]
    # `unsilenced`: an alert raised during a silence that ended while it is still open is
    # news, like an opening.
    actions: Annotated[tuple[NotifyAction, ...], AfterValidator(_not_empty)] = (
        "opened", "unsilenced", "escalated", "acknowledged", "resolved")


class AlertmanagerNotifier(_NotifierBase):
    """Prometheus Alertmanager API v2: `url` is its base (http://alertmanager:9093)."""

    type: Literal["alertmanager"]
    # Active alerts are posted again this often: keep it well under Alertmanager's
    # resolve_timeout (5m by default), or it resolves them on its own.
    resend_every: Duration = 60.0


Notifier = Annotated[WebhookNotifier | AlertmanagerNotifier, Field(discriminator="type")]


def _duplicate_names(items: list[Any]) -> list[InitErrorDetails]:
    errors: list[InitErrorDetails] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        name = _field(item, "name")
        if not isinstance(name, str):
            continue
        if name in first:
            message = f"duplicate notifier name {name!r} (already used by notifiers[{first[name]}])"
            errors.append(_duplicate((i, "name"), message, name))
        else:
            first[name] = i
    return errors

DAY = 86_400.0
# The legal maximum for video-protection images in France (Code de la sécurité intérieure,
# art. L252-5): a month. 30 days, to be on the safe side of every month.
MAX_IMAGE_RETENTION = 30 * DAY


class RetentionConfig(_Model):
    """How long each kind of data is kept. Partitioned tables (events, camera samples,
    audit) lose whole partitions, so their rows live at least this long and at most one
    partition (a day for samples, a month for events and audit) longer."""

    snapshots: Duration = 7 * DAY  # JPEG images: at most 30 days
    events: Duration = 365 * DAY
    camera_samples: Duration = 90 * DAY  # health samples and state transitions
    audit: Duration = 730 * DAY
    dead_letters: Duration = 30 * DAY
    feed: Duration = DAY  # the live feed's replay backlog
    every: Duration = 3600.0  # how often the retention job runs
    # False: nodes leave retention to `vigie retention` (e.g. a cron job as the tables'
    # owner, when nodes run as a role that may not create or drop partitions).
    on_nodes: bool = True

    @field_validator("snapshots", mode="after")
    @classmethod
    def _legal(cls, value: float) -> float:
        if value > MAX_IMAGE_RETENTION:
            raise ValueError(
                f"{value / DAY:g} days is above the legal maximum of 30 days for "
                "video-protection images (Code de la sécurité intérieure, art. L252-5)")
        return value

    @field_validator("events", "camera_samples", "audit", mode="after")
    @classmethod
    def _at_least_a_day(cls, value: float) -> float:
        if value < DAY:
            raise ValueError("at least 1d: these tables are purged a partition at a time")
        return value

    @model_validator(mode="after")
    def _audit_outlives_images(self) -> RetentionConfig:
        # Who looked at an image must stay known at least as long as the image exists.
        if self.audit < self.snapshots:
            raise ValueError("audit must be kept at least as long as snapshots")
        return self


def _readable_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{value}: no such file")
    return value


def _read_secret_file(path: Path) -> str:
    """A secret from a file: the whole file, less its final newline (as `echo` writes it)."""
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the secret ({type(exc).__name__})"]
                          ) from None
    register_secret(secret)
    return secret


class ClusterConfig(_Model):
    """Several nodes on one database and one broker (vigie.cluster)."""

    # Off: this node watches every camera and subscribes to every topic, as a lone node.
    enabled: bool = False
    # A node that stops renewing (dead, or cut from the database) loses its cameras after
    # this long; the others take them over within it plus `interval`.
    lease_seconds: Duration = Field(default=15.0, ge=1.0, le=600.0)
    # How often a node looks for free cameras and handovers (one check interval).
    interval: Duration = Field(default=1.0, ge=0.1, le=60.0)
    # Cameras a node may take beyond its fair share (cameras / live nodes) when some are free.
    margin: int = Field(default=2, ge=0, le=1000)
    # Cameras one node hands over at a time when another joins (each is watched by the new
    # node before the old one lets go).
    handover_step: int = Field(default=10, ge=1, le=10_000)
    # Sensor traffic: "shared" (MQTT 5 shared subscriptions, group mqtt.shared_group or
    # "vigie"), or "elected" for brokers without them: one node, elected through a
    # PostgreSQL advisory lock, subscribes (with one client id, so its session follows).
    mqtt: Literal["shared", "elected"] = "shared"


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["human", "json"] = "human"


class Config(_Model):
    node: NodeConfig = NodeConfig()
    database: DatabaseConfig = DatabaseConfig()
    spool: SpoolConfig = SpoolConfig()
    mqtt: MqttConfig = MqttConfig()
    api: ApiConfig = ApiConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()
    defaults: Defaults = Defaults()
    alerts: AlertsConfig = AlertsConfig()
    notifiers: Annotated[tuple[Notifier, ...], _unique(_duplicate_names)] = ()
    retention: RetentionConfig = RetentionConfig()
    # A directory of per-site YAML files, merged into `sites` (relative to the config file).
    sites_dir: Path | None = None
    sites: Annotated[
        tuple[SiteConfig, ...],
        _unique(lambda items: _duplicate_ids("site", items), _duplicate_topics),
    ] = ()

    @model_validator(mode="after")
    def _cluster_needs(self) -> Config:
        if self.cluster.enabled and self.database.dsn is None:
            raise ValueError("cluster.enabled: the nodes share one PostgreSQL, set "
                             "database.dsn (the embedded server is a node's own)")
        if self.cluster.enabled and self.cluster.mqtt == "elected" and self.mqtt.shared_group:
            raise ValueError("cluster.mqtt: elected (one node subscribes) and "
                             "mqtt.shared_group (every node subscribes) exclude each other")
        return self

    def site(self, site_id: str) -> SiteConfig | None:
        return next((s for s in self.sites if s.id == site_id), None)

    def notifier(self, name: str) -> WebhookNotifier | AlertmanagerNotifier | None:
        return next((n for n in self.notifiers if n.name == name), None)

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or f"vigie-{self.node.name}"

    def camera_checks(self, camera: CameraConfig) -> CameraChecks:
        """The camera's thresholds: defaults, overridden by its own `checks`."""
        return CameraChecks.model_validate({**self.defaults.camera.model_dump(), **camera.checks})


# --- loading -------------------------------------------------------------------------


def _path_of(loc: tuple[int | str, ...]) -> str:
    if len(loc) > 2 and loc[0] == "notifiers" and loc[2] in NOTIFIER_TYPES:
        loc = loc[:2] + loc[3:]  # the union's tag: not a key the user wrote
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")):
            continue  # pydantic's internal validator names, not the user's keys
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return "expected one of " + re.sub(r"'", "", str(ctx.get("expected", ""))).replace(
            " or ", ", "
        )
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind in ("union_tag_not_found", "union_tag_invalid"):  # a notifier's `type`
        return "expected one of " + ", ".join(NOTIFIER_TYPES)
    if kind == "string_pattern_mismatch" and err["loc"][-1:] == ("uai",):
        return "expected a UAI code: 7 digits and a letter, e.g. 0781234A"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_input=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("[")))
        if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
            loc += ("type",)
        problems.append(f"{_path_of(loc)}: {_message(err)}")
    return problems


def _substitute(node: Any, path: str, problems: list[str], base_dir: Path | None = None
                ) -> Any:
    """Replace ${VAR}, ${VAR:-default} and ${file:PATH} (a secret file's content, PATH
    relative to the config file) in every string value."""
    if isinstance(node, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), problems, base_dir)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", problems, base_dir) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def repl(m: re.Match[str]) -> str:
        if m["file"] is not None:
            try:
                secret = _read_secret_file((base_dir or Path()) / m["file"].strip())
            except ConfigError as exc:
                problems.extend(f"{path}: {p}" for p in exc.problems)
                return ""
            register_secret(secret)  # whatever field it lands in, it is masked in logs
            return secret
        value = os.environ.get(m["var"], m["default"])
        if value is None:
            problems.append(f"{path}: environment variable {m['var']} is not set")
            return ""
        return value

    return _ENV.sub(repl, node)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last
    one silently, and a second `sensors:` under a site would drop the first list."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` then overriding a merged key is legitimate
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _read_yaml(path: Path, problems: list[str], label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{label}: cannot read ({getattr(exc, 'strerror', None) or exc})")
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Never str(exc): it quotes the offending line, which may hold a password.
        what = f"invalid YAML{_at(exc.problem_mark)}: {exc.problem or 'syntax error'}"
        if exc.context:  # where the unfinished construct began, often the line to fix
            what += f" ({exc.context}{_at(exc.context_mark)})"
        problems.append(f"{label}: {what}")
    except yaml.YAMLError as exc:  # reader errors: a byte position, no content
        problems.append(f"{label}: invalid YAML: {exc}")
    return None


def _site_files(directory: Path) -> Iterator[Path]:
    # Hidden files are editor swap files and the like, not sites.
    yield from sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def _merge_sites_dir(
    raw: dict[str, Any], base_dir: Path | None, problems: list[str]
) -> tuple[dict[str, Any], dict[int, str]]:
    """Append the sites of `sites_dir` (one site or a list of sites per file) to `sites`.

    Returns the merged document and, for each appended site index, the file it came from.
    """
    sites_dir = raw.get("sites_dir")
    sites = raw.get("sites")
    if not isinstance(sites_dir, str) or not isinstance(sites, list | None):
        return raw, {}  # validation reports the wrong types
    directory = (base_dir or Path()) / sites_dir
    if not directory.is_dir():
        problems.append(f"sites_dir: {directory} is not a directory")
        return raw, {}
    merged: list[Any] = list(sites or [])
    origin: dict[int, str] = {}
    for file in _site_files(directory):
        doc = _read_yaml(file, problems, str(file))
        for site in doc if isinstance(doc, list) else [doc] if doc is not None else []:
            origin[len(merged)] = str(file)
            merged.append(_substitute(site, f"sites[{len(merged)}]", problems, file.parent))
    return {**raw, "sites": merged}, origin


def _with_origin(problem: str, origin: dict[int, str]) -> str:
    """Name the file a problem of a `sites_dir` site comes from."""
    m = re.match(r"sites\[(\d+)\]", problem)
    if m and int(m.group(1)) in origin:
        return f"{problem} (in {origin[int(m.group(1))]})"
    return problem


def _unknown_notifier_sites(config: Config) -> list[str]:
    known = {site.id for site in config.sites}
    return [f"notifiers[{i}].sites[{j}]: unknown site {site!r}"
            for i, notifier in enumerate(config.notifiers)
            for j, site in enumerate(notifier.sites or ()) if site not in known]


def parse_config(raw: Any, base_dir: Path | None = None, source: str = "") -> Config:
    """Validate an already-parsed document; raise ConfigError with every problem.

    Sites from `sites_dir` are appended to `sites`: their errors carry their index in the
    merged list (`sites[3].cameras[1].url`) and the name of their file.
    """
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping of sections"], source)
    raw = _substitute(raw, "", problems, base_dir)
    raw, origin = _merge_sites_dir(raw, base_dir, problems)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_format_errors(exc))
        config = None
    if config is not None:
        problems.extend(_unknown_notifier_sites(config))
    if problems or config is None:
        raise ConfigError([_with_origin(p, origin) for p in problems], source)
    calendar = config.alerts.school_calendar
    if calendar is not None and not calendar.is_absolute() and base_dir is not None:
        alerts = config.alerts.model_copy(update={"school_calendar": base_dir / calendar})
        config = config.model_copy(update={"alerts": alerts})
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a config file.

    `sites_dir` is relative to the config file; `node.data_dir` to the working directory,
    like any path given on a command line.
    """
    path = Path(path)
    problems: list[str] = []
    raw = _read_yaml(path, problems, str(path))
    if problems:
        raise ConfigError(problems, str(path))
    return parse_config(raw, base_dir=path.parent, source=str(path))
