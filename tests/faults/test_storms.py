"""Alert storms on real parts: a node from `running_node`, the RTSP harness, real MQTT
devices with last wills, PostgreSQL.

- A collège's network drops: all its cameras go offline and its devices' last wills say
  offline. One `site_unreachable` alert is paged; the camera and device alerts are stored,
  silenced and linked to it. When the network comes back, everything resolves.
- 200 unreachable cameras over 10 sites beside 10 good ones: the good ones are watched as
  usual, and the 200 make 10 pages, not 200.
- A flapping camera keeps one alert whose count grows.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.cameras.harness import RtspServer
from tests.conftest import eventually, free_port, make_config
from tests.faults.conftest import record
from vigie.alerts import AlertChange
from vigie.app import Node, running_node
from vigie.cameras._stream import MAX_BACKOFF

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

CUT, OTHER = "clg-coupe", "clg-voisin"
RECONNECT_WAIT = MAX_BACKOFF * 1.5  # a camera's longest wait between two attempts


def _site(site_id: str, cameras: dict[str, str], sensors: int = 0) -> dict[str, Any]:
    return {"id": site_id, "name": f"Collège {site_id}", "uai": "0789996W",
            "cameras": [{"id": c, "name": c, "zone": "cour", "url": u}
                        for c, u in cameras.items()],
            "sensors": [{"id": f"contact-{i}", "kind": "door", "zone": "cour"}
                        for i in range(sensors)]}


class _Wrong(dict[str, Any]):
    def __bool__(self) -> bool:
        return False


class Pages:
    """What the node publishes to its notifiers: an opened alert not silenced is a page."""

    def __init__(self, node: Node) -> None:
        self.changes: list[AlertChange] = []
        node.alerts.subscribe(self.changes.append)

    def of(self, site: str) -> list[str]:
        return [f"{c.alert.source}/{c.alert.kind}" for c in self.changes
                if c.action == "opened" and not c.alert.silenced and c.alert.site == site]


class Device:
    """A door contact on the site's network: connected with a last will on its status."""

    def __init__(self, mqtt_url: str, topic: str) -> None:
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        self.topic = topic
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"dev-{uuid.uuid4().hex[:8]}")
        self.client.will_set(topic, b"offline", qos=1)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(host, int(port), keepalive=60)
        self.client.loop_start()
        assert connected.wait(10)
        self.client.publish(topic, b"online", qos=1).wait_for_publish(10)

    def cut(self) -> None:
        """The link drops: no DISCONNECT, the broker sees the connection die (will sent)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.loop_stop()


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    made: list[Device] = []
    yield made
    for d in made:
        d.close()


async def _alerts(node: Node, site: str) -> list[dict[str, Any]]:
    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT * FROM alerts WHERE site = $1 ORDER BY opened_at", site)
    return [dict(r) for r in rows]


@pytest.fixture
async def mounts(rtsp_server: RtspServer) -> AsyncIterator[list[str]]:
    added: list[str] = []
    yield added
    for m in added:
        rtsp_server.remove(m)


async def test_a_site_whose_network_drops_pages_once(
    fresh_dsn: str, mqtt_url: str, rtsp_server: RtspServer, h264_clip: Path,
    devices: list[Device], mounts: list[str],
) -> None:
    cut = {f"cam-{i:02d}": f"storm-cut-{i:02d}" for i in range(12)}
    other = {f"cam-{i}": f"storm-other-{i}" for i in range(2)}
    mounts += [*cut.values(), *other.values()]
    urls = {m: rtsp_server.add_clip(m, h264_clip) for m in mounts}
    config = make_config(
        fresh_dsn, mqtt_url, sites=[
            _site(CUT, {c: urls[m] for c, m in cut.items()}, sensors=6),
            _site(OTHER, {c: urls[m] for c, m in other.items()}, sensors=2)],
        defaults={"camera": {"offline_after": "2s"}}, node={"camera_workers": 1},
        # Cameras reconnect with backoff and jitter: one that failed through the whole
        # outage may come back up to MAX_BACKOFF x 1.5 after the link, and a loaded machine
        # makes the outage (the waits below) long enough for that. Stragglers are grouped
        # if back within `release_after`: longer than that wait (the default, 60 s, is).
        alerts={"storm": {"release_after": f"{RECONNECT_WAIT + 5:.0f}s"}})
    prefix = config.mqtt.topic_prefix
    async with running_node(config) as node:
        assert node.cameras is not None and node.subscriber is not None
        await node.subscriber.wait_connected(10)
        pages = Pages(node)
        for site_id, n in ((CUT, 6), (OTHER, 2)):
            devices += [await asyncio.to_thread(Device, mqtt_url,
                                                f"{prefix}/{site_id}/contact-{i}/status")
                        for i in range(n)]

        async def all_ok() -> bool:
            return all(s.health.state == "ok" for s in node.cameras.cameras.values())

        await eventually(all_ok, timeout=30)

        # The link of the collège drops: its cameras first (seconds), then the broker
        # notices its devices are gone (their wills).
        for mount in cut.values():
            rtsp_server.fault(mount, "stop")

        async def site_alert() -> list[dict[str, Any]]:
            return [a for a in await _alerts(node, CUT) if a["kind"] == "site_unreachable"]

        [site] = await eventually(site_alert, timeout=30)
        for d in devices[:6]:
            d.cut()

        async def all_grouped() -> bool:
            alerts = await _alerts(node, CUT)
            return len(alerts) == 1 + 12 + 6 and all(
                a["silenced"] and a["details"].get("grouped_by") == str(site["id"])
                for a in alerts if a["kind"] != "site_unreachable")

        await eventually(all_grouped, timeout=30)
        down_pages = pages.of(CUT)
        assert down_pages == ["network/site_unreachable"]
        assert site["severity"] == "critical" and site["source_type"] == "site"
        assert site["details"]["cameras_down"] == 12
        assert await _alerts(node, OTHER) == []
        assert node.metrics.site_unreachable.labels(CUT)._value.get() == 1

        # The link comes back: devices reconnect and say so, cameras stream again; but one
        # contact stays dead (its battery died with the outage).
        for mount in cut.values():
            rtsp_server.fault(mount, "start")
        for d in devices[:5]:
            devices.append(await asyncio.to_thread(Device, mqtt_url, d.topic))
        dead = f"{CUT}/contact-5/device_offline"

        async def all_resolved_but_one() -> bool:
            left = [a for a in await _alerts(node, CUT) if a["state"] != "resolved"]
            return [a["fingerprint"] for a in left] == [dead] and not left[0]["silenced"]

        await eventually(all_resolved_but_one, timeout=RECONNECT_WAIT + 90)
        async with node.store.connection() as conn:
            grouped = await conn.fetchval(
                "SELECT count(*) FROM alert_history WHERE action = 'grouped'")
        assert grouped == 18
        assert pages.of(CUT) == down_pages  # nothing opened on the way back either
        # The stragglers of the recovery (a camera reconnects seconds after the others)
        # came back within `release_after`, grouped; the dead contact was released, to be
        # paged on its own.
        released = [c.alert.fingerprint for c in pages.changes if c.action == "unsilenced"]
        assert released == [dead]
    record("site_network_loss", cameras_cut=12, devices_cut=6, alerts_stored=19,
           pages=len(down_pages), released_after_recovery=len(released))


async def test_two_hundred_unreachable_cameras_do_not_starve_ten_good_ones(
    fresh_dsn: str, rtsp_server: RtspServer, h264_clip: Path, mounts: list[str],
) -> None:
    good = {f"cam-{i}": f"good-{i}" for i in range(10)}
    mounts += list(good.values())
    sites = [_site("clg-ok", {c: rtsp_server.add_clip(m, h264_clip) for c, m in good.items()})]
    for s in range(10):  # ten collèges cut off: half hang, half refuse
        cams = {f"cam-{i:02d}": (rtsp_server.hang_url(f"s{s}-{i}") if i % 2
                                 else f"rtsp://127.0.0.1:{free_port()}/stream")
                for i in range(20)}
        sites.append(_site(f"clg-cut-{s}", cams))
    config = make_config(fresh_dsn, "mqtt://127.0.0.1:1", sites=sites,
                         defaults={"camera": {"offline_after": "3s"}},
                         node={"camera_workers": 2})
    async with running_node(config, with_mqtt=False) as node:
        assert node.cameras is not None
        pages = Pages(node)
        cameras = node.cameras
        good_states = [s for s in cameras.cameras.values() if s.site.id == "clg-ok"]

        async def good_seen() -> bool:
            return all(s.health.state == "ok" and s.sample is not None and s.sample.fps > 0
                       for s in good_states)

        await eventually(good_seen, timeout=20)

        async def sites_down() -> Any:
            async with node.store.connection() as conn:
                rows = await conn.fetch("SELECT site, state FROM alerts "
                                        "WHERE kind = 'site_unreachable' ORDER BY site")
            if len(rows) == 10:
                return True
            # What a failure shows: the site alerts, and the cut cameras' states by site.
            states = Counter((s.site.id, s.health.state) for s in cameras.cameras.values()
                             if s.site.id != "clg-ok")
            return _Wrong(alerts=[tuple(r) for r in rows], cameras=sorted(states.items()),
                          held=node.alerts.storms.holding if node.alerts.storms else None)

        await eventually(sites_down, timeout=60)
        # The good ones kept streaming meanwhile, at the clip's rate.
        fps = {s.camera.id: s.sample.fps for s in good_states if s.sample}
        assert all(s.health.state == "ok" for s in good_states)
        assert all(8 <= f <= 12 for f in fps.values()), fps

        async def offline_grouped() -> bool:
            async with node.store.connection() as conn:
                return int(await conn.fetchval(
                    "SELECT count(*) FROM alerts WHERE kind = 'offline' AND silenced")) == 200

        await eventually(offline_grouped, timeout=30)
        paged = [p for c in pages.changes if c.action == "opened" and not c.alert.silenced
                 for p in [c.alert.kind]]
        assert paged == ["site_unreachable"] * 10, paged
        assert all(s.health.state == "offline" for s in node.cameras.cameras.values()
                   if s.site.id != "clg-ok")
    record("unreachable_cameras", unreachable=200, good=10, good_fps=sorted(fps.values()),
           pages=len(paged), alerts_grouped=200)


async def test_a_flapping_camera_keeps_one_alert_whose_count_grows(
    fresh_dsn: str, rtsp_server: RtspServer, mounts: list[str],
) -> None:
    mounts.append("flapping")
    url = rtsp_server.add_live("flapping")
    config = make_config(fresh_dsn, "mqtt://127.0.0.1:1", sites=[_site("clg-flap", {
        "cour": url})], defaults={"camera": {"analyse_every": "0.5s", "learn_for": "3s"}})
    async with running_node(config, with_mqtt=False) as node:
        assert node.cameras is not None
        [state] = node.cameras.cameras.values()

        async def ok() -> bool:
            return state.health.state == "ok"

        await eventually(ok, timeout=30)
        for _ in range(6):  # covered long enough to count, uncovered too briefly to clear
            rtsp_server.fault("flapping", "cover")
            await asyncio.sleep(4)
            rtsp_server.fault("flapping", "normal")
            await asyncio.sleep(1.5)
        await node.cameras.flush()
        async with node.store.connection() as conn:
            rows = await conn.fetch("SELECT kind, count, state FROM alerts")
    [alert] = [dict(r) for r in rows if r["kind"] == "covered"]
    assert alert["count"] >= 3, rows
    record("flapping_camera", cycles=6, covered_alerts=1, count=alert["count"])
