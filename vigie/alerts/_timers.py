"""What changes alerts with time alone: silences starting and ending, escalations.

Every node runs this loop. The state it acts on is in PostgreSQL (`silences`,
`alerts.next_escalation_at`), so a restart loses nothing, and each change is taken by one
node only (rows are claimed with SKIP LOCKED): with several nodes, every step happens once.
"""

from __future__ import annotations

import asyncio
import logging

from vigie.alerts._service import AlertChange, AlertService
from vigie.errors import VigieError

__all__ = ["AlertTimers"]

log = logging.getLogger("vigie.alerts")

BATCH = 500


class AlertTimers:
    def __init__(self, alerts: AlertService, interval: float = 2.0) -> None:
        self._alerts = alerts
        self.interval = interval  # escalation delays are minutes: seconds of lag are fine

    async def tick(self) -> list[AlertChange]:
        """One pass: silences first, so an alert a silence just covered does not escalate."""
        changes = await self._alerts.sweep_silences()
        while True:
            escalated = await self._alerts.escalate_due(BATCH)
            changes += escalated
            if len(escalated) < BATCH:
                return changes

    async def run(self) -> None:
        while True:
            try:
                changes = await self.tick()
                if changes:
                    log.info("alerts: %d time-driven change(s)", len(changes))
            except VigieError as exc:  # the database may be away: the next tick catches up
                log.warning("alerts: cannot check escalations and silences: %s", exc)
            await asyncio.sleep(self.interval)
