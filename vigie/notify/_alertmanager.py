"""Prometheus Alertmanager, API v2: `POST /api/v2/alerts`.

Alertmanager holds state, not events: it keeps an alert firing while it is posted again
before its resolve_timeout, and resolves it when told its endsAt (or when posts stop). So
each alert change is posted at once, and every `resend_every` all active alerts are posted
again from the `alerts` table: whatever was missed (a change lost, Alertmanager restarted
and forgot) is mended within one round.

For the same reason a dead letter sent again on request (`redeliver`) posts the alert's
state now, read from the database, not the posts that failed: a "firing" re-sent for an
alert resolved since would page for nothing until Alertmanager's resolve_timeout. An alert
resolved, silenced or graver since is posted as such (ended, or its old labels ended); an
alert purged since has nothing left to tell.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
from collections.abc import Mapping
from typing import Any

import orjson
import yaml

from vigie.alerts import Clock
from vigie.config import AlertmanagerNotifier
from vigie.notify._delivery import (
    HttpPoster,
    NotifyMetrics,
    Outcome,
    RetryPolicy,
    SendFailed,
    Sleep,
    with_retries,
)
from vigie.notify._message import AlertFilter, Notification, am_alert, am_labels
from vigie.store import _notify as q

__all__ = ["AlertmanagerChannel", "go_duration"]

log = logging.getLogger("vigie.notify")

BATCH = 500  # alerts per POST in a resend round
# Changes that alter nothing Alertmanager is shown (labels, state, annotations).
_NOTHING_NEW = frozenset({"commented", "correlated"})


_GO_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
             "y": 31536000.0}
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def go_duration(text: str) -> float | None:
    """Seconds of a Prometheus-style duration (`5m`, `1h30m`, `300s`); None if not one."""
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


class AlertmanagerChannel:
    def __init__(self, config: AlertmanagerNotifier, base_url: str, poster: HttpPoster,
                 metrics: NotifyMetrics, clock: Clock, *, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.name = config.name
        self.every: float | None = config.resend_every
        self._config = config
        self._url = config.url.reveal().rstrip("/") + "/api/v2/alerts"
        self._base_url = base_url
        self._poster = poster
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._filter = AlertFilter.of(config)
        # The labels each alert was last posted with as firing, by alert id. When they
        # change (escalation, graver severity) or the alert stops being ours (silenced),
        # the old ones are ended at once instead of after Alertmanager's resolve_timeout.
        # In memory: after a restart, those left over end by that timeout.
        self._firing: dict[str, dict[str, str]] = {}
        self._checked = False

    def wants(self, n: Notification) -> bool:
        if n.action in _NOTHING_NEW:
            return False
        return self._filter.matches(n.alert) or n.alert_id in self._firing

    async def deliver(self, n: Notification) -> Outcome:
        alerts = self._posts_for(n.alert)

        def failed(exc: SendFailed) -> None:
            self._metrics.failed.labels(self.name).inc()
            log.warning("notifier %s: %s of alert %s not delivered: %s", self.name, n.type,
                        n.alert_id, exc.reason)

        policy = RetryPolicy(self._config.max_attempts, self._config.retry_first,
                             self._config.retry_max)
        outcome = await with_retries(lambda: self._post(alerts), policy, self._sleep,
                                     self._rng, failed)
        if outcome.delivered:
            self._remember(n.alert)
        return dataclasses.replace(outcome, payload=alerts)

    async def redeliver(self, n: Notification, current: dict[str, Any] | None) -> Outcome:
        if current is None:
            log.info("notifier %s: alert %s of the dead letter for feed seq %d no longer "
                     "exists: nothing to send", self.name, n.alert_id, n.seq)
            return Outcome(True, 0)
        return await self.deliver(dataclasses.replace(n, alert=current))

    async def tick(self, conn: Any) -> None:
        """Post every active alert again; end those no longer active."""
        if not self._checked:
            self._checked = await self._check_resolve_timeout()
        active = [a for a in await q.active_alerts(conn, self._config.sites,
                                                   self._config.severities)
                  if self._filter.matches(a)]
        ids = {str(a["id"]) for a in active}
        gone = [i for i in self._firing if i not in ids]
        others = await q.alerts_by_id(conn, gone) if gone else []
        for alert_id in set(gone) - {str(a["id"]) for a in others}:
            del self._firing[alert_id]  # deleted from the database: nothing to tell
        alerts = active + others
        for start in range(0, len(alerts), BATCH):
            chunk = alerts[start:start + BATCH]
            posts = [p for alert in chunk for p in self._posts_for(alert)]
            try:
                await self._post(posts)
            except SendFailed as exc:
                self._metrics.failed.labels(self.name).inc()
                log.warning("notifier %s: cannot re-send %d active alert(s): %s", self.name,
                            len(posts), exc.reason)
                return  # the next round tries again
            for alert in chunk:
                self._remember(alert)
            self._metrics.resent.labels(self.name).inc(len(chunk))

    async def _check_resolve_timeout(self) -> bool:
        """Warn if Alertmanager would resolve our alerts between two rounds; True once its
        configuration could be read."""
        base = self._config.url.reveal().rstrip("/")
        try:
            status = await self._poster.get_json(base + "/api/v2/status", self._config.timeout)
            original = yaml.safe_load(status["config"]["original"]) or {}
            timeout = go_duration(str(original.get("global", {}).get("resolve_timeout", "5m")))
        except (SendFailed, KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError):
            return False  # not fatal: tried again next round
        if timeout is not None and self.every is not None and self.every >= timeout:
            log.warning("notifier %s: resend_every (%gs) is not below Alertmanager's "
                        "resolve_timeout (%gs): it will resolve vigie's alerts between rounds",
                        self.name, self.every, timeout)
        return True

    def _posts_for(self, alert: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The alert as Alertmanager must now see it, and the end of its previous labels
        if they changed."""
        now = self._clock()
        labels = am_labels(alert)
        before = self._firing.get(str(alert.get("id")))
        posts = []
        if before is not None and before != labels:
            posts.append(am_alert(alert, self._base_url, ends_at=now, labels=before))
        if alert.get("state") == "resolved" or self._filter.matches(alert):
            posts.append(am_alert(alert, self._base_url))
        else:  # silenced (or out of our filters) since it was posted: end it now
            posts.append(am_alert(alert, self._base_url, ends_at=now))
        return posts

    def _remember(self, alert: Mapping[str, Any]) -> None:
        alert_id = str(alert.get("id"))
        if alert.get("state") != "resolved" and self._filter.matches(alert):
            self._firing[alert_id] = am_labels(alert)
        else:
            self._firing.pop(alert_id, None)

    async def _post(self, alerts: list[dict[str, Any]]) -> None:
        await self._poster.post(self._url, orjson.dumps(alerts),
                                {"Content-Type": "application/json"}, self._config.timeout)
