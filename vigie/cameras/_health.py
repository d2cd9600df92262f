"""A camera's health, with hysteresis: pure logic, fed one observation at a time.

A reason becomes active after `bad_samples` consecutive observations showing it and inactive
after `good_samples` consecutive observations without it, so a flapping stream keeps one
alert (whose count grows with each re-occurrence) instead of opening and closing a storm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["CameraHealth", "HealthChange"]


@dataclass(frozen=True, slots=True)
class HealthChange:
    """What an observation changed: reasons activated, seen again, cleared; the new state."""

    state: str
    reasons: frozenset[str]
    activated: frozenset[str] = frozenset()
    repeated: frozenset[str] = frozenset()  # active reasons that came back after a good spell
    cleared: frozenset[str] = frozenset()
    state_changed: bool = False


@dataclass
class CameraHealth:
    bad_samples: int = 3
    good_samples: int = 3
    state: str = "unknown"  # unknown, ok, degraded, offline
    since: datetime | None = None
    active: set[str] = field(default_factory=set)
    carried: set[str] = field(default_factory=set)  # open alerts from before a restart
    _bad: dict[str, int] = field(default_factory=dict)  # consecutive observations with it
    _good: dict[str, int] = field(default_factory=dict)  # consecutive observations without

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset(self.active)

    def observe(self, seen: frozenset[str], at: datetime) -> HealthChange:
        """One observation: the reasons it shows (`offline` hides the picture reasons)."""
        activated, repeated, cleared = set(), set(), set()
        for reason in seen:
            self._good[reason] = 0
            was_good = self._bad.get(reason, 0) == 0
            self._bad[reason] = self._bad.get(reason, 0) + 1
            if reason in self.active:
                if was_good:
                    repeated.add(reason)
            elif self._bad[reason] >= self._threshold_in(reason):
                self.active.add(reason)
                if reason in self.carried:
                    self.carried.discard(reason)  # its alert is open already
                else:
                    activated.add(reason)
        for reason in set(self._bad) - seen:
            self._bad[reason] = 0
            self._good[reason] = self._good.get(reason, 0) + 1
            if self._good[reason] >= self.good_samples and (
                    reason in self.active or reason in self.carried):
                self.active.discard(reason)
                self.carried.discard(reason)
                cleared.add(reason)
        if "offline" in self.active:
            # Nothing can be said of a picture we do not get: its reasons end with it.
            for reason in (self.active | self.carried) - {"offline"}:
                cleared.add(reason)
                self._bad[reason] = 0
            self.active, self.carried = {"offline"}, set()
        state = self._state()
        changed = state != self.state
        if changed or self.since is None:
            self.state, self.since = state, at
        return HealthChange(state, self.reasons, frozenset(activated), frozenset(repeated),
                            frozenset(cleared), changed)

    def carry(self, reasons: frozenset[str]) -> None:
        """Before the first observation: reasons whose alerts are still open (from before the
        node restarted). Each is resolved (`cleared`) after `good_samples` observations
        without it, and taken on without a new alert if it is seen for `bad_samples`; until
        then it does not count in the state, which is what the camera shows."""
        for reason in reasons:
            self.carried.add(reason)
            self._bad.setdefault(reason, 0)

    def suspend(self, at: datetime) -> HealthChange:
        """Nothing is known of the camera any more (its worker cannot be restarted): unknown.

        Its active reasons and their counts stay: once the camera is judged again, a fault
        that went away resolves its alert after `good_samples`, and one still there carries
        on without counting as a repeat."""
        changed = self.state != "unknown"
        if changed:
            self.state, self.since = "unknown", at
        return HealthChange(self.state, frozenset(), state_changed=changed)

    def _threshold_in(self, reason: str) -> int:
        # `offline` is already time-based (no packet for offline_after): no extra delay.
        return 1 if reason == "offline" else self.bad_samples

    def _state(self) -> str:
        if "offline" in self.active:
            return "offline"
        return "degraded" if self.active else "ok"
