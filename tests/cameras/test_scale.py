"""Camera watching with many cameras, with a live scene that changes without a fault, and with
cameras that cannot be reached: a node on the real RTSP harness, judged through its state.

The capacity figures (CPU and memory per camera against ffmpeg, 100-300 streams) are in
tests/bench/cameras.py; these tests hold the behaviour at a smaller scale, in the test run.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.cameras.harness import RtspServer
from tests.conftest import eventually, free_port, make_config
from vigie.app import Node, running_node
from vigie.cameras import CameraSupervisor

# No test here starts the MQTT side of the node: the URL is never dialled.
NO_BROKER = "mqtt://127.0.0.1:1"
SITE = "clg-test-scale"


def _site(cameras: dict[str, str], checks: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": SITE, "name": "Collège des tests", "uai": "0789998Y",
            "cameras": [{"id": cid, "name": cid, "zone": "cour", "url": url,
                         **({"checks": checks} if checks else {})}
                        for cid, url in cameras.items()]}


def _views(supervisor: CameraSupervisor) -> dict[str, dict[str, Any]]:
    """What the API's camera list shows, by camera id."""
    return {s.camera.id: supervisor.view(s) for s in supervisor.cameras.values()}


def _seeing(view: dict[str, Any]) -> bool:
    """`ok` backed by a stream actually received (not merely not judged yet)."""
    return view["state"] == "ok" and view["last_frame_at"] is not None and view["fps"] > 0


class _Wrong(dict[str, Any]):
    """Falsy, so `eventually` keeps polling, and shows what differs when it gives up."""

    def __bool__(self) -> bool:
        return False


async def _all_seeing(supervisor: CameraSupervisor, ids: set[str]) -> Any:
    views = _views(supervisor)
    wrong = {c: (views[c]["state"], views[c]["reasons"], views[c]["error"])
             for c in ids if not _seeing(views[c])}
    return True if not wrong else _Wrong(wrong)


async def _references(node: Node, n: int) -> Any:
    async with node.store.connection() as conn:
        count = await conn.fetchval("SELECT count(*) FROM camera_references")
    return True if count >= n else _Wrong({"references": count})


async def _alerts(node: Node) -> list[tuple[str, str]]:
    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT source, kind FROM alerts ORDER BY source, kind")
    return [(r["source"], r["kind"]) for r in rows]


async def _transitions(node: Node) -> dict[str, list[str]]:
    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT camera, state FROM camera_transitions ORDER BY id")
    found: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        found[r["camera"]].append(r["state"])
    return dict(found)


