"""The node's watch over its camera worker processes, and its offline deadline: a node on the
real RTSP harness, workers killed and stopped for real (SIGKILL, SIGSTOP)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cameras.harness import RtspServer
from tests.conftest import eventually, make_config
from vigie.app import Node, running_node
from vigie.cameras import _supervisor, _workers
from vigie.cameras._workers import LATE_AFTER

NO_BROKER = "mqtt://127.0.0.1:1"  # the MQTT side of the node is not started
SITE = "clg-test-supervision"
OFFLINE_AFTER = 3.0
# Every keyframe analysed (one a second); a reference learned from the first ten.
CHECKS = {"offline_after": f"{OFFLINE_AFTER}s", "analyse_every": "0.5s", "learn_for": "2s",
          "bad_samples": 2, "good_samples": 2}
CAMERAS = 4


@pytest.fixture
async def node(fresh_dsn: str, rtsp_server: RtspServer, h264_clip: Path
               ) -> AsyncIterator[Node]:
    mounts = {f"cam-{i}": f"supervision-{i}" for i in range(CAMERAS)}
    site = {"id": SITE, "name": "Collège des tests", "uai": "0789997X", "cameras": [
        {"id": cam, "name": cam, "zone": "cour", "url": rtsp_server.add_clip(mount, h264_clip),
         "checks": CHECKS} for cam, mount in mounts.items()]}
    config = make_config(fresh_dsn, NO_BROKER, sites=[site], node={"camera_workers": 2})
    try:
        async with running_node(config, with_mqtt=False) as node:
            assert node.cameras is not None
            await eventually(lambda: _all_ok(node), timeout=20)
            await eventually(lambda: _references(node, CAMERAS), timeout=30)
            yield node
    finally:
        for mount in mounts.values():
            rtsp_server.remove(mount)


@contextlib.contextmanager
def _resumed_at_exit(pid: int) -> Iterator[None]:
    """A test that stops a worker leaves no stopped process behind, whatever happens."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


class _Wrong(dict[str, Any]):
    def __bool__(self) -> bool:
        return False


def _views(node: Node) -> dict[str, dict[str, Any]]:
    assert node.cameras is not None
    return {s.camera.id: node.cameras.view(s) for s in node.cameras.cameras.values()}


async def _all_ok(node: Node, since: float = 0.0) -> Any:
    """Every camera ok, reported on time, from a report made after `since`."""
    wrong = {c: (v["state"], v["stale"], v["error"]) for c, v in _views(node).items()
             if v["state"] != "ok" or v["stale"] or v["last_report_at"] is None
             or _ts(v["last_report_at"]) <= since}
    return True if not wrong else _Wrong(wrong)


async def _references(node: Node, n: int) -> Any:
    async with node.store.connection() as conn:
        count = await conn.fetchval("SELECT count(*) FROM camera_references")
    return True if count >= n else _Wrong({"references": count})


async def _transitions(node: Node) -> dict[str, list[tuple[str | None, str]]]:
    assert node.cameras is not None
    await node.cameras.flush()
    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT camera, previous, state FROM camera_transitions "
                                "ORDER BY at, id")
    found: dict[str, list[tuple[str | None, str]]] = {}
    for r in rows:
        found.setdefault(r["camera"], []).append((r["previous"], r["state"]))
    return found


async def _alerts(node: Node) -> list[tuple[str, str]]:
    async with node.store.connection() as conn:
        rows = await conn.fetch("SELECT source, kind FROM alerts ORDER BY source, kind")
    return [(r["source"], r["kind"]) for r in rows]


def _metric(node: Node, name: str, **labels: str) -> float | None:
    return node.metrics.registry.get_sample_value(name, labels)


async def _lagging(node: Node, worker: str) -> bool:
    lag = _metric(node, "vigie_camera_worker_lag_seconds", worker=worker)
    return lag is not None and lag >= 1.0


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def _cameras_of(node: Node, worker: int) -> set[str]:
    assert node.cameras is not None
    return {s.camera.id for s in node.cameras.cameras.values() if s.worker == worker}


