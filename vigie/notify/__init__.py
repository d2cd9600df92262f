"""Notifiers: alert changes delivered to the tools the supervision room already uses — a
generic signed webhook, and Prometheus Alertmanager's API v2."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import aiohttp

from vigie.alerts import Clock, utc_now
from vigie.config import Config, WebhookNotifier
from vigie.metrics import Metrics
from vigie.notify._alertmanager import AlertmanagerChannel
from vigie.notify._delivery import (
    Channel,
    HttpPoster,
    NotifyMetrics,
    Outcome,
    RetryPolicy,
    SendFailed,
    Sleep,
    backoff,
)
from vigie.notify._message import SIGNATURE_HEADER, AlertFilter, Notification, sign
from vigie.notify._runner import NotifierLoop, lock_key
from vigie.notify._webhook import WebhookChannel

__all__ = [
    "SIGNATURE_HEADER",
    "AlertFilter",
    "AlertmanagerChannel",
    "Channel",
    "HttpPoster",
    "Notification",
    "NotifierLoop",
    "Notifiers",
    "NotifyMetrics",
    "Outcome",
    "RetryPolicy",
    "SendFailed",
    "WebhookChannel",
    "backoff",
    "lock_key",
    "sign",
]


class Notifiers:
    """Every configured notifier of a node, each in a loop of its own."""

    def __init__(self, config: Config, dsn: str, metrics: Metrics, *, clock: Clock = utc_now,
                 sleep: Sleep = asyncio.sleep, rng: random.Random | None = None,
                 poll_every: float = 5.0, lock_retry: float = 5.0) -> None:
        self._config = config
        self._dsn = dsn
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._poll_every = poll_every
        self._lock_retry = lock_retry
        self.metrics = NotifyMetrics(metrics.registry)
        self.loops: list[NotifierLoop] = []

    @property
    def enabled(self) -> bool:
        return bool(self._config.notifiers)

    def _channels(self, poster: HttpPoster) -> Sequence[Channel]:
        base_url = self._config.api.base_url
        channels: list[Channel] = []
        for nc in self._config.notifiers:
            kind = WebhookChannel if isinstance(nc, WebhookNotifier) else AlertmanagerChannel
            channels.append(kind(nc, base_url, poster, self.metrics,  # type: ignore[arg-type]
                                 self._clock, sleep=self._sleep, rng=self._rng))
        return channels

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
            poster = HttpPoster(session)
            self.loops = [NotifierLoop(c, self._dsn, self.metrics, poll_every=self._poll_every,
                                       lock_retry=self._lock_retry)
                          for c in self._channels(poster)]
            for loop in self.loops:
                tg.create_task(loop.run(), name=f"vigie:notifier-{loop.name}")
