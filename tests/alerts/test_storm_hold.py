"""The storm guard's holding of camera-offline raises, as pure logic (no database): a site's
cameras seen offline a tick or two apart still land together with their site alert."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vigie.alerts import _storms
from vigie.alerts._rules import Raise, Resolve
from vigie.alerts._storms import StormGuard
from vigie.config import parse_config
from vigie.metrics import Metrics
from vigie.store._alerts import AlertOccurrence

AT = datetime(2026, 11, 29, 8, tzinfo=UTC)
BIG, SMALL = "clg-grand", "clg-petit"


def _site(site_id: str, cameras: int) -> dict[str, Any]:
    return {"id": site_id, "name": site_id, "uai": "0789996W",
            "cameras": [{"id": f"cam-{i:02d}", "url": f"rtsp://10.0.0.{i}/s"}
                        for i in range(cameras)]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(_storms, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


def _guard(window: float = 5.0) -> tuple[StormGuard, set[str]]:
    config = parse_config({
        "database": {"dsn": "postgresql://x@127.0.0.1/x"},
        "alerts": {"storm": {"window": window}},
        "sites": [_site(BIG, 12), _site(SMALL, 2)]})
    guard = StormGuard(config, Metrics("test"), lambda: AT)
    offline: set[str] = set()
    guard.cameras_offline = lambda site: {c.split("/")[1] for c in offline
                                          if c.startswith(site + "/")}
    return guard, offline


def _offline(site: str, camera: str) -> Raise:
    return Raise(AlertOccurrence(site=site, source=camera, source_type="camera",
                                 kind="offline", severity="major", title="offline", at=AT))


def _sources(decisions: list[Any]) -> list[str]:
    return sorted(d.occurrence.source for d in decisions)


def test_cameras_seen_offline_ticks_apart_land_together(clock: Clock) -> None:
    guard, offline = _guard()
    # First tick: two of twelve cameras judged offline (the rest have frames a second newer).
    offline |= {f"{BIG}/cam-00", f"{BIG}/cam-01"}
    assert guard.hold([_offline(BIG, "cam-00"), _offline(BIG, "cam-01")], set()) == []
    clock.now += 1
    assert guard.due() == []
    # Next tick: the other ten; the storm has formed, all twelve are due at once.
    offline |= {f"{BIG}/cam-{i:02d}" for i in range(2, 12)}
    assert guard.hold([_offline(BIG, f"cam-{i:02d}") for i in range(2, 12)], set()) == []
    assert _sources(guard.due()) == [f"cam-{i:02d}" for i in range(12)]
    assert guard.holding == 0


def test_a_camera_down_on_its_own_is_raised_when_the_window_is_over(clock: Clock) -> None:
    guard, offline = _guard(window=5)
    offline.add(f"{BIG}/cam-03")
    assert guard.hold([_offline(BIG, "cam-03")], set()) == []
    clock.now += 4.9
    assert guard.due() == []
    clock.now += 0.2
    assert _sources(guard.due()) == ["cam-03"]


def test_a_camera_back_within_the_window_is_never_raised(clock: Clock) -> None:
    guard, _ = _guard()
    assert guard.hold([_offline(BIG, "cam-04")], set()) == []
    back = Resolve(f"{BIG}/cam-04/offline", AT, "back")
    assert guard.hold([back], set()) == []
    clock.now += 10
    assert guard.due() == []


def test_what_is_not_held(clock: Clock) -> None:
    guard, _ = _guard()
    small = _offline(SMALL, "cam-00")  # two cameras: never a storm
    again = _offline(BIG, "cam-05")  # already an unresolved alert: a repeat
    sensor = Raise(AlertOccurrence(site=BIG, source="door-1", source_type="sensor",
                                   kind="device_offline", severity="minor", title="", at=AT))
    unresolved = {f"{BIG}/cam-05/offline"}
    assert guard.hold([small, again, sensor], unresolved) == [small, again, sensor]


def test_the_window_runs_from_the_first_raise_held(clock: Clock) -> None:
    guard, _ = _guard(window=5)
    guard.hold([_offline(BIG, "cam-00")], set())
    clock.now += 3
    guard.hold([_offline(BIG, "cam-01")], set())  # a second, not a new window
    guard.hold([_offline(BIG, "cam-00")], set())  # the same again: keeps its start
    clock.now += 2.5
    assert _sources(guard.due()) == ["cam-00", "cam-01"]


def test_everything_held_is_due_on_shutdown(clock: Clock) -> None:
    guard, _ = _guard()
    guard.hold([_offline(BIG, "cam-00")], set())
    assert _sources(guard.due(everything=True)) == ["cam-00"]


def test_a_camera_another_node_takes_loses_its_held_raise(clock: Clock) -> None:
    # Held here, then handed over (or this node leaves): the new holder read the open
    # alerts when it took the camera; raised here after that, the alert would stay open
    # for good, resolved by nobody (seen under load in tests/cluster/test_nodes.py: the
    # leaving node's held raises flushed at its stop).
    guard, _ = _guard()
    guard.hold([_offline(BIG, "cam-00"), _offline(BIG, "cam-01")], set())
    guard.drop(BIG, "cam-00")
    guard.drop(SMALL, "cam-01")  # another site's camera of that name: not this one
    clock.now += 10
    assert _sources(guard.due()) == ["cam-01"]
    assert _sources(guard.due(everything=True)) == []


async def test_the_supervisor_drops_the_held_raises_of_a_camera_it_hands_over(
        clock: Clock, tmp_path: Path) -> None:
    from vigie.alerts import AlertService
    from vigie.cameras._supervisor import CameraSupervisor

    config = parse_config({
        "node": {"data_dir": str(tmp_path)},
        "database": {"dsn": "postgresql://x@127.0.0.1/x"},
        "cluster": {"enabled": True},
        "sites": [_site(BIG, 12)]})
    metrics = Metrics("test")
    alerts = AlertService(None, metrics)  # type: ignore[arg-type]  # no write here
    alerts.storms = StormGuard(config, metrics, lambda: AT)
    supervisor = CameraSupervisor(config, None, alerts, metrics,  # type: ignore[arg-type]
                                  lambda: AT, workers=1)
    keys = {f"{BIG}/cam-{i:02d}" for i in range(12)}
    # Judging all twelve (as a cluster node whose workers are not started: nothing is sent).
    supervisor._started, supervisor._judging, supervisor._watched = True, set(keys), set(keys)
    alerts.storms.hold([_offline(BIG, "cam-00"), _offline(BIG, "cam-01")], set())
    supervisor.assign(keys - {f"{BIG}/cam-00"}, keys - {f"{BIG}/cam-00"})  # handed over
    assert _sources(alerts.storms.due(everything=True)) == ["cam-01"]