async def test_a_killed_worker_is_restarted_and_its_cameras_carry_on(node: Node) -> None:
    assert node.cameras is not None
    pid = node.cameras.worker_pids()[0]
    assert pid is not None
    mine = _cameras_of(node, 0)
    assert mine and len(mine) < CAMERAS  # the other worker's cameras are the control
    # A worker held up for two seconds (not yet late): its lag shows, nothing else does.
    with _resumed_at_exit(pid):
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(2)
    await eventually(lambda: _lagging(node, "0"), timeout=5)
    assert {v["state"] for v in _views(node).values()} == {"ok"}
    # The other worker is the control: not lagging as the stopped one is (`_lagging`: a
    # second or more). Its own lag is what the node saw of its reports, a few tenths on a
    # loaded machine whose event loop (the node's, this test's) runs late now and then.
    assert not await _lagging(node, "1")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    states: dict[str, set[tuple[str, bool]]] = {c: set() for c in _views(node)}
    first_analysis: dict[str, dict[str, float]] = {}

    async def back() -> Any:
        for state in node.cameras.cameras.values():  # type: ignore[union-attr]
            v = node.cameras.view(state)  # type: ignore[union-attr]
            states[state.camera.id].add((v["state"], v["stale"]))
            s = state.sample
            if (s is not None and s.at > killed_at and s.analysed_at is not None
                    and s.analysed_at > killed_at and state.camera.id not in first_analysis):
                first_analysis[state.camera.id] = dict(s.measures or {})
        return await _all_ok(node, since=killed_at) and first_analysis.keys() >= mine

    await eventually(back, timeout=30, interval=0.1)
    new_pid = node.cameras.worker_pids()[0]
    assert new_pid is not None and new_pid != pid
    assert _metric(node, "vigie_camera_worker_restarts_total", reason="died") == 1
    assert _metric(node, "vigie_camera_worker_up", worker="0") == 1
    # While their worker was down, its cameras were shown stale, never offline; the others
    # were never stale.
    assert all(("ok", True) in states[c] for c in mine), states
    assert not any(st != "ok" for seen in states.values() for st, _ in seen), states
    assert not any(stale for c in set(states) - mine for _, stale in states[c]), states
    # The restarted worker got each camera's reference back: its first analysis compared
    # the picture with it (learning again takes ten keyframes, ten seconds here).
    assert all("similarity" in first_analysis[c] for c in mine), first_analysis
    assert await _alerts(node) == []
    assert await _transitions(node) == {c: [("unknown", "ok")] for c in states}


