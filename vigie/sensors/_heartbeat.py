"""Sensors that stay silent past their heartbeat are blind spots: raise a technical alert,
resolved when they speak again."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from vigie.alerts import AlertService, Clock, Decision, Resolve, RuleBook
from vigie.config import Config

__all__ = ["HeartbeatMonitor"]

log = logging.getLogger("vigie.sensors")


class HeartbeatMonitor:
    def __init__(self, config: Config, rules: RuleBook, alerts: AlertService,
                 last_seen: dict[tuple[str, str], datetime], clock: Clock,
                 silent: set[tuple[str, str]] | None = None) -> None:
        self._rules = rules
        self._alerts = alerts
        self._last_seen = last_seen
        self._clock = clock
        default = config.defaults.sensor.heartbeat
        self._heartbeats = {
            (site.id, s.id): timedelta(seconds=hb)
            for site in config.sites for s in site.sensors
            if (hb := s.heartbeat if s.heartbeat is not None else default) is not None
        }
        # Sensors with an unresolved device_silent alert, from before a restart too: they
        # resolve when they speak again.
        self._silent: set[tuple[str, str]] = set(silent or ())
        self._started = clock()
        shortest = min(self._heartbeats.values(), default=timedelta(seconds=60))
        self.interval = min(max(shortest.total_seconds() / 4, 0.5), 10.0)

    def carry_silent(self, silent: set[tuple[str, str]]) -> None:
        """Sensors with an unresolved device_silent alert, learned after the start (the
        database was away then): they resolve when they speak again."""
        self._silent |= silent

    @property
    def enabled(self) -> bool:
        return bool(self._heartbeats)

    def check(self) -> list[Decision]:
        """Decisions for the sensors that fell silent or spoke again since the last check."""
        now = self._clock()
        decisions: list[Decision] = []
        for key, heartbeat in self._heartbeats.items():
            seen = self._last_seen.get(key)
            # Silence is counted from our own start at the earliest: a restart is no outage.
            reference = max(seen, self._started) if seen else self._started
            if now - reference > heartbeat:
                if key not in self._silent:
                    self._silent.add(key)
                    decisions.append(self._rules.for_silence(key[0], key[1], seen, now))
            elif key in self._silent:
                self._silent.discard(key)
                decisions.append(Resolve(f"{key[0]}/{key[1]}/device_silent", now,
                                         "device speaks again"))
        return decisions

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            before = set(self._silent)
            decisions = self.check()
            if not decisions:
                continue
            try:
                await self._alerts.raise_now(decisions)
            except Exception as exc:
                log.warning("cannot record heartbeat alerts, will retry: %s", exc)
                self._silent = before  # so the next check decides the same again
