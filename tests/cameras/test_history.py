"""Camera history on its way to PostgreSQL: batches, the database going away (connections
refused for real), samples bounded, transitions never lost, the spool across a restart."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import eventually, make_config
from tests.pg import PG_ADMIN_DSN
from vigie.alerts import AlertService, Raise, Resolve
from vigie.alerts._storms import StormGuard
from vigie.cameras._history import CameraHistory, SampleRow
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store._alerts import AlertOccurrence
from vigie.store._cameras import Transition

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
SITE = "clg-test-history"


def transition(i: int, camera: str = "cam-a") -> Transition:
    offline = i % 2 == 1
    return Transition(SITE, camera, T0 + timedelta(seconds=i), "offline" if offline else "ok",
                      ("offline",) if offline else (), "ok" if offline else "offline",
                      {"i": i, "measures": {"luma_mean": 100.5}})


def sample(i: int, camera: str = "cam-a") -> SampleRow:
    return (SITE, camera, T0 + timedelta(seconds=i), "degraded", ["black", "frozen"], 9.5,
            512_000.0, {"luma_mean": 12.0} if i % 2 else None)


def occurrence(kind: str) -> AlertOccurrence:
    return AlertOccurrence(site=SITE, source="cam-a", source_type="camera", kind=kind,
                           severity="major", title=f"Camera {kind}", at=T0, details={})


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("test")


def make_history(store: Store, metrics: Metrics, data_dir: Path, **bounds: int
                 ) -> CameraHistory:
    return CameraHistory(store, AlertService(store, metrics), metrics, data_dir, **bounds)


@asynccontextmanager
async def database_away(dsn: str) -> AsyncIterator[None]:
    """PostgreSQL refuses the database's connections and closes those it had."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = $1", name)
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def rows(store: Store, sql: str) -> list[Any]:
    async with store.connection() as conn:
        return list(await conn.fetch(sql))


async def test_one_round_writes_every_kind_in_batches(store: Store, metrics: Metrics,
                                                      tmp_path: Path) -> None:
    history = make_history(store, metrics, tmp_path)
    for i in range(600):
        history.transition(transition(i, camera=f"cam-{i % 30}"))
        history.sample(sample(i, camera=f"cam-{i % 30}"))
    for i in range(90):  # three snapshots per camera: only the newest is a row
        history.snapshot((SITE, f"cam-{i % 30}", T0 + timedelta(seconds=i), f"s/{i}.jpg", i))
    history.reference(SITE, "cam-a", T0, b"learned")
    history.reference(SITE, "cam-b", T0, b"old")
    history.reference(SITE, "cam-b", T0, None)  # relearn: the newest wins
    history.decisions([Raise(occurrence("offline")), Raise(occurrence("frozen")),
                       Resolve(f"{SITE}/cam-a/offline", T0, "camera recovered")], None)

    await history.write_round()  # one round, however many of each

    assert history.pending() == dict.fromkeys(history.pending(), 0)
    written = await rows(store, "SELECT camera, at, state, reasons, previous, details "
                                "FROM camera_transitions ORDER BY id")
    assert len(written) == 600
    assert [(r["state"], r["reasons"], r["previous"], r["details"]["i"]) for r in written[:2]] \
        == [("ok", [], "offline", 0), ("offline", ["offline"], "ok", 1)]
    samples = await rows(store, "SELECT reasons, fps, measures FROM camera_samples ORDER BY at")
    assert len(samples) == 600
    assert (samples[1]["reasons"], samples[1]["fps"], samples[1]["measures"]) == (
        ["black", "frozen"], 9.5, {"luma_mean": 12.0})
    snapshots = await rows(store, "SELECT camera, path FROM snapshots WHERE kind = 'latest'")
    assert len(snapshots) == 30
    assert {r["path"] for r in snapshots} == {f"s/{i}.jpg" for i in range(60, 90)}
    references = await rows(store, "SELECT camera, data FROM camera_references")
    assert [(r["camera"], bytes(r["data"])) for r in references] == [("cam-a", b"learned")]
    alerts = await rows(store, "SELECT kind, state FROM alerts ORDER BY kind")
    assert [(r["kind"], r["state"]) for r in alerts] == [("frozen", "open"),
                                                        ("offline", "resolved")]