async def test_a_silent_worker_is_flagged_its_cameras_not_judged_then_it_is_replaced(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shorter than in production (60 s, 15 s), in that order: unknown, then killed.
    monkeypatch.setattr(_supervisor, "UNKNOWN_AFTER", 6.0)
    monkeypatch.setattr(_workers, "HUNG_AFTER", 10.0)
    assert node.cameras is not None
    pid = node.cameras.worker_pids()[0]
    assert pid is not None
    mine = _cameras_of(node, 0)
    seen: dict[str, set[str]] = {c: set() for c in _views(node)}

    async def watch(until: Any) -> Any:
        for c, v in _views(node).items():
            seen[c].add(v["state"])
        return await until()

    with _resumed_at_exit(pid):
        os.kill(pid, signal.SIGSTOP)  # alive, its pipe open, and silent: a hung worker
        stopped_at = time.time()

        async def flagged() -> Any:
            # Only what concerns the silent worker: on a loaded machine the other one may
            # be late for a moment too (and is then flagged, which is right).
            views = _views(node)
            return (_metric(node, "vigie_camera_worker_up", worker="0") == 0
                    and (_metric(node, "vigie_cameras_stale") or 0) >= len(mine)
                    and all(views[c]["stale"] and views[c]["state"] == "ok" for c in mine))

        await eventually(lambda: watch(flagged), timeout=LATE_AFTER + 3, interval=0.1)

        async def unknown() -> bool:
            views = _views(node)
            return all(views[c]["state"] == "unknown" and views[c]["reasons"] == []
                       for c in mine)

        await eventually(lambda: watch(unknown), timeout=6.0 + 3, interval=0.1)
        assert time.time() - stopped_at >= 6.0 - 1  # counted from the last judgement

        await eventually(lambda: watch(lambda: _all_ok(node, since=stopped_at)),
                         timeout=10.0 + 20, interval=0.1)
    assert node.cameras.worker_pids()[0] not in (None, pid)
    assert _metric(node, "vigie_camera_worker_restarts_total", reason="hung") == 1
    assert _metric(node, "vigie_cameras_stale") == 0
    # Not one camera was judged offline on its worker's silence.
    assert all(states <= {"ok", "unknown"} for states in seen.values()), seen
    assert all(seen[c] == {"ok"} for c in set(seen) - mine), seen
    assert await _alerts(node) == []
    transitions = await _transitions(node)
    assert {c: transitions[c] for c in mine} == {
        c: [("unknown", "ok"), ("ok", "unknown"), ("unknown", "ok")] for c in mine}
    assert {c: transitions[c] for c in set(seen) - mine} == {
        c: [("unknown", "ok")] for c in set(seen) - mine}


async def test_a_stopped_camera_is_offline_within_offline_after_plus_one_second(
    node: Node, rtsp_server: RtspServer
) -> None:
    # One camera of each worker.
    stopped = {"cam-0": "supervision-0", "cam-1": "supervision-1"}
    assert {_views(node)[c]["state"] for c in stopped} == {"ok"}
    started = time.monotonic()
    for mount in stopped.values():
        rtsp_server.fault(mount, "stop")
    offline_after: dict[str, float] = {}
    while len(offline_after) < len(stopped) and time.monotonic() - started < 10:
        views = _views(node)
        for c in stopped:
            if views[c]["state"] == "offline" and c not in offline_after:
                offline_after[c] = time.monotonic() - started
        await asyncio.sleep(0.02)
    for mount in stopped.values():
        rtsp_server.fault(mount, "start")
    # The contract: offline within offline_after + 1 s of the last packet; and not before
    # offline_after (the mount stopped after the command was sent: no earlier packet gap).
    assert offline_after.keys() == stopped.keys(), offline_after
    assert all(OFFLINE_AFTER - 0.3 <= d <= OFFLINE_AFTER + 1 for d in offline_after.values()
               ), offline_after
    assert {c: v["state"] for c, v in _views(node).items() if c not in stopped} == {
        "cam-2": "ok", "cam-3": "ok"}


async def test_camera_alerts_left_open_by_a_previous_run_resolve_when_the_camera_is_fine(
    fresh_dsn: str, rtsp_server: RtspServer, h264_clip: Path
) -> None:
    from datetime import UTC, datetime

    from vigie.alerts import AlertService, Raise
    from vigie.metrics import Metrics
    from vigie.store import Store
    from vigie.store._alerts import AlertOccurrence

    mount = "supervision-carry"
    cameras = {"cam-fine": rtsp_server.add_clip(mount, h264_clip),
               "cam-dead": "rtsp://127.0.0.1:9/nothing"}  # discard port: refused at once
    site = {"id": SITE, "name": "Collège des tests", "uai": "0789997X", "cameras": [
        {"id": cam, "name": cam, "zone": "cour", "url": url, "checks": CHECKS}
        for cam, url in cameras.items()]}
    # The previous run of the node: both cameras offline, alerts open, then it stopped.
    store = await Store.open(fresh_dsn, size=1)
    try:
        await store.migrate()
        before = AlertService(store, Metrics("before"))
        await before.raise_now([Raise(AlertOccurrence(
            site=SITE, source=cam, source_type="camera", kind=kind, severity="major",
            title="Camera offline", at=datetime.now(UTC)))
            for cam, kind in [("cam-fine", "offline"), ("cam-fine", "covered"),
                              ("cam-dead", "offline")]])
    finally:
        await store.close()

    async def alerts(node: Node) -> dict[tuple[str, str], tuple[str, int]]:
        async with node.store.connection() as conn:
            rows = await conn.fetch("SELECT source, kind, state, count FROM alerts")
        return {(r["source"], r["kind"]): (r["state"], r["count"]) for r in rows}

    config = make_config(fresh_dsn, NO_BROKER, sites=[site])
    try:
        async with running_node(config, with_mqtt=False) as node:
            expected = {("cam-fine", "offline"): ("resolved", 1),
                        ("cam-fine", "covered"): ("resolved", 1),
                        ("cam-dead", "offline"): ("open", 1)}

            async def settled() -> Any:
                views = _views(node)
                now = await alerts(node)
                ok = (now == expected and views["cam-fine"]["state"] == "ok"
                      and views["cam-dead"]["state"] == "offline")
                return True if ok else _Wrong({"alerts": now, "fine": views["cam-fine"]["state"],
                                               "dead": views["cam-dead"]["state"]})

            # The dead camera is judged offline once its first connection had its chance.
            await eventually(settled, timeout=OFFLINE_AFTER + 5 + 10)
            transitions = await _transitions(node)
    finally:
        rtsp_server.remove(mount)
    # The fine camera was never shown offline on the strength of an old alert.
    assert transitions == {"cam-fine": [("unknown", "ok")], "cam-dead": [("unknown", "offline")]}


@pytest.mark.parametrize(("cameras", "configured", "cores", "expected"), [
    (0, None, 2, 1),  # a node without cameras still has a pool (of one, never started)
    (1, None, 2, 1),  # never more workers than cameras
    (50, None, 2, 2),  # one per core
    (200, None, 2, 2),  # 100 cameras each: still one per core
    (201, None, 2, 3),  # more would put over 100 cameras in a worker
    (300, None, 2, 3),
    (300, None, 4, 4),
    (100, None, 32, 8),  # at most 8 by cores alone
    (5000, None, 2, 16),  # and 16 by camera count
    (300, 2, 2, 2),  # node.camera_workers wins
    (1, 4, 2, 1),
])
def test_worker_count_grows_with_cameras_beyond_a_core_each(
        cameras: int, configured: int | None, cores: int, expected: int) -> None:
    assert _workers.worker_count(cameras, configured, cores) == expected
