"""Sensor events: what a decoded MQTT message becomes, valid from here on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["DeviceStatus", "SensorEvent"]


@dataclass(frozen=True, slots=True)
class SensorEvent:
    """One state report of one sensor.

    `dedup_key` identifies the event across broker redeliveries: the device's own id when it
    sends one, else a hash of topic and payload when the payload carries a timestamp. A
    payload with neither gets a key unique to its reception: storing a rare duplicate after a
    crash is better than folding two real door openings into one.
    """

    site: str
    sensor: str
    kind: str  # door, intrusion, tamper, panic, smoke, technical
    state: str  # alarm, normal, open, closed, fault, ...
    ts: datetime  # when it happened, from the device (UTC), else when received
    received_at: datetime
    dedup_key: str
    zone: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    battery: int | None = None  # percent, when the device reports it


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Availability of a device, from `vigie/<site>/<sensor>/status` (often its last will)."""

    site: str
    sensor: str
    online: bool
    received_at: datetime
