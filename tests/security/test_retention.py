"""Retention on a real PostgreSQL with an injected clock: partitions created ahead and
dropped whole, rows of the default partitions moved or purged, dedup intact across
partitions, snapshot rows and files removed together, one node at a time."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import make_config
from vigie.config import Config, parse_config
from vigie.errors import ConfigError
from vigie.events import SensorEvent
from vigie.retention import RETENTION_LOCK, RetentionJob
from vigie.store import Store
from vigie.store._events import insert_events

NO_MQTT = "mqtt://127.0.0.1:1"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def config(dsn: str, **retention: Any) -> Config:
    return make_config(dsn, NO_MQTT, retention=retention)


async def partitions(store: Store, table: str) -> list[str]:
    async with store.connection() as conn:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass ORDER BY 1", table)
    return [r["relname"] for r in rows]


def event(key: str, received_at: datetime, site: str = "clg-pasteur") -> SensorEvent:
    return SensorEvent(site=site, sensor="centrale", kind="intrusion", state="alarm",
                       ts=received_at, received_at=received_at, dedup_key=key)


async def where(store: Store, key: str) -> list[str]:
    """The partition of each stored event of that key."""
    async with store.connection() as conn:
        rows = await conn.fetch(
            "SELECT tableoid::regclass::text AS part FROM events WHERE dedup_key = $1", key)
    return [r["part"] for r in rows]


async def test_partitions_are_created_ahead_and_dropped_whole(store: Store, fresh_dsn: str
                                                              ) -> None:
    clock = Clock(datetime(2027, 3, 15, 10, tzinfo=UTC))
    job = RetentionJob(store, config(fresh_dsn, events="365d", camera_samples="10d",
                                     audit="400d"), clock)
    report = await job.run_once()
    assert report.ran
    events = await partitions(store, "events")
    assert {f"events_p2027_{m:02}" for m in (3, 4, 5, 6)} <= set(events)
    assert "events_p2027_07" not in events
    samples = await partitions(store, "camera_samples")
    assert {f"camera_samples_p2027_03_{d}" for d in range(15, 23)} <= set(samples)
    assert "audit_log_p2027_06" in await partitions(store, "audit_log")

    async with store.transaction() as conn:
        await insert_events(conn, [event("march", clock.now), event("may", datetime(
            2027, 5, 2, tzinfo=UTC))])
        await conn.execute(
            "INSERT INTO camera_samples (site, camera, at, state) VALUES "
            "('clg-jean-moulin', 'entree', $1, 'ok')", clock.now)
    assert await where(store, "march") == ["events_p2027_03"]
    assert await where(store, "may") == ["events_p2027_05"]

    # 365 days later is 2027-04-21: March 2027 has wholly passed them, April not yet.
    clock.now = datetime(2028, 4, 20, tzinfo=UTC)
    report = await job.run_once()
    assert "events_p2027_03" in report.dropped
    assert "events_p2027_04" not in report.dropped
    events = await partitions(store, "events")
    assert "events_p2027_03" not in events and "events_p2027_05" in events
    assert "events_p2028_04" in events and "events_p2028_07" in events
    assert await where(store, "march") == []
    assert await where(store, "may") == ["events_p2027_05"]
    # Samples: 10 days, daily partitions; the one of 2027-03-15 is long gone.
    samples = await partitions(store, "camera_samples")
    assert not [p for p in samples if p.startswith("camera_samples_p2027")]
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM camera_samples") == 0
    # The audit follows the database's clock, not a node's: by it, nothing has expired.
    audit = await partitions(store, "audit_log")
    assert "audit_log_p2026_11" in audit and "audit_log_p2027_03" in audit
    # The purge itself is audited.
    async with store.connection() as conn:
        entry = await conn.fetchrow(
            "SELECT actor, details FROM audit_log WHERE action = 'retention.purge' "
            "ORDER BY at DESC LIMIT 1")
    assert entry["actor"] == "vigie:retention"
    assert "events_p2027_03" in entry["details"]["dropped"]


async def test_rows_of_the_default_partition_move_out_or_expire(store: Store,
                                                                 fresh_dsn: str) -> None:
    # Received at a time no partition covers (a clock far off): kept in the default one.
    old = datetime(2024, 1, 10, tzinfo=UTC)
    async with store.transaction() as conn:
        await insert_events(conn, [event("off-clock", old), event("older", old - timedelta(
            days=400))])
    assert await where(store, "off-clock") == ["events_default"]
    # A node whose clock says January 2024 creates that month, moving the row into it.
    job = RetentionJob(store, config(fresh_dsn), Clock(old + timedelta(days=1)))
    report = await job.run_once()
    assert "events_p2024_01" in report.created
    assert await where(store, "off-clock") == ["events_p2024_01"]
    # The 400-day-old row expired (365 days): deleted from the default partition.
    assert await where(store, "older") == []
    assert report.deleted["events_default"] == 1


async def test_a_redelivered_event_is_stored_once_across_partitions(store: Store) -> None:
    first = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    again = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)  # next month, next partition
    async with store.transaction() as conn:
        assert set(await insert_events(conn, [event("id:x/1", first)])) == {"id:x/1"}
    async with store.transaction() as conn:
        assert await insert_events(conn, [event("id:x/1", again)]) == {}
    assert await where(store, "id:x/1") == ["events_p2026_11"]


async def test_concurrent_writers_of_one_key_store_it_once(store: Store) -> None:
    keys = [f"h:{uuid.uuid4().hex}" for _ in range(200)]
    now = datetime.now(UTC)

    async def write(offset: int) -> dict[str, int]:
        async with store.transaction() as conn:
            return await insert_events(conn, [event(k, now + timedelta(seconds=offset))
                                              for k in keys])

    results = await asyncio.gather(write(0), write(1), write(2))
    # Each key new for exactly one writer.
    assert sorted(k for r in results for k in r) == sorted(keys)
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE dedup_key = ANY($1)",
                                   keys) == len(keys)


async def test_dedup_keys_outlive_the_redelivery_window_only(store: Store,
                                                              fresh_dsn: str) -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    async with store.transaction() as conn:
        await insert_events(conn, [event("id:old", now - timedelta(days=8)),
                                   event("id:recent", now - timedelta(days=6))])
    report = await RetentionJob(store, config(fresh_dsn), Clock(now)).run_once()
    assert report.deleted["event_keys"] == 1
    async with store.connection() as conn:
        left = await conn.fetch("SELECT dedup_key FROM event_keys")
    assert [r["dedup_key"] for r in left] == ["id:recent"]


async def test_snapshot_rows_and_files_go_together(store: Store, fresh_dsn: str) -> None:
    cfg = config(fresh_dsn, snapshots="7d")
    now = datetime.now(UTC)
    data_dir = cfg.node.data_dir
    shots = {"old": now - timedelta(days=8), "recent": now - timedelta(days=6)}
    paths: dict[str, Path] = {}
    async with store.connection() as conn:
        for name, taken in shots.items():
            relative = f"snapshots/clg-jean-moulin/kept-{name}.jpg"
            paths[name] = data_dir / relative
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            paths[name].write_bytes(b"\xff\xd8\xff\xd9")
            await conn.execute(
                "INSERT INTO snapshots (site, camera, kind, taken_at, path, bytes) "
                "VALUES ('clg-jean-moulin', 'entree', 'kept', $1, $2, 4)", taken, relative)
    # A file no row names, older than the retention period (a copy whose row was lost).
    orphan = data_dir / "snapshots" / "clg-pasteur" / "orphan.jpg"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"\xff\xd8\xff\xd9")
    stale = (now - timedelta(days=9)).timestamp()
    os.utime(orphan, (stale, stale))

    report = await RetentionJob(store, cfg, Clock(now)).run_once()
    assert report.deleted["snapshots"] == 1
    assert not paths["old"].exists() and not orphan.exists()
    assert paths["recent"].exists()
    async with store.connection() as conn:
        kept = await conn.fetch("SELECT path FROM snapshots")
    assert [r["path"] for r in kept] == ["snapshots/clg-jean-moulin/kept-recent.jpg"]


async def test_transitions_and_dead_letters_expire(store: Store, fresh_dsn: str) -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    async with store.connection() as conn:
        for days in (5, 15):
            await conn.execute(
                "INSERT INTO camera_transitions (site, camera, at, state) "
                "VALUES ('clg-jean-moulin', 'entree', $1, 'ok')", now - timedelta(days=days))
            await conn.execute(
                "INSERT INTO dead_letters (received_at, topic, reason, detail, payload, "
                "payload_size) VALUES ($1, 't', 'not_json', 'x', '\\x00', 1)",
                now - timedelta(days=days))
    cfg = config(fresh_dsn, camera_samples="10d", dead_letters="10d")
    report = await RetentionJob(store, cfg, Clock(now)).run_once()
    assert report.deleted["camera_transitions"] == 1 and report.deleted["dead_letters"] == 1
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM camera_transitions") == 1
        assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 1


async def test_one_node_at_a_time(store: Store, fresh_dsn: str) -> None:
    """While another node holds the lock, a run leaves the database alone."""
    now = datetime(2031, 6, 1, tzinfo=UTC)
    other = await asyncpg.connect(fresh_dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK)
        report = await RetentionJob(store, config(fresh_dsn), Clock(now)).run_once()
        assert not report.ran and not report.created
        assert "events_p2031_06" not in await partitions(store, "events")
        await other.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
        report = await RetentionJob(store, config(fresh_dsn), Clock(now)).run_once()
        assert report.ran and "events_p2031_06" in report.created
    finally:
        await other.close()


# --- configuration ---------------------------------------------------------------------


def test_image_retention_above_the_legal_maximum_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"retention": {"snapshots": "31d"}})
    assert caught.value.problems == [
        "retention.snapshots: 31 days is above the legal maximum of 30 days for "
        "video-protection images (Code de la sécurité intérieure, art. L252-5)"]
    assert parse_config({"retention": {"snapshots": "30d"}}).retention.snapshots == 30 * 86400
    assert parse_config({}).retention.snapshots == 7 * 86400


@pytest.mark.parametrize(("retention", "problem"), [
    ({"audit": "2d", "snapshots": "7d"},
     "retention: audit must be kept at least as long as snapshots"),
    ({"events": "12h"}, "retention.events: at least 1d: these tables are purged a partition "
                        "at a time"),
    ({"camera_samples": "never"}, "retention.camera_samples: expected a duration such as 5s, "
                                  "500ms, 2m"),
    ({"images": "7d"}, "retention.images: unknown key"),
])
def test_bad_retention_is_reported_by_path(retention: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"retention": retention})
    assert caught.value.problems == [problem]


async def test_audit_partitions_expire_by_the_database_clock(store: Store, fresh_dsn: str
                                                             ) -> None:
    cfg = config(fresh_dsn, audit="400d")
    # A node whose clock was in early 2025 made that month's partition.
    await RetentionJob(store, cfg, Clock(datetime(2025, 1, 15, tzinfo=UTC))).run_once()
    assert "audit_log_p2025_01" in await partitions(store, "audit_log")
    async with store.connection() as conn:
        db_now = await conn.fetchval("SELECT now()")
    report = await RetentionJob(store, cfg, Clock(db_now)).run_once()
    assert "audit_log_p2025_01" in report.dropped
    kept = await partitions(store, "audit_log")
    assert f"audit_log_p{db_now:%Y_%m}" in kept
    assert all(name >= f"audit_log_p{db_now - timedelta(days=400):%Y_%m}" for name in kept)


async def test_the_retention_command_runs_one_pass(store: Store, fresh_dsn: str,
                                                    tmp_path: Path) -> None:
    import subprocess
    import sys

    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, detail, payload, "
            "payload_size) VALUES (now() - interval '40 days', 't', 'not_json', 'x', '', 0)")
    path = tmp_path / "vigie.yaml"
    path.write_text(f"database: {{dsn: '{fresh_dsn}'}}\nnode: {{data_dir: '{tmp_path}'}}\n")
    run = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "vigie.cli", "retention", "--config", str(path)],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "rows deleted: dead_letters 1" in run.stdout
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
