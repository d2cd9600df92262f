"""Real receivers for the notifier tests: a local HTTP server standing for a webhook
receiver (it checks signatures and fails on command), Debian's Alertmanager started on a
free port, and the producing side of vigie (alert service and live feed) on a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import random
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import free_port, make_config
from vigie.alerts import AlertChange, AlertService, Raise
from vigie.alerts._feed import Feed
from vigie.config import Config
from vigie.metrics import Metrics
from vigie.notify import (
    AlertmanagerChannel,
    HttpPoster,
    NotifierLoop,
    NotifyMetrics,
    WebhookChannel,
)
from vigie.store import Store
from vigie.store._alerts import Alert, AlertOccurrence

AM_BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
SECRET = "whsec-Hibou-Grand-Duc-7731"  # distinctive: found in any output, it leaked
URL_PASSWORD = "Mot2passe-Chouette-99"
T0 = datetime(2026, 11, 28, 2, 13, tzinfo=UTC)


# --- the webhook receiver -------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server standing for the receivers vigie posts to."""

    secret: bytes
    url: str = ""
    hooks: list[Received] = field(default_factory=list)  # every webhook call, failed or not
    accepted: list[Received] = field(default_factory=list)
    am_notifications: list[Any] = field(default_factory=list)  # from Alertmanager
    fail: list[int] = field(default_factory=list)  # statuses to answer next, in order
    hang: float = 0.0  # seconds to wait before answering
    retry_after: str | None = None

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        got = request.headers.get("X-Vigie-Signature-256", "")
        received = Received(dict(request.headers), body, hmac.compare_digest(expected, got))
        self.hooks.append(received)
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.fail:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=self.fail.pop(0), headers=headers)
        if not received.signature_ok:
            return web.Response(status=401)
        self.accepted.append(received)
        return web.Response(status=204)

    async def from_alertmanager(self, request: web.Request) -> web.Response:
        self.am_notifications.append(await request.json())
        return web.Response(status=200)

    def events(self) -> list[tuple[str, str]]:
        """(type, alert source) of each accepted webhook call, in order."""
        return [(r.json["type"], r.json["alert"]["source"]) for r in self.accepted]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver(SECRET.encode())
    app = web.Application()
    app.router.add_post("/hook", rx.hook)
    app.router.add_post("/am", rx.from_alertmanager)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    rx.url = f"http://127.0.0.1:{port}"
    try:
        yield rx
    finally:
        await runner.cleanup()


# --- Alertmanager ---------------------------------------------------------------------------