async def _watch(supervisor: CameraSupervisor, seconds: float, every: float = 0.25
                 ) -> dict[str, list[dict[str, Any]]]:
    """Every camera's view and latest measures, polled for `seconds`."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for state in supervisor.cameras.values():
            sample = state.sample
            seen[state.camera.id].append({**supervisor.view(state),
                                          "measures": sample.measures if sample else None})
        await asyncio.sleep(every)
    return seen


def _not_ok(seen: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    return {c: sorted({(v["state"], ",".join(v["reasons"])) for v in views
                       if not _seeing(v)})
            for c, views in seen.items() if any(not _seeing(v) for v in views)}


# -- (a) many cameras ---------------------------------------------------------------------------

async def test_fifty_cameras_reach_ok_and_stay_ok(fresh_dsn: str, rtsp_server: RtspServer,
                                                  h264_clip: Path) -> None:
    mounts = {f"cam-{i:02d}": f"scale-{i:02d}" for i in range(50)}
    urls = {cam: rtsp_server.add_clip(mount, h264_clip) for cam, mount in mounts.items()}
    # Default checks, but a short learning, so the reference checks (blurred, moved) judge
    # every camera within the test; every keyframe analysed (`analyse_every` equal to the
    # keyframe interval would skip about every other one, a keyframe arriving a little early).
    checks = {"analyse_every": "0.5s", "learn_for": "2s"}
    config = make_config(fresh_dsn, NO_BROKER, sites=[_site(urls, checks)],
                         node={"camera_workers": 2})
    try:
        async with running_node(config, with_mqtt=False) as node:
            assert node.cameras is not None
            await eventually(lambda: _all_seeing(node.cameras, set(urls)), timeout=15)
            await eventually(lambda: _references(node, len(urls)), timeout=30)
            seen = await _watch(node.cameras, seconds=6)
            assert not _not_ok(seen)
            # Each stream is read whole: the clip's 10 fps, measured over the fps window.
            fps = {c: views[-1]["fps"] for c, views in seen.items()}
            assert all(8 <= f <= 12 for f in fps.values()), fps
            # Picture checks ran against the learned reference for every camera.
            assert all(views[-1]["measures"] and "similarity" in views[-1]["measures"]
                       for views in seen.values())
            assert await _alerts(node) == []
            await node.cameras.flush()
            assert await _transitions(node) == {c: ["ok"] for c in urls}
    finally:
        for mount in mounts.values():
            rtsp_server.remove(mount)


# -- (b) a live scene that changes without any fault --------------------------------------------

# Dusk falls on a live camera (its light drifts down to 45 % in DRIFT seconds, eased like
# daylight), someone walks past close to the lens halfway (a third of the view, PASS seconds),
# and the light comes back: a camera that sees all this is fine, and must say nothing. The
# harness drives the drift from the moment the reference is learned, so the test does not
# depend on how long learning took.
DRIFT, PASS, DUSK = 10.0, 2.0, 0.45


async def test_light_drift_and_passers_by_raise_nothing(
    fresh_dsn: str, rtsp_server: RtspServer
) -> None:
    mount = "scale-daylight"
    urls = {"cam-daylight": rtsp_server.add_live(mount)}
    # Every keyframe (one a second) analysed; a reference learned from the first ten.
    checks = {"analyse_every": "0.5s", "learn_for": "3s"}
    config = make_config(fresh_dsn, NO_BROKER, sites=[_site(urls, checks)],
                         node={"camera_workers": 1})
    try:
        async with running_node(config, with_mqtt=False) as node:
            assert node.cameras is not None
            await eventually(lambda: _all_seeing(node.cameras, set(urls)), timeout=10)
            await eventually(lambda: _references(node, 1), timeout=20)
            watching = asyncio.create_task(_watch(node.cameras, 2 * DRIFT + 4))
            rtsp_server.fault(mount, "exposure", [DUSK, DRIFT])
            await asyncio.sleep(DRIFT / 2)
            rtsp_server.fault(mount, "pass", [0.33, PASS])
            await asyncio.sleep(DRIFT / 2 + 1)
            rtsp_server.fault(mount, "exposure", [1.0, DRIFT])
            seen = await watching
            await node.cameras.flush()
            alerts = await _alerts(node)
    finally:
        rtsp_server.remove(mount)
    assert not _not_ok(seen)
    assert alerts == []
    # The picture did change as intended, and was compared with the learned reference.
    measures = [v["measures"] for v in seen["cam-daylight"] if v["measures"]]
    lumas = [m["luma_mean"] for m in measures]
    assert max(lumas) > 1.6 * min(lumas), (min(lumas), max(lumas))
    similarity = [m["similarity"] for m in measures if "similarity" in m]
    assert min(similarity) < 0.9, "the passer-by was never analysed"


# -- (c) unreachable cameras do not starve the reachable ones -----------------------------------

async def test_unreachable_cameras_do_not_starve_the_reachable(
    fresh_dsn: str, rtsp_server: RtspServer, h264_clip: Path
) -> None:
    good = {f"cam-good-{i}": f"scale-good-{i}" for i in range(5)}
    urls = {cam: rtsp_server.add_clip(mount, h264_clip) for cam, mount in good.items()}
    # Accepts the connection and never answers: every read waits for its timeout.
    urls |= {f"cam-hang-{i:02d}": rtsp_server.hang_url(f"scale-{i}") for i in range(10)}
    # Nothing listens: refused at once, and retried with backoff.
    urls |= {f"cam-refused-{i:02d}": f"rtsp://127.0.0.1:{free_port()}/stream"
             for i in range(10)}
    # Default checks; one worker process for all, the case where starving would show.
    # Storm grouping off: 20 of the site's 25 cameras down would (rightly) be one
    # site_unreachable page; what is under test here is each camera's own alert.
    config = make_config(fresh_dsn, NO_BROKER, sites=[_site(urls)],
                         node={"camera_workers": 1}, alerts={"storm": {"enabled": False}})
    dead = set(urls) - set(good)
    try:
        async with running_node(config, with_mqtt=False) as node:
            assert node.cameras is not None
            started = time.monotonic()
            # Connecting and the first packets take about a second; a stream probe at most 1 s
            # more (analyzeduration), whatever the unreachable cameras are doing.
            await eventually(lambda: _all_seeing(node.cameras, set(good)), timeout=5)
            ready_after = time.monotonic() - started
            checks = node.config.camera_checks(node.config.sites[0].cameras[0])
            # Never seen: offline once the first connection has had its chance.
            seen = await _watch(node.cameras, checks.offline_after + 5 + 2 - ready_after)
            views = _views(node.cameras)
            await node.cameras.flush()
            alerts = await _alerts(node)
    finally:
        for mount in good.values():
            rtsp_server.remove(mount)
    assert ready_after < 5
    assert not {c: v for c, v in _not_ok(seen).items() if c in good}
    assert all(8 <= views[c]["fps"] <= 12 for c in good), {c: views[c]["fps"] for c in good}
    assert {c: views[c]["state"] for c in dead} == dict.fromkeys(dead, "offline")
    # A camera never received is not reported ok meanwhile: it is unknown until judged.
    assert not {c for c in dead for v in seen[c] if v["state"] == "ok"}
    assert alerts == sorted((c, "offline") for c in dead)
