"""From a sensor event to alert decisions: pure logic, no I/O.

A decision either raises an alert (or repeats it: the store folds repeats into `count`) or
resolves the unresolved alert of a fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from vigie.config import AlertRule, Config, EscalationConfig, SensorConfig
from vigie.events import DeviceStatus, SensorEvent
from vigie.store._alerts import AlertOccurrence, Escalation, occurrence_id

__all__ = ["Decision", "Raise", "Resolve", "RuleBook", "escalation_by_severity"]

# Battery alerts clear a little above the threshold, so a battery hovering at the threshold
# does not open and close an alert all day.
BATTERY_HYSTERESIS = 5

_TITLES = {
    "intrusion": "Intrusion alarm",
    "panic": "Panic button pressed",
    "smoke": "Smoke detected",
    "tamper": "Tamper detected",
    "door": "Door open",
    "technical": "Technical fault",
}


@dataclass(frozen=True, slots=True)
class Raise:
    occurrence: AlertOccurrence
    received_at: datetime | None = None  # of the event, for the event-to-alert latency


@dataclass(frozen=True, slots=True)
class Resolve:
    fingerprint: str
    at: datetime
    comment: str


Decision = Raise | Resolve


def _rule_escalation(rule: AlertRule) -> Escalation | None:
    if rule.escalate_after is None:
        return None
    repeat = rule.escalate_repeat
    return Escalation(timedelta(seconds=rule.escalate_after),
                      timedelta(seconds=repeat) if repeat is not None else None,
                      rule.escalate_max)


def _escalation(cfg: EscalationConfig) -> Escalation:
    return Escalation(timedelta(seconds=cfg.after),
                      timedelta(seconds=cfg.repeat) if cfg.repeat is not None else None, cfg.max)


def escalation_by_severity(config: Config) -> dict[str, Escalation]:
    """`alerts.escalation`: for the alerts no rule gives an escalation (AlertService)."""
    return {severity: _escalation(cfg) for severity, cfg in config.alerts.escalation.items()}


class RuleBook:
    """The configured rules, indexed by (kind, state) for the hot path."""

    def __init__(self, config: Config, is_open: Callable[[str, datetime], bool]) -> None:
        self._config = config
        self._is_open = is_open
        self._raise: dict[tuple[str, str], AlertRule] = {}
        self._resolve: dict[tuple[str, str], AlertRule] = {}
        for rule in config.alerts.rules:
            for state in rule.states:
                self._raise.setdefault((rule.kind, state), rule)
            for state in rule.resolve_on:
                self._resolve.setdefault((rule.kind, state), rule)
        self._escalation = {id(rule): _rule_escalation(rule) for rule in config.alerts.rules}
        self._sensors: dict[tuple[str, str], SensorConfig] = {
            (site.id, s.id): s for site in config.sites for s in site.sensors
        }
        self._site_names = {site.id: site.name for site in config.sites}

    def for_event(self, event: SensorEvent, event_id: int | None) -> list[Decision]:
        decisions: list[Decision] = []
        key = (event.kind, event.state)
        rule = self._raise.get(key)
        if rule is not None:
            decisions.append(Raise(self._occurrence(rule, event, event_id), event.received_at))
        elif key in self._resolve:
            decisions.append(Resolve(f"{event.site}/{event.sensor}/{event.kind}", event.ts,
                                     f"{event.kind} reported {event.state}"))
        if event.battery is not None:
            decisions.extend(self._battery(event))
        return decisions

    def _occurrence(self, rule: AlertRule, event: SensorEvent, event_id: int | None
                    ) -> AlertOccurrence:
        is_open = self._is_open(event.site, event.ts)
        severity = rule.severity
        if not is_open and rule.severity_closed is not None:
            severity = rule.severity_closed
        sensor = self._sensors.get((event.site, event.sensor))
        label = (sensor.name if sensor and sensor.name else event.sensor)
        title = rule.title or f"{_TITLES.get(event.kind, event.kind)}: {label}"
        return AlertOccurrence(
            site=event.site, source=event.sensor, source_type="sensor", kind=event.kind,
            severity=severity, title=f"{title} ({self._site_names.get(event.site, event.site)})",
            at=event.ts, event_id=event_id,
            details={"state": event.state, "zone": event.zone, "site_open": is_open},
            escalation=self._escalation[id(rule)],
            id=occurrence_id(f"{event.site}/{event.sensor}/{event.kind}", event.dedup_key),
        )

    def battery_threshold(self, site: str, sensor: str) -> int:
        cfg = self._sensors.get((site, sensor))
        if cfg is not None and cfg.battery_low is not None:
            return cfg.battery_low
        return self._config.defaults.sensor.battery_low

    def _battery(self, event: SensorEvent) -> list[Decision]:
        assert event.battery is not None
        threshold = self.battery_threshold(event.site, event.sensor)
        fingerprint = f"{event.site}/{event.sensor}/battery_low"
        if event.battery < threshold:
            return [Raise(AlertOccurrence(
                site=event.site, source=event.sensor, source_type="sensor", kind="battery_low",
                severity=self._config.alerts.battery_low_severity,
                title=f"Battery low ({event.battery} %): {event.sensor}", at=event.ts,
                details={"battery": event.battery, "threshold": threshold},
                id=occurrence_id(fingerprint, event.dedup_key),
            ))]
        if event.battery >= threshold + BATTERY_HYSTERESIS:
            return [Resolve(fingerprint, event.ts, f"battery back to {event.battery} %")]
        return []

    def for_status(self, status: DeviceStatus) -> list[Decision]:
        fingerprint = f"{status.site}/{status.sensor}/device_offline"
        if status.online:
            return [Resolve(fingerprint, status.received_at, "device back online")]
        return [Raise(AlertOccurrence(
            site=status.site, source=status.sensor, source_type="sensor", kind="device_offline",
            severity=self._config.alerts.device_offline_severity,
            title=f"Device offline: {status.sensor}", at=status.received_at,
            id=occurrence_id(fingerprint, status.received_at.isoformat()),
        ))]

    def for_silence(self, site: str, sensor: str, last_seen: datetime | None, now: datetime
                    ) -> Raise:
        """A sensor silent past its heartbeat: a blind spot until it speaks again."""
        return Raise(AlertOccurrence(
            site=site, source=sensor, source_type="sensor", kind="device_silent",
            severity=self._config.alerts.device_offline_severity,
            title=f"Device silent: {sensor}", at=now,
            details={"last_seen": last_seen.isoformat() if last_seen else None},
        ))
