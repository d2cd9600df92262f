"""Correlation on a real PostgreSQL: the snapshots a sensor alarm gathers from the cameras of
its zone (at the alarm, and later), and the links between a site's intrusion alarm and its
camera alerts. Cameras are a directory of frames driven by the test (the seam the camera
supervisor fills in production, tested end to end below); time is injected."""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import SITES, eventually, make_config
from vigie.alerts import AlertChange, AlertService, Raise
from vigie.alerts._correlation import Correlator
from vigie.app import running_node
from vigie.config import Config
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store import _alerts as alerts_q
from vigie.store._alerts import Alert, AlertOccurrence

JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"
T0 = datetime(2026, 11, 28, 2, 13, tzinfo=UTC)


def site_with_cameras() -> dict[str, Any]:
    site = copy.deepcopy(SITES[0])
    url = "rtsp://127.0.0.1:1/x"
    site["cameras"] = [{"id": "hall", "zone": "batiment-a", "url": url},
                       {"id": "preau", "zone": "batiment-a", "url": url},
                       {"id": "entree", "zone": "entree", "url": url}]
    return site


class FakeTime:
    """The clock, and a sleep that moves it on instead of waiting."""

    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class Frames:
    """Cameras as the supervisor shows them: `<data_dir>/snapshots/<site>/<camera>.jpg`,
    replaced by a fresh frame when asked, unless the camera is dead."""

    def __init__(self, config: Config, time: FakeTime, dead: set[str]) -> None:
        self.root = config.node.data_dir / "snapshots"
        self.zones = {(s.id, c.id): c.zone for s in config.sites for c in s.cameras}
        self.time = time
        self.dead = dead
        self.requests: list[str] = []
        self.frames = 0

    def cameras_in_zone(self, site: str, zone: str) -> list[str]:
        return [c for (s, c), z in self.zones.items() if s == site and z == zone]

    def request(self, site: str, camera: str) -> None:
        self.requests.append(camera)
        if camera not in self.dead:
            self.write(site, camera, self.time.now + timedelta(milliseconds=400))

    def latest(self, site: str, camera: str) -> Path:
        return self.root / site / f"{camera}.jpg"

    def write(self, site: str, camera: str, at: datetime) -> None:
        self.frames += 1
        path = self.latest(site, camera)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"JPEG {camera} #{self.frames}".encode())
        os.utime(path, (at.timestamp(), at.timestamp()))


class Bench:
    def __init__(self, config: Config, store: Store, time: FakeTime, dead: set[str]) -> None:
        self.config = config
        self.store = store
        self.time = time
        self.frames = Frames(config, time, dead)
        self.alerts = AlertService(store, Metrics("t"), time.clock)
        self.correlator = Correlator(config, store, self.alerts, Metrics("t"), self.frames,
                                     clock=time.clock, sleep=time.sleep, fresh_within=3.0)
        self.alerts.subscribe(self.correlator.alert_changed)
        self.changes: list[AlertChange] = []
        self.alerts.subscribe(self.changes.append)

    async def raise_(self, source: str, kind: str, severity: str = "critical",
                     source_type: str = "sensor", site: str = JM,
                     at: datetime | None = None) -> Alert:
        changes = await self.alerts.raise_now([Raise(AlertOccurrence(
            site=site, source=source, source_type=source_type, kind=kind, severity=severity,
            title=kind, at=at or self.time.now))])
        await self.correlator.idle()
        return changes[0].alert

    async def get(self, alert: Alert) -> Alert:
        async with self.store.connection() as conn:
            return await alerts_q.get_alert(conn, alert.id, None)

    def correlated(self) -> list[uuid.UUID]:
        return [c.alert.id for c in self.changes if c.action == "correlated"]


@pytest.fixture
async def bench(store: Store, fresh_dsn: str) -> AsyncIterator[Bench]:
    yield await _bench(store, fresh_dsn, set())


async def _bench(store: Store, dsn: str, dead: set[str], **correlation: Any) -> Bench:
    config = make_config(dsn, "mqtt://127.0.0.1:1", sites=[site_with_cameras(), SITES[1]],
                         alerts={"correlation": correlation} if correlation else {})
    return Bench(config, store, FakeTime(), dead)