async def test_while_the_database_is_away_samples_are_bounded_and_no_transition_is_lost(
    store: Store, fresh_dsn: str, metrics: Metrics, tmp_path: Path
) -> None:
    history = make_history(store, metrics, tmp_path, max_samples=50, max_transitions=20)
    writer = asyncio.create_task(history.run())
    try:
        async with database_away(fresh_dsn):
            for i in range(100):
                history.transition(transition(i))
            for i in range(200):
                history.sample(sample(i))
            await eventually(lambda: _failing(metrics), timeout=10)
            # Transitions wait, all of them on disk once a round has failed (a kill loses
            # none); samples beyond 50 go.
            assert history.pending()["transition"] == 100
            assert history.pending()["sample"] == 50
            assert metric(metrics, "vigie_camera_history_dropped_total", kind="sample") == 150
            spool = tmp_path / "spool" / "camera-transitions.jsonl"
            assert len(spool.read_text().splitlines()) == 100
            await asyncio.sleep(1)  # a few more failed rounds change none of it
            assert history.pending()["transition"] == 100
        # Back: every transition is written, in order, and the spool is gone.
        await eventually(lambda: _all_written(history), timeout=15)
        written = await rows(store, "SELECT details FROM camera_transitions ORDER BY id")
        assert [r["details"]["i"] for r in written] == list(range(100))
        samples = await rows(store, "SELECT at FROM camera_samples ORDER BY at")
        assert [r["at"] for r in samples] == [T0 + timedelta(seconds=i)
                                              for i in range(150, 200)]
        assert not spool.exists()
        assert metric(metrics, "vigie_camera_history_queue", kind="transition") == 0
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _failing(metrics: Metrics) -> bool:
    return metric(metrics, "vigie_db_errors_total", operation="camera_history") > 0


async def _all_written(history: CameraHistory) -> bool:
    return not any(history.pending().values())


async def test_transitions_not_written_at_a_stop_are_written_at_the_next_start(
    store: Store, fresh_dsn: str, metrics: Metrics, tmp_path: Path
) -> None:
    history = make_history(store, metrics, tmp_path, max_transitions=20)
    async with database_away(fresh_dsn):
        for i in range(30):  # 20 in memory, 10 in the spool
            history.transition(transition(i))
        for i in range(5):
            history.sample(sample(i))
        assert not await history.close(budget=1.0)
    spool = tmp_path / "spool" / "camera-transitions.jsonl"
    assert len(spool.read_text().splitlines()) == 30  # memory first, then the spool's own
    assert metric(metrics, "vigie_camera_history_dropped_total", kind="sample") == 5

    again = make_history(store, metrics, tmp_path, max_transitions=20)  # the next start
    assert again.pending()["transition"] == 30
    again.transition(transition(30))  # judged after the start: after the spooled ones
    assert await again.flush(budget=10)
    written = await rows(store, "SELECT details FROM camera_transitions ORDER BY id")
    assert [r["details"]["i"] for r in written] == list(range(31))
    assert not spool.exists()


