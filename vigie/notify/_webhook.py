"""The generic webhook: one signed JSON POST per alert change the notifier wants.

A dead letter sent again on request (`redeliver`) keeps the identity of the change it was
for — `id`, `type`, `seq`, `at` — so that a receiver de-duplicates it and can tell it is
older news than what it received since, and is flagged `"redelivered": true`. Its `alert`
is the alert as it is now, not as it was at the change: a receiver that keeps its copy of
the alert from the last message it got (a ticket's status) must not be set back to
"open" by an opening re-sent after the alert was resolved. Only an alert purged from the
database since is sent as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

import orjson

from vigie.alerts import Clock
from vigie.config import WebhookNotifier
from vigie.notify._delivery import (
    HttpPoster,
    NotifyMetrics,
    Outcome,
    RetryPolicy,
    SendFailed,
    Sleep,
    with_retries,
)
from vigie.notify._message import SIGNATURE_HEADER, AlertFilter, Notification, sign, webhook_body

__all__ = ["WebhookChannel"]

log = logging.getLogger("vigie.notify")


class WebhookChannel:
    every: float | None = None  # nothing periodic: each change is sent once

    def __init__(self, config: WebhookNotifier, base_url: str, poster: HttpPoster,
                 metrics: NotifyMetrics, clock: Clock, *, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.name = config.name
        self._config = config
        self._base_url = base_url
        self._poster = poster
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._filter = AlertFilter.of(config)
        self._actions = frozenset(config.actions)

    def wants(self, n: Notification) -> bool:
        return n.action in self._actions and self._filter.matches(n.alert)

    async def deliver(self, n: Notification) -> Outcome:
        return await self._send(n, redelivered=False)

    async def redeliver(self, n: Notification, current: dict[str, Any] | None) -> Outcome:
        return await self._send(dataclasses.replace(n, alert=current or n.alert),
                                redelivered=True)

    async def _send(self, n: Notification, *, redelivered: bool) -> Outcome:
        secret = self._config.secret.reveal().encode()
        url = self._config.url.reveal()
        last: bytes = b""

        async def attempt() -> None:
            nonlocal last
            last = webhook_body(n, self.name, self._base_url, self._clock(),
                                redelivered=redelivered)
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, last),
                       "X-Vigie-Event": n.type, "X-Vigie-Delivery": f"{self.name}:{n.seq}"}
            await self._poster.post(url, last, headers, self._config.timeout)

        def failed(exc: SendFailed) -> None:
            self._metrics.failed.labels(self.name).inc()
            log.warning("notifier %s: %s of alert %s not delivered: %s", self.name, n.type,
                        n.alert_id, exc.reason)

        policy = RetryPolicy(self._config.max_attempts, self._config.retry_first,
                             self._config.retry_max)
        outcome = await with_retries(attempt, policy, self._sleep, self._rng, failed)
        return dataclasses.replace(outcome, payload=orjson.loads(last) if last else None)

    async def tick(self, conn: Any) -> None:
        return None