@pytest.fixture
async def running(bench: Bench) -> AsyncIterator[Bench]:
    task = asyncio.create_task(bench.correlator.run())
    yield bench
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_intrusion_gets_its_zone_cameras_at_the_alarm_and_after(running: Bench
                                                                         ) -> None:
    b = running
    alert = await b.raise_("centrale-a", "intrusion")
    shots = (await b.get(alert)).snapshots

    assert [(s["camera"], s["moment"]) for s in shots] == [
        ("hall", "alarm"), ("preau", "alarm"), ("hall", "after"), ("preau", "after")]
    assert sorted(set(b.frames.requests)) == ["hall", "preau"]  # not the entrance
    assert 5.0 in b.time.slept  # the second shot, alerts.correlation.snapshot_after later
    alarm, after = shots[0], shots[2]
    assert datetime.fromisoformat(alarm["taken_at"]) == T0 + timedelta(milliseconds=400)
    assert datetime.fromisoformat(after["taken_at"]) > T0 + timedelta(seconds=5)
    async with b.store.connection() as conn:
        rows = await conn.fetch("SELECT id, kind, path, camera FROM snapshots ORDER BY id")
    assert [r["id"] for r in rows] == [s["id"] for s in shots]
    assert all(r["kind"] == "kept" for r in rows)
    contents = [(b.config.node.data_dir / r["path"]).read_bytes() for r in rows]
    assert len(set(contents)) == 4 and contents[0].startswith(b"JPEG hall")
    assert all(s["url"] == f"/api/v1/snapshots/{s['id']}" for s in shots)
    assert b.correlated() == [alert.id, alert.id]  # one live-feed change per shot


async def test_a_silent_camera_gives_its_last_picture_once(store: Store, fresh_dsn: str
                                                           ) -> None:
    b = await _bench(store, fresh_dsn, dead={"preau"})
    b.frames.write(JM, "preau", T0 - timedelta(hours=1))
    task = asyncio.create_task(b.correlator.run())
    try:
        alert = await b.raise_("centrale-a", "intrusion")
    finally:
        task.cancel()
    shots = (await b.get(alert)).snapshots
    assert [(s["camera"], s["moment"]) for s in shots] == [
        ("hall", "alarm"), ("preau", "alarm"), ("hall", "after")]
    assert datetime.fromisoformat(shots[1]["taken_at"]) == T0 - timedelta(hours=1)
    # It was waited for, within bounds: 3 s at 0.1 s per look, then 5 s, then 3 s again.
    assert sum(b.time.slept) == pytest.approx(3.0 + 5.0 + 3.0)


async def test_one_snapshot_when_none_is_wanted_later(store: Store, fresh_dsn: str) -> None:
    b = await _bench(store, fresh_dsn, set(), snapshot_after=None)
    task = asyncio.create_task(b.correlator.run())
    try:
        alert = await b.raise_("panique-accueil", "panic")
        door = await b.raise_("porte-hall", "door", severity="info")  # during class hours
    finally:
        task.cancel()
    [shot] = (await b.get(alert)).snapshots  # the panic button's zone: the entrance
    assert (shot["camera"], shot["moment"]) == ("entree", "alarm")
    assert (await b.get(door)).snapshots == []


@pytest.mark.parametrize(("source", "kind", "severity", "source_type"), [
    ("porte-hall", "door", "info", "sensor"),  # a door during class hours
    ("centrale-a", "device_offline", "major", "sensor"),  # a sensor's health, not an alarm
    ("hall", "covered", "critical", "camera"),
])
async def test_no_snapshot_for_what_is_not_an_alarm(running: Bench, source: str, kind: str,
                                                    severity: str, source_type: str) -> None:
    alert = await running.raise_(source, kind, severity, source_type)
    assert (await running.get(alert)).snapshots == []
    assert running.frames.requests == []


async def test_an_alarm_handled_late_gets_no_snapshot(running: Bench) -> None:
    late = T0 - timedelta(minutes=5)  # a backlog replayed after a database outage
    alert = await running.raise_("centrale-a", "intrusion", at=late)
    assert (await running.get(alert)).snapshots == []
    assert running.frames.requests == []


async def test_a_camera_alert_links_to_the_open_intrusion_of_its_site(running: Bench) -> None:
    b = running
    intrusion = await b.raise_("centrale-a", "intrusion")
    other_site = await b.raise_("centrale", "intrusion", site=PASTEUR)
    covered = await b.raise_("hall", "covered", source_type="camera")
    assert (await b.get(covered)).related == [intrusion.id]
    assert (await b.get(intrusion)).related == [covered.id]
    assert (await b.get(other_site)).related == []
    assert (await b.get(covered)).to_json()["related"] == [str(intrusion.id)]
    assert set(b.correlated()) >= {intrusion.id, covered.id}


async def test_no_link_once_the_intrusion_is_resolved(running: Bench) -> None:
    b = running
    intrusion = await b.raise_("centrale-a", "intrusion")
    await b.alerts.resolve(intrusion.id, "operator-1", "ronde faite")
    covered = await b.raise_("hall", "covered", source_type="camera")
    assert (await b.get(covered)).related == []


async def test_an_intrusion_links_the_camera_alerts_opened_shortly_before(running: Bench
                                                                         ) -> None:
    b = running
    old = await b.raise_("entree", "offline", "major", "camera")
    b.time.now += timedelta(minutes=30)  # beyond the link window (10 min)
    recent = await b.raise_("hall", "covered", source_type="camera")
    b.time.now += timedelta(minutes=2)
    intrusion = await b.raise_("centrale-a", "intrusion")
    assert (await b.get(intrusion)).related == [recent.id]
    assert (await b.get(recent)).related == [intrusion.id]
    assert (await b.get(old)).related == []
    # Linking again changes nothing: each link once.
    async with b.store.connection() as conn:
        from vigie.store._correlation import link_alerts
        assert await link_alerts(conn, intrusion.id, [recent.id]) == []


