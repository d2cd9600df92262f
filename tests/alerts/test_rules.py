"""vigie.alerts._rules: from sensor events and device statuses to alert decisions (pure)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import SITES, make_config
from vigie.alerts import Raise, Resolve, RuleBook
from vigie.config import Config
from vigie.events import DeviceStatus, SensorEvent
from vigie.sensors import TopicRouter

DSN = "postgresql://vigie@127.0.0.1:5432/unused"
MQTT = "mqtt://127.0.0.1:1883"
T = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"


def config(**overrides: Any) -> Config:
    return make_config(DSN, MQTT, **overrides)


def book(cfg: Config | None = None, *, open_: bool = False) -> RuleBook:
    return RuleBook(cfg or config(), lambda site, at: open_)


def event(sensor: str, kind: str, state: str, *, site: str = JM,
          battery: int | None = None) -> SensorEvent:
    return SensorEvent(site=site, sensor=sensor, kind=kind, state=state, ts=T,
                       received_at=T, dedup_key=f"k-{sensor}-{state}", zone="z",
                       battery=battery)


def only(decisions: list[Any]) -> Any:
    assert len(decisions) == 1, decisions
    return decisions[0]


# --- default rules, by kind and state ------------------------------------------------------


def test_intrusion_alarm_raises_a_critical_alert() -> None:
    decision = only(book(open_=True).for_event(event("centrale-a", "intrusion", "alarm"), 42))
    assert isinstance(decision, Raise)
    occ = decision.occurrence
    assert (occ.fingerprint, occ.site, occ.source, occ.source_type, occ.kind, occ.severity) == (
        f"{JM}/centrale-a/intrusion", JM, "centrale-a", "sensor", "intrusion", "critical")
    assert occ.event_id == 42 and occ.at == T and occ.count == 1
    assert occ.title == "Intrusion alarm: centrale-a (Collège Jean Moulin)"
    assert occ.details == {"state": "alarm", "zone": "z", "site_open": True}
    assert decision.received_at == T


@pytest.mark.parametrize("kind", ["intrusion", "panic", "smoke", "tamper"])
def test_clearing_events_of_operator_alerts_resolve_nothing(kind: str) -> None:
    """Intrusion, tamper, panic (and smoke) alerts need an operator to close them."""
    sensor = {"intrusion": "centrale-a", "panic": "panique-accueil",
              "tamper": "autoprot-baie", "smoke": "centrale-a"}[kind]
    for state in ("normal", "closed", "restored"):
        assert book().for_event(event(sensor, kind, state), 1) == []


@pytest.mark.parametrize(("kind", "state", "severity"), [
    ("panic", "alarm", "critical"), ("smoke", "alarm", "critical"),
    ("tamper", "alarm", "major"), ("tamper", "open", "major"),
    ("technical", "alarm", "minor"), ("technical", "fault", "minor"),
])
def test_default_severities(kind: str, state: str, severity: str) -> None:
    for open_ in (True, False):  # these do not depend on opening hours
        decision = only(book(open_=open_).for_event(event("s", kind, state), None))
        assert isinstance(decision, Raise) and decision.occurrence.severity == severity


def test_door_open_is_info_while_open_and_critical_while_closed() -> None:
    door = event("porte-hall", "door", "open")
    day = only(book(open_=True).for_event(door, 1))
    night = only(book(open_=False).for_event(door, 1))
    assert isinstance(day, Raise) and isinstance(night, Raise)
    assert day.occurrence.severity == "info" and day.occurrence.details["site_open"] is True
    assert night.occurrence.severity == "critical"
    assert night.occurrence.details["site_open"] is False
    assert day.occurrence.title == "Door open: Porte du hall (Collège Jean Moulin)"
    assert day.occurrence.fingerprint == f"{JM}/porte-hall/door"


def test_the_schedule_is_asked_about_the_event_site_and_time() -> None:
    asked: list[tuple[str, datetime]] = []

    def is_open(site: str, at: datetime) -> bool:
        asked.append((site, at))
        return site == JM

    rules = RuleBook(config(), is_open)
    jm = only(rules.for_event(event("porte-hall", "door", "open"), 1))
    pasteur = only(rules.for_event(event("porte-gymnase", "door", "open", site=PASTEUR), 2))
    assert asked == [(JM, T), (PASTEUR, T)]
    assert (jm.occurrence.severity, pasteur.occurrence.severity) == ("info", "critical")


def test_door_closed_resolves_the_door_alert() -> None:
    decision = only(book().for_event(event("porte-hall", "door", "closed"), 7))
    assert decision == Resolve(f"{JM}/porte-hall/door", T, "door reported closed")


def test_technical_normal_resolves() -> None:
    decision = only(book().for_event(event("onduleur", "technical", "normal"), 7))
    assert isinstance(decision, Resolve)
    assert decision.fingerprint == f"{JM}/onduleur/technical" and decision.at == T


def test_unknown_states_decide_nothing() -> None:
    rules = book()
    assert rules.for_event(event("porte-hall", "door", "report"), 1) == []
    assert rules.for_event(event("centrale-a", "intrusion", "armed"), 1) == []


# --- battery -------------------------------------------------------------------------------


@pytest.mark.parametrize(("battery", "expected"), [
    (0, "raise"), (19, "raise"),
    (20, None), (22, None), (24, None),  # between threshold and threshold + 5: nothing
    (25, "resolve"), (100, "resolve"),
])
def test_battery_threshold_with_hysteresis(battery: int, expected: str | None) -> None:
    decisions = book().for_event(event("porte-hall", "door", "report", battery=battery), 1)
    if expected is None:
        assert decisions == []
        return
    decision = only(decisions)
    if expected == "raise":
        assert isinstance(decision, Raise)
        occ = decision.occurrence
        assert (occ.fingerprint, occ.kind, occ.severity, occ.source_type) == (
            f"{JM}/porte-hall/battery_low", "battery_low", "minor", "sensor")
        assert occ.details == {"battery": battery, "threshold": 20}
        assert f"{battery} %" in occ.title
    else:
        assert isinstance(decision, Resolve)
        assert decision.fingerprint == f"{JM}/porte-hall/battery_low"


def test_battery_decision_comes_with_the_event_decision() -> None:
    decisions = book(open_=False).for_event(event("porte-hall", "door", "open", battery=5), 3)
    assert [d.occurrence.kind for d in decisions if isinstance(d, Raise)] == [
        "door", "battery_low"]
    assert len(decisions) == 2


def test_per_sensor_battery_threshold_overrides_the_default() -> None:
    sites = copy.deepcopy(SITES)
    sites[0]["sensors"][0]["battery_low"] = 50  # porte-hall
    cfg = config(sites=sites, defaults={"sensor": {"battery_low": 10}},
                 alerts={"battery_low_severity": "major"})
    rules = book(cfg)
    assert rules.battery_threshold(JM, "porte-hall") == 50
    assert rules.battery_threshold(JM, "centrale-a") == 10
    assert rules.battery_threshold("elsewhere", "x") == 10

    raised = only(rules.for_event(event("porte-hall", "door", "report", battery=40), 1))
    assert isinstance(raised, Raise) and raised.occurrence.severity == "major"
    assert raised.occurrence.details == {"battery": 40, "threshold": 50}
    assert rules.for_event(event("centrale-a", "intrusion", "normal", battery=40), 1) == [
        Resolve(f"{JM}/centrale-a/battery_low", T, "battery back to 40 %")]
    assert rules.for_event(event("porte-hall", "door", "report", battery=54), 1) == []
    assert isinstance(only(rules.for_event(event("porte-hall", "door", "report", battery=55), 1)),
                      Resolve)


def test_one_zigbee_report_counts_one_low_battery() -> None:
    """A zigbee2mqtt door contact reporting an open door, its tamper switch and a low battery
    in one message is one battery reading: the battery alert's count must grow by one."""
    cfg = config()
    router = TopicRouter(cfg)
    events = router.decode(
        "zigbee2mqtt/clg-jean-moulin/contact-cour",
        b'{"contact": false, "tamper": true, "battery": 9, '
        b'"last_seen": "2026-11-28T03:00:00+01:00"}', T)
    assert isinstance(events, list) and {e.kind for e in events} == {"door", "tamper"}
    rules = book(cfg)
    battery = [d for e in events for d in rules.for_event(e, 1)
               if isinstance(d, Raise) and d.occurrence.kind == "battery_low"]
    assert sum(d.occurrence.count for d in battery) == 1