async def test_a_node_killed_with_the_database_away_loses_no_transition_nor_alert(
    store: Store, fresh_dsn: str, metrics: Metrics, tmp_path: Path
) -> None:
    history = make_history(store, metrics, tmp_path)
    writer = asyncio.create_task(history.run())
    kept = tmp_path / "spool" / "camera-decisions.jsonl"
    async with database_away(fresh_dsn):
        history.transition(transition(1))
        history.decisions([Raise(occurrence("offline"))], None)
        await eventually(lambda: _failing(metrics), timeout=10)
        # What comes once a round failed goes straight to disk too.
        history.transition(transition(2))
        frozen = Raise(dataclasses.replace(occurrence("frozen"), at=T0 + timedelta(seconds=2)))
        history.decisions([frozen], tmp_path / "latest.jpg")
        assert len(kept.read_text().splitlines()) == 2
        writer.cancel()  # killed: no flush, no stop
        await asyncio.gather(writer, return_exceptions=True)

    again = make_history(store, Metrics("test"), tmp_path)  # the next start
    assert again.pending()["transition"] == 2 and again.pending()["decision"] == 2
    assert await again.flush(budget=10)
    written = await rows(store, "SELECT at, state FROM camera_transitions ORDER BY at")
    assert [(r["at"], r["state"]) for r in written] == [(T0 + timedelta(seconds=1), "offline"),
                                                        (T0 + timedelta(seconds=2), "ok")]
    alerts = await rows(store, "SELECT kind, opened_at, count FROM alerts ORDER BY kind")
    assert [(a["kind"], a["opened_at"], a["count"]) for a in alerts] == [
        ("frozen", T0 + timedelta(seconds=2), 1), ("offline", T0, 1)]
    assert not kept.exists() and not (tmp_path / "spool" / "camera-transitions.jsonl").exists()


async def test_a_flush_during_the_background_writes_writes_each_row_once(
    store: Store, metrics: Metrics, tmp_path: Path
) -> None:
    history = make_history(store, metrics, tmp_path)
    writer = asyncio.create_task(history.run())
    try:
        for burst in range(20):
            for i in range(burst * 50, burst * 50 + 50):
                history.transition(transition(i))
            await asyncio.gather(history.flush(), history.flush(), asyncio.sleep(0))
        assert await history.flush()
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    written = await rows(store, "SELECT details FROM camera_transitions ORDER BY id")
    assert [r["details"]["i"] for r in written] == list(range(1000))


async def test_an_offline_alert_held_for_the_storm_window_opens_with_the_cameras_picture(
    store: Store, fresh_dsn: str, metrics: Metrics, tmp_path: Path
) -> None:
    # A site that can make a storm: its camera-offline raises wait up to storm.window for
    # the rest of its cameras (StormGuard), then the guard opens them. The frame handed
    # with the raise must still go to the alert (it went only to alerts opened in the call).
    config = make_config(fresh_dsn, "mqtt://127.0.0.1:1", sites=[{
        "id": SITE, "name": "Collège", "uai": "0789997X",
        "cameras": [{"id": f"cam-{c}", "url": f"rtsp://127.0.0.1:1/{c}"} for c in "abc"]}])
    alerts = AlertService(store, metrics)
    alerts.storms = StormGuard(config, metrics, lambda: T0)
    history = CameraHistory(store, alerts, metrics, tmp_path)
    frame = tmp_path / "snapshots" / SITE / "cam-a.jpg"
    frame.parent.mkdir(parents=True)
    frame.write_bytes(b"\xff\xd8 the last frame before the cut")

    history.decisions([Raise(occurrence("offline"))], frame)
    await history.write_round()
    assert await rows(store, "SELECT id FROM alerts") == []  # held: not raised yet
    assert alerts.storms.holding == 1

    await alerts.storms.flush(lambda due: alerts.raise_now(due, hold=False), everything=True)
    await history.write_round()
    [alert] = await rows(store, "SELECT kind, state, snapshots FROM alerts")
    assert (alert["kind"], alert["state"]) == ("offline", "open")
    [picture] = alert["snapshots"]
    assert picture["camera"] == "cam-a"
    [(kept,)] = await rows(store, "SELECT path FROM snapshots WHERE kind <> 'latest'")
    assert (tmp_path / kept).read_bytes() == frame.read_bytes()
    assert history.pending() == dict.fromkeys(history.pending(), 0)
