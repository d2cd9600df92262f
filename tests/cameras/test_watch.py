"""Camera watching end to end: a node, real RTSP streams from the GStreamer harness, faults
injected on command, health and alerts through the API and the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.cameras.harness import RtspServer
from tests.conftest import eventually, make_config
from vigie.app import Node, running_node
from vigie.store._tokens import create_token

SITE = "clg-test-cameras"
# Fast thresholds, so each fault is seen within seconds; the same code runs with defaults.
CHECKS = {"offline_after": "3s", "frozen_after": "4s", "analyse_every": "1s", "min_fps": 5,
          "fps_window": "4s", "learn_for": "4s", "bad_samples": 2, "good_samples": 2}
FAULTS = ["black", "freeze", "cover", "blur", "shift", "fps", "stop"]


def _site(urls: dict[str, str]) -> dict[str, Any]:
    return {"id": SITE, "name": "Collège des tests", "uai": "0789999Z",
            "cameras": [{"id": cid, "name": cid, "zone": "cour", "url": url,
                         "checks": CHECKS} for cid, url in urls.items()]}


@pytest.fixture
async def node(fresh_dsn: str, mqtt_url: str, rtsp_server: RtspServer) -> AsyncIterator[Node]:
    urls = {f"cam-{f}": rtsp_server.add_live(f"watch-{f}") for f in ["ok", *FAULTS]}
    # Credentials in the URL: they must never come out of the API.
    urls["cam-ok"] = urls["cam-ok"].replace("rtsp://", "rtsp://admin:S3cr3t-Zebra-42@")
    urls["cam-hang"] = rtsp_server.hang_url("watch")
    urls["cam-refused"] = "rtsp://127.0.0.1:9/nothing"  # discard port: refused at once
    config = make_config(fresh_dsn, mqtt_url, sites=[_site(urls)],
                         node={"camera_workers": 2})
    async with running_node(config, with_mqtt=False) as node:
        yield node
    for f in ["ok", *FAULTS]:
        rtsp_server.remove(f"watch-{f}")


async def _token(node: Node) -> str:
    async with node.store.connection() as conn:
        token, _ = await create_token(conn, name="tech", role="technician", sites=None,
                                      expires_at=None)
    return token


async def test_faults_are_detected_alerted_and_cleared(node: Node, rtsp_server: RtspServer
                                                       ) -> None:
    token = await _token(node)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(node.api_url, headers=headers) as http:

        async def cameras() -> dict[str, dict[str, Any]]:
            async with http.get(f"/api/v1/cameras?site={SITE}") as r:
                assert r.status == 200
                return {c["id"]: c for c in (await r.json())["items"]}

        async def states(expected: dict[str, tuple[str, set[str]]]) -> Any:
            """True when every camera is as expected; else what differs (for the report)."""
            now = await cameras()
            wrong = {c: (now[c]["state"], sorted(now[c]["reasons"]), now[c]["error"])
                     for c, want in expected.items()
                     if (now[c]["state"], set(now[c]["reasons"])) != want}
            return True if not wrong else _Wrong(wrong)

        # Every stream comes up and learns its reference; the dead ones are offline, and
        # they do not hold the others back.
        healthy = {f"cam-{f}": ("ok", set()) for f in ["ok", *FAULTS]}
        await eventually(lambda: states({**healthy, "cam-hang": ("offline", {"offline"}),
                                         "cam-refused": ("offline", {"offline"})}), timeout=30)
        ok = (await cameras())["cam-ok"]
        assert ok["codec"] == "h264" and (ok["width"], ok["height"]) == (640, 360)

        async def steady_fps() -> Any:
            # A rate over `fps_window`: packets a starved machine delivered late arrive
            # bunched and read high for a window; the stream's own 10 fps shows after.
            ok = (await cameras())["cam-ok"]
            return ok if 7 <= ok["fps"] <= 13 and ok["bitrate"] > 0 else _Wrong(
                {"fps": ok["fps"], "bitrate": ok["bitrate"]})

        await eventually(steady_fps, timeout=20)
        assert ok["url"] == f"rtsp://***@127.0.0.1:{rtsp_server.port}/live/watch-ok"
        await eventually(lambda: _references(node, len(FAULTS) + 1), timeout=30)

        # Each fault: its reason within threshold + hysteresis + a margin.
        rtsp_server.fault("watch-fps", "fps", 2)
        for f in ("black", "freeze", "cover", "blur", "shift", "stop"):
            rtsp_server.fault(f"watch-{f}", f)
        expected = {"cam-black": ("degraded", {"black"}), "cam-freeze": ("degraded", {"frozen"}),
                    "cam-cover": ("degraded", {"covered"}), "cam-blur": ("degraded", {"blurred"}),
                    "cam-shift": ("degraded", {"moved"}), "cam-fps": ("degraded", {"low_fps"}),
                    "cam-stop": ("offline", {"offline"}), "cam-ok": ("ok", set())}
        await eventually(lambda: states(expected), timeout=20)

        raised = {
            ("cam-black", "black"), ("cam-freeze", "frozen"), ("cam-cover", "covered"),
            ("cam-blur", "blurred"), ("cam-shift", "moved"), ("cam-fps", "low_fps"),
            ("cam-stop", "offline"), ("cam-hang", "offline"), ("cam-refused", "offline")}
        # Alerts are written just after the state changes in memory (an offline one up to
        # `alerts.storm.window` later, 5 s: this site could make a storm): poll for them.
        await eventually(lambda: _alert_kinds(http, raised), timeout=20)
        alerts = await _open_alerts(http)
        severity = {a["source"]: a["severity"] for a in alerts}
        assert severity["cam-cover"] == severity["cam-shift"] == "critical"
        assert severity["cam-stop"] == "major" and severity["cam-black"] == "minor"
        # Its offline alert, held a moment by the storm guard, still carries the last frame
        # the camera sent (attached once the alert is stored: poll).
        async def stop_snapshot() -> bool:
            stop = next(a for a in await _open_alerts(http) if a["source"] == "cam-stop")
            return bool(stop["snapshots"])

        await eventually(stop_snapshot, timeout=10)

        # Faults removed: the cameras recover and their alerts resolve themselves.
        for f in ("black", "freeze", "cover", "blur", "shift", "fps"):
            rtsp_server.fault(f"watch-{f}", "normal")
        rtsp_server.fault("watch-stop", "start")
        await eventually(lambda: states(healthy), timeout=30)
        await eventually(lambda: _alert_kinds(http, {("cam-hang", "offline"),
                                                      ("cam-refused", "offline")}), timeout=10)

        # The technician's view: history with the transitions, the snapshot, availability.
        async with http.get(f"/api/v1/cameras/{SITE}/cam-black/history") as r:
            history = (await r.json())["items"]
        assert [h["state"] for h in history][:2] == ["ok", "degraded"]
        assert history[1]["reasons"] == ["black"] and "luma_mean" in history[1]["details"][
            "measures"]
        async with http.get(f"/api/v1/cameras/{SITE}/cam-ok/snapshot") as r:
            assert r.status == 200 and r.content_type == "image/jpeg"
            assert (await r.read())[:2] == b"\xff\xd8"
        async with http.get(f"/api/v1/cameras/{SITE}/cam-ok") as r:
            one = await r.json()
        assert one["availability"]["24h"] == 1.0
        # The alert of a camera fault carries the frame that was analysed.
        async with http.get("/api/v1/alerts?state=resolved") as r:
            black = next(a for a in (await r.json())["items"] if a["source"] == "cam-black")
        assert black["snapshots"] and black["snapshots"][0]["url"].startswith("/api/v1/snap")
        async with http.get(black["snapshots"][0]["url"]) as r:
            assert r.status == 200 and r.content_type == "image/jpeg"


class _Wrong(dict[str, Any]):
    """Falsy, so `eventually` keeps polling, and shows what differs when it gives up."""

    def __bool__(self) -> bool:
        return False


async def _alert_kinds(http: aiohttp.ClientSession, expected: set[tuple[str, str]]) -> Any:
    now = {(a["source"], a["kind"]) for a in await _open_alerts(http)}
    return True if now == expected else _Wrong({"open": sorted(now)})


async def _open_alerts(http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with http.get("/api/v1/alerts?state=open&limit=500") as r:
        return list((await r.json())["items"])


async def _references(node: Node, n: int) -> bool:
    async with node.store.connection() as conn:
        return bool(await conn.fetchval("SELECT count(*) >= $1 FROM camera_references", n))


async def test_h265_and_udp_streams_are_watched(fresh_dsn: str, mqtt_url: str,
                                                rtsp_server: RtspServer) -> None:
    site = {"id": SITE, "name": "Collège des tests", "uai": "0789999Z", "cameras": [
        {"id": "hevc", "url": rtsp_server.add_clip("watch-hevc", codec="h265"),
         "checks": CHECKS},
        {"id": "udp", "url": rtsp_server.add_clip("watch-udp"), "transport": "udp",
         "checks": CHECKS},
    ]}
    config = make_config(fresh_dsn, mqtt_url, sites=[site])
    try:
        async with running_node(config, with_mqtt=False) as node:
            assert node.cameras is not None
            cams = node.cameras.cameras

            async def up() -> Any:
                got = {k: (s.health.state, s.sample.codec if s.sample else None)
                       for k, s in cams.items()}
                want = {f"{SITE}/hevc": ("ok", "hevc"), f"{SITE}/udp": ("ok", "h264")}
                return True if got == want else _Wrong(got)

            await eventually(up, timeout=30)
    finally:
        rtsp_server.remove("watch-hevc")
        rtsp_server.remove("watch-udp")
