"""Sending over HTTP: one attempt, its failure described without the URL, and retries with
exponential backoff and jitter. Time is injected (`sleep`, `rng`): tests drive it."""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from vigie import __version__
from vigie.notify._message import Notification

__all__ = [
    "USER_AGENT",
    "Channel",
    "HttpPoster",
    "NotifyMetrics",
    "Outcome",
    "RetryPolicy",
    "SendFailed",
    "Sleep",
    "backoff",
    "with_retries",
]

USER_AGENT = f"vigie/{__version__}"
Sleep = Callable[[float], Awaitable[None]]


class SendFailed(Exception):
    """One attempt failed. `reason` is safe to log and store: never a URL or a secret."""

    def __init__(self, reason: str, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # in all, the first one included
    first: float  # delay before the first retry, doubled at each one
    max: float


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    attempts: int
    error: str | None = None
    payload: Any = None  # what was sent (the last attempt), for a dead letter
    refused: bool = False  # failed for good (not retryable): the receiver is up, but said no


def backoff(policy: RetryPolicy, failures: int, rng: random.Random) -> float:
    """Delay after the `failures`-th failure: exponential, capped, with jitter in [½, 1] of
    it so that the receivers' clients do not all come back at once."""
    ceiling = min(policy.max, policy.first * 2.0 ** (failures - 1))
    return ceiling * rng.uniform(0.5, 1.0)


async def with_retries(attempt: Callable[[], Awaitable[None]], policy: RetryPolicy,
                       sleep: Sleep, rng: random.Random,
                       on_failure: Callable[[SendFailed], None]) -> Outcome:
    """Call `attempt` until it succeeds, a failure is final, or the attempts run out."""
    for n in range(1, policy.attempts + 1):
        try:
            await attempt()
        except SendFailed as failed:
            on_failure(failed)
            if not failed.retryable or n == policy.attempts:
                return Outcome(False, n, failed.reason, refused=not failed.retryable)
            delay = backoff(policy, n, rng)
            if failed.retry_after is not None:  # the receiver said when: not sooner
                delay = min(policy.max, max(delay, failed.retry_after))
            await sleep(delay)
        else:
            return Outcome(True, n)
    raise AssertionError("unreachable: at least one attempt")  # pragma: no cover


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


class HttpPoster:
    """POSTs for every notifier of a node, over one client session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout: float) -> None:
        """Raise SendFailed unless the answer is 2xx. Redirects are not followed: a
        signed body is meant for the configured receiver only."""
        try:
            async with self._session.post(
                    url, data=body, headers={"User-Agent": USER_AGENT, **headers},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return
                status = response.status
                # 4xx but these: the receiver will not take it however often it is sent.
                retryable = status >= 500 or status in (408, 425, 429)
                raise SendFailed(f"HTTP {status}", retryable, _retry_after(response.headers))
        except TimeoutError:
            raise SendFailed(f"no answer within {timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            # The errno's text: strerror may quote the address.
            errno = exc.os_error.errno
            why = os.strerror(errno) if errno else type(exc.os_error).__name__
            raise SendFailed(f"cannot connect ({why})") from None
        except aiohttp.InvalidURL:
            raise SendFailed("invalid URL", retryable=False) from None
        except aiohttp.ClientError as exc:  # the text may quote the URL: only the type
            raise SendFailed(type(exc).__name__) from None


    async def get_json(self, url: str, timeout: float) -> Any:
        """GET a JSON document; SendFailed on any failure."""
        try:
            async with self._session.get(
                    url, headers={"User-Agent": USER_AGENT},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False) as response:
                if response.status != 200:
                    raise SendFailed(f"HTTP {response.status}")
                return await response.json(content_type=None)
        except TimeoutError:
            raise SendFailed(f"no answer within {timeout:g}s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise SendFailed(type(exc).__name__) from None


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sent = Counter("vigie_notifications_sent",
                            "Alert changes delivered, per notifier", ["notifier"], registry=r)
        self.failed = Counter("vigie_notifications_failed",
                              "Failed delivery attempts (retried, or then dead-lettered)",
                              ["notifier"], registry=r)
        self.dead = Counter("vigie_notifications_dead_lettered",
                            "Alert changes given up after their attempts, kept in "
                            "notify_dead_letters", ["notifier"], registry=r)
        self.redelivered = Counter("vigie_notifications_redelivered",
                                   "Dead letters sent again on request and delivered",
                                   ["notifier"], registry=r)
        self.resent = Counter("vigie_notifications_resent",
                              "Active alerts posted again to Alertmanager", ["notifier"],
                              registry=r)
        self.gaps = Counter("vigie_notifier_gaps",
                            "Times a notifier found feed messages trimmed before it sent "
                            "them", ["notifier"], registry=r)
        self.active = Gauge("vigie_notifier_active",
                            "1 on the node that sends for this notifier", ["notifier"],
                            registry=r)
        self.seq = Gauge("vigie_notifier_seq",
                         "Last feed seq a notifier dealt with (compare with vigie_feed_seq)",
                         ["notifier"], registry=r)


class Channel(Protocol):
    """A notifier's way out: what it wants of the feed, how it delivers one change, how it
    sends again a change it gave up on (given the alert as it is now, None if purged), and
    (`every` seconds, if set) what it does periodically on the lock holder's connection."""

    name: str
    every: float | None

    def wants(self, n: Notification) -> bool: ...

    async def deliver(self, n: Notification) -> Outcome: ...

    async def redeliver(self, n: Notification, current: dict[str, Any] | None) -> Outcome: ...

    async def tick(self, conn: Any) -> None: ...