# --- device availability and silence -------------------------------------------------------


def test_device_offline_raises_and_online_resolves() -> None:
    rules = book(config(alerts={"device_offline_severity": "critical"}))
    offline = only(rules.for_status(DeviceStatus(PASTEUR, "centrale", False, T)))
    assert isinstance(offline, Raise)
    occ = offline.occurrence
    assert (occ.fingerprint, occ.kind, occ.severity, occ.at) == (
        f"{PASTEUR}/centrale/device_offline", "device_offline", "critical", T)
    online = only(rules.for_status(DeviceStatus(PASTEUR, "centrale", True, T)))
    assert online == Resolve(f"{PASTEUR}/centrale/device_offline", T, "device back online")


def test_device_offline_default_severity_is_major() -> None:
    offline = only(book().for_status(DeviceStatus(PASTEUR, "centrale", False, T)))
    assert offline.occurrence.severity == "major"


def test_silence_raises_device_silent() -> None:
    decision = book().for_silence(PASTEUR, "centrale", None, T)
    assert decision.occurrence.fingerprint == f"{PASTEUR}/centrale/device_silent"
    assert decision.occurrence.details == {"last_seen": None}
    seen = book().for_silence(PASTEUR, "centrale", T, T)
    assert seen.occurrence.details == {"last_seen": T.isoformat()}