class Alertmanager:
    """Debian's prometheus-alertmanager on a free port, with a config written here: it
    sends its own notifications (firing and resolved) to the test receiver."""

    def __init__(self, workdir: Path, notify_url: str) -> None:
        self.workdir = workdir
        self.notify_url = notify_url
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert AM_BINARY is not None
        storage = self.workdir / f"data-{uuid.uuid4().hex[:6]}"  # a restart forgets all
        storage.mkdir(parents=True)
        conf = self.workdir / "alertmanager.yml"
        conf.write_text(
            "global: {resolve_timeout: 5m}\n"
            "route:\n"
            "  receiver: capture\n"
            "  group_by: ['...']\n"  # every alert its own group: one notification each
            "  group_wait: 0s\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: capture\n"
            "    webhook_configs:\n"
            f"      - {{url: '{self.notify_url}', send_resolved: true}}\n")
        self.proc = await asyncio.create_subprocess_exec(
            AM_BINARY, f"--config.file={conf}", f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
            "--log.level=warn", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(self.url + "/-/ready") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if self.proc.returncode is not None:
                    raise RuntimeError("alertmanager exited at start")
                await asyncio.sleep(0.05)
        raise RuntimeError("alertmanager not ready after 10s")

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            self.proc = None

    async def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: the alerts it holds as firing."""
        async with aiohttp.ClientSession() as http, http.get(
                self.url + "/api/v2/alerts", params=filters) as r:
            assert r.status == 200
            return list(await r.json())


@pytest.fixture
async def alertmanager(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Alertmanager]:
    if AM_BINARY is None:
        pytest.fail("prometheus-alertmanager is not installed (scripts/test installs it)")
    am = Alertmanager(tmp_path / "alertmanager", receiver.url + "/am")
    am.workdir.mkdir()
    await am.start()
    try:
        yield am
    finally:
        await am.stop()


# --- vigie's producing side -----------------------------------------------------------------


class FakeSleep:
    """Stands for asyncio.sleep in the retry loops: records the delay, does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@dataclass
class Rig:
    """An alert service and the live feed on a real database, as a node has them; alert
    changes reach the `feed` table the way they do in production."""

    dsn: str
    store: Store
    metrics: Metrics
    alerts: AlertService
    feed: Feed
    notify_metrics: NotifyMetrics
    tasks: dict[NotifierLoop, asyncio.Task[None]] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None

    async def open(self, source: str = "centrale-a", kind: str = "intrusion",
                   severity: str = "critical", site: str = "clg-jean-moulin",
                   source_type: str = "sensor", at: datetime = T0, silenced: bool = False
                   ) -> Alert:
        """Raise an alert the way ingest does: applied in a transaction, then published;
        `silenced` as a maintenance window would flag it in that transaction."""
        async with self.store.transaction() as conn:
            changes = await self.alerts.apply(conn, [Raise(AlertOccurrence(
                site=site, source=source, source_type=source_type, kind=kind,
                severity=severity, title=f"{kind} {source}", at=at,
                details={"zone": "batiment-a"}))])
            if silenced:
                await conn.execute("UPDATE alerts SET silenced = true WHERE id = $1",
                                   changes[0].alert.id)
                changes = [dataclasses.replace(c, alert=dataclasses.replace(
                    c.alert, silenced=True)) for c in changes]
        self.alerts.publish(changes)
        await self.written()
        return changes[0].alert

    async def change(self, action: str, alert: Alert, **updates: Any) -> Alert:
        """Publish a change the way the alert service does, the row updated first."""
        if updates:
            sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(updates, start=2))
            async with self.store.connection() as conn:
                await conn.execute(f"UPDATE alerts SET {sets} WHERE id = $1", alert.id,
                                   *updates.values())
            alert = dataclasses.replace(alert, **updates)
        self.alerts.publish([AlertChange(action, alert, "operator-1")])
        await self.written()
        return alert

    async def resolve(self, alert: Alert) -> Alert:
        resolved = await self.alerts.resolve(alert.id, "operator-1", "rondier sur place")
        await self.written()
        return resolved

    async def written(self) -> None:
        assert await self.feed.flush(5)

    def channel(self, config: Config, index: int = 0, sleep: FakeSleep | None = None) -> Any:
        assert self.http is not None
        nc = config.notifiers[index]
        kind = WebhookChannel if nc.type == "webhook" else AlertmanagerChannel
        return kind(nc, config.api.base_url, HttpPoster(self.http),  # type: ignore[arg-type]
                    self.notify_metrics, lambda: datetime.now(UTC),
                    sleep=sleep or FakeSleep(), rng=random.Random(7))

    async def start(self, channel: Any, *, wait: bool = True, **kwargs: Any) -> NotifierLoop:
        """Start a notifier's loop (a node's); by default, wait until it sends: a change
        made before it has its cursor would be history to it, not sent."""
        loop = NotifierLoop(channel, self.dsn, self.notify_metrics,
                            **({"lock_retry": 0.05} | kwargs))
        self.tasks[loop] = asyncio.create_task(loop.run())
        if wait:
            for _ in range(400):
                if loop.sending:
                    break
                await asyncio.sleep(0.025)
            assert loop.sending, "the notifier did not start sending"
        return loop

    async def stop(self, loop: NotifierLoop) -> None:
        task = self.tasks.pop(loop)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def sample(self, metric: str, notifier: str) -> float:
        value = self.metrics.registry.get_sample_value(metric, {"notifier": notifier})
        return value or 0.0


@pytest.fixture
async def rig(fresh_dsn: str) -> AsyncIterator[Rig]:
    store = await Store.open(fresh_dsn, size=4)
    await store.migrate()
    metrics = Metrics("test")
    alerts = AlertService(store, metrics)
    feed = Feed(store, metrics, fresh_dsn)
    await feed.start()
    alerts.subscribe(feed.alert_changed)
    rig = Rig(fresh_dsn, store, metrics, alerts, feed, NotifyMetrics(metrics.registry))
    feed_task = asyncio.create_task(feed.run())
    rig.http = aiohttp.ClientSession()
    try:
        yield rig
    finally:
        tasks = [*rig.tasks.values(), feed_task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rig.http.close()
        await store.close()


def notifier_config(dsn: str, *notifiers: dict[str, Any], **overrides: Any) -> Config:
    return make_config(dsn, "mqtt://127.0.0.1:1", notifiers=list(notifiers),
                       api={"listen": "127.0.0.1:0", "public_url": "https://vigie.test"},
                       **overrides)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def sleep() -> Iterator[FakeSleep]:
    yield FakeSleep()
