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