# --- custom rules from the configuration ---------------------------------------------------


def custom() -> RuleBook:
    return book(config(alerts={"rules": [
        {"kind": "smoke", "states": ["alarm", "test"], "severity": "major",
         "resolve_on": "normal", "title": "Fumée"},
        {"kind": "smoke", "states": "alarm", "severity": "info"},  # shadowed: first rule wins
        {"kind": "door", "states": "forced", "severity": "minor", "severity_closed": "major",
         "resolve_on": ["closed", "locked"]},
    ]}))


def test_custom_rules_replace_the_defaults() -> None:
    rules = custom()
    # The default intrusion rule is gone: configured rules are the whole rule book.
    assert rules.for_event(event("centrale-a", "intrusion", "alarm"), 1) == []
    assert rules.for_event(event("porte-hall", "door", "open"), 1) == []


def test_custom_rule_raises_with_its_title_and_severity() -> None:
    rules = custom()
    for state in ("alarm", "test"):
        decision = only(rules.for_event(event("detecteur", "smoke", state), 1))
        assert isinstance(decision, Raise)
        assert decision.occurrence.severity == "major"  # the first matching rule
        assert decision.occurrence.title == "Fumée (Collège Jean Moulin)"
    assert isinstance(only(rules.for_event(event("detecteur", "smoke", "normal"), 1)), Resolve)


def test_custom_rule_with_closed_severity_and_several_resolving_states() -> None:
    forced = event("porte-hall", "door", "forced")
    assert only(custom().for_event(forced, 1)).occurrence.severity == "major"
    assert only(book(config(alerts={"rules": [
        {"kind": "door", "states": "forced", "severity": "minor", "severity_closed": "major"},
    ]}), open_=True).for_event(forced, 1)).occurrence.severity == "minor"
    for state in ("closed", "locked"):
        decision = only(custom().for_event(event("porte-hall", "door", state), 1))
        assert decision == Resolve(f"{JM}/porte-hall/door", T, f"door reported {state}")