async def test_end_to_end_with_a_real_camera(fresh_dsn: str, mqtt_url: str) -> None:
    """A node watching a camera (a clip replayed by its worker) in the intrusion sensor's
    zone: the alarm published over MQTT gets two fresh frames of it, served by the API."""
    from tests.cameras.clips import FfmpegMissing, clip
    from tests.conftest import device_client
    from tests.test_node_e2e import publish, token, topic

    try:
        video = clip("h264", seconds=20)
    except FfmpegMissing as exc:
        pytest.fail(str(exc))
    site = copy.deepcopy(SITES[0])
    site["cameras"] = [{"id": "hall", "zone": "batiment-a", "url": f"file://{video}"}]
    config = make_config(fresh_dsn, mqtt_url, sites=[site],
                         alerts={"correlation": {"snapshot_after": "1s"}})
    async with running_node(config) as node:
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
        assert node.cameras is not None
        state = node.cameras.cameras[f"{JM}/hall"]
        await eventually(lambda: _true(state.sample is not None
                                       and state.sample.snapshot_at is not None), timeout=30)
        pub = device_client(config.mqtt.url)
        try:
            publish(pub, topic(config, JM, "centrale-a"), {
                "id": uuid.uuid4().hex, "kind": "intrusion", "state": "alarm",
                "ts": datetime.now(UTC).isoformat()})
        finally:
            pub.loop_stop()
            pub.disconnect()
        viewer = await token(node, "viewer")
        headers = {"Authorization": f"Bearer {viewer}"}
        async with aiohttp.ClientSession(headers=headers) as http:

            async def two_shots() -> list[dict[str, Any]] | None:
                async with http.get(f"{node.api_url}/api/v1/alerts?state=open") as r:
                    items = (await r.json())["items"]
                shots = items[0]["snapshots"] if items else []
                return shots if len(shots) == 2 else None

            alarm, after = await eventually(two_shots, timeout=20)
            assert (alarm["moment"], after["moment"]) == ("alarm", "after")
            assert alarm["camera"] == after["camera"] == "hall"
            assert after["taken_at"] > alarm["taken_at"]
            for shot in (alarm, after):
                async with http.get(node.api_url + shot["url"]) as r:
                    assert r.status == 200 and r.content_type == "image/jpeg"
                    assert (await r.read())[:2] == b"\xff\xd8"


async def _true(value: bool) -> bool:
    return value


async def test_the_node_watching_the_camera_attaches_it_whoever_raised_the_alarm(
        fresh_dsn: str) -> None:
    """Two nodes on one database: the alarm is raised on the node without the camera; the
    node that watches it follows the live feed and attaches its frames."""
    from tests.cameras.clips import FfmpegMissing, clip

    try:
        video = clip("h264", seconds=20)
    except FfmpegMissing as exc:
        pytest.fail(str(exc))
    watching = copy.deepcopy(SITES[0])
    watching["cameras"] = [{"id": "hall", "zone": "batiment-a", "url": f"file://{video}"}]
    blind = {k: v for k, v in copy.deepcopy(SITES[0]).items() if k != "cameras"}
    no_mqtt = "mqtt://127.0.0.1:1"
    config_a = make_config(fresh_dsn, no_mqtt, sites=[blind],
                           alerts={"correlation": {"snapshot_after": None}})
    config_b = make_config(fresh_dsn, no_mqtt, sites=[watching],
                           alerts={"correlation": {"snapshot_after": None}})
    async with running_node(config_a, with_mqtt=False) as a, \
            running_node(config_b, with_mqtt=False) as b:
        assert b.cameras is not None
        state = b.cameras.cameras[f"{JM}/hall"]
        await eventually(lambda: _true(state.sample is not None
                                       and state.sample.snapshot_at is not None), timeout=30)
        [change] = await a.alerts.raise_now([Raise(AlertOccurrence(
            site=JM, source="centrale-a", source_type="sensor", kind="intrusion",
            severity="critical", title="Intrusion", at=datetime.now(UTC)))])

        async def shots() -> list[Any]:
            async with a.store.connection() as conn:
                alert = await alerts_q.get_alert(conn, change.alert.id, None)
            return alert.snapshots

        [shot] = await eventually(shots, timeout=20)
        assert (shot["camera"], shot["moment"]) == ("hall", "alarm")
        async with b.store.connection() as conn:
            path = await conn.fetchval("SELECT path FROM snapshots WHERE id = $1", shot["id"])
        assert (b.config.node.data_dir / path).read_bytes()[:2] == b"\xff\xd8"
