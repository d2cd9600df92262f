"""The camera health state machine: hysteresis, offline precedence, flapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vigie.cameras import CameraHealth

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def feed(h: CameraHealth, *observations: set[str]) -> list:  # type: ignore[type-arg]
    return [h.observe(frozenset(o), T0 + timedelta(seconds=i))
            for i, o in enumerate(observations)]


def test_first_good_observation_makes_a_camera_ok() -> None:
    h = CameraHealth()
    assert h.state == "unknown"
    [change] = feed(h, set())
    assert (change.state, change.state_changed, h.since) == ("ok", True, T0)


def test_a_reason_needs_n_bad_samples_to_enter_and_m_good_to_leave() -> None:
    h = CameraHealth(bad_samples=3, good_samples=2)
    changes = feed(h, set(), {"frozen"}, {"frozen"}, {"frozen"}, set(), set())
    assert [c.state for c in changes] == ["ok", "ok", "ok", "degraded", "degraded", "ok"]
    assert changes[3].activated == {"frozen"}
    assert changes[5].cleared == {"frozen"}
    assert h.reasons == frozenset()


def test_offline_enters_at_once_and_hides_picture_reasons() -> None:
    h = CameraHealth(bad_samples=2, good_samples=2)
    changes = feed(h, {"black"}, {"black"}, {"offline"})
    assert changes[1].activated == {"black"} and changes[1].state == "degraded"
    assert changes[2].state == "offline" and changes[2].activated == {"offline"}
    assert changes[2].cleared == {"black"}
    assert h.reasons == {"offline"}


def test_flapping_keeps_one_active_reason_and_reports_each_return() -> None:
    h = CameraHealth(bad_samples=1, good_samples=3)
    changes = feed(h, {"offline"}, set(), {"offline"}, set(), set(), {"offline"})
    assert [c.state for c in changes] == ["offline"] * 6
    assert [bool(c.activated) for c in changes] == [True, False, False, False, False, False]
    # Each time the fault comes back after good samples, it is a new occurrence.
    assert [bool(c.repeated) for c in changes] == [False, False, True, False, False, True]
    assert not any(c.cleared for c in changes)


def test_several_reasons_are_independent() -> None:
    h = CameraHealth(bad_samples=1, good_samples=1)
    changes = feed(h, {"too_dark", "blurred"}, {"blurred"}, set())
    assert changes[0].activated == {"too_dark", "blurred"}
    assert changes[1].cleared == {"too_dark"} and changes[1].state == "degraded"
    assert changes[2].cleared == {"blurred"} and changes[2].state == "ok"


def test_an_alert_carried_over_a_restart_resolves_once_the_fault_is_gone() -> None:
    h = CameraHealth(bad_samples=2, good_samples=3)
    h.carry(frozenset({"offline", "covered"}))
    changes = feed(h, set(), set(), set())
    # The camera is shown as it is, ok, not offline until proven otherwise...
    assert [c.state for c in changes] == ["ok"] * 3
    # ...and its old alerts resolve after good_samples, like any other fault that went away.
    assert [c.cleared for c in changes] == [set(), set(), {"offline", "covered"}]
    assert not any(c.activated or c.repeated for c in changes)
    assert h.carried == set()


def test_a_fault_still_there_after_a_restart_is_taken_on_without_a_new_alert() -> None:
    h = CameraHealth(bad_samples=2, good_samples=2)
    h.carry(frozenset({"covered"}))
    changes = feed(h, {"covered"}, {"covered"}, {"covered"}, set(), set())
    assert [c.state for c in changes] == ["ok", "degraded", "degraded", "degraded", "ok"]
    assert not any(c.activated or c.repeated for c in changes)
    assert changes[4].cleared == {"covered"}


def test_an_offline_camera_resolves_the_picture_alerts_carried_over() -> None:
    h = CameraHealth(bad_samples=2, good_samples=2)
    h.carry(frozenset({"offline", "blurred"}))
    [change] = feed(h, {"offline"})
    assert (change.state, change.activated, change.cleared) == ("offline", set(), {"blurred"})
    assert h.carried == set()


def test_a_suspended_camera_is_unknown_and_keeps_its_faults_for_later() -> None:
    h = CameraHealth(bad_samples=1, good_samples=2)
    feed(h, {"frozen"})
    change = h.suspend(T0 + timedelta(minutes=1))
    assert (change.state, change.reasons, change.state_changed) == ("unknown", set(), True)
    assert h.suspend(T0 + timedelta(minutes=2)).state_changed is False
    # Judged again: the fault that is still there is no new occurrence; gone, it resolves.
    changes = feed(h, {"frozen"}, set(), set())
    assert [c.state for c in changes] == ["degraded", "degraded", "ok"]
    assert not any(c.activated or c.repeated for c in changes)
    assert changes[2].cleared == {"frozen"}
