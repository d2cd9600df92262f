"""The writer replays its spool into a real PostgreSQL database exactly once.

The spool's records are checked against the database's mark (`spool_replay`), moved in the
transaction that applies them: a replay repeated from an older copy of the spool (a crash
after the commit, before the records were removed from disk) applies nothing twice, not
even what has no key of its own (dead letters, device statuses whose alerts count every
repeat). A batch whose COMMIT was lost with its connection is checked by its transaction
id (`pg_xact_status`) before it is applied again.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import eventually, make_config
from vigie.alerts import AlertService, RuleBook, Schedule
from vigie.config import Config
from vigie.events import DeviceStatus, SensorEvent
from vigie.metrics import Metrics
from vigie.sensors import IngestWriter, Received
from vigie.sensors._batch import Batch
from vigie.sensors._inbox import Inbox
from vigie.spool import Spool
from vigie.store import Store
from vigie.store._events import DeadLetter, insert_dead_letters

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
SITE = "clg-pasteur"


def letter(topic: str) -> DeadLetter:
    return DeadLetter(T0, topic, "unknown_sensor", "no such sensor", b"{}")


def keyless(n: int) -> SensorEvent:
    # A door report without id or timestamp: its key is its reception, kept by the spool.
    return SensorEvent(site=SITE, sensor="porte-gymnase", kind="door",
                       state="closed" if n % 2 else "open", ts=T0 + timedelta(seconds=n),
                       received_at=T0 + timedelta(seconds=n), dedup_key=f"r:test-{n}",
                       data={"n": n})


async def replay(store: Store, config: Config, spool: Spool) -> IngestWriter:
    """A writer on that spool, run until the spool is empty, then stopped."""
    rules = RuleBook(config, Schedule(config.sites).is_open)
    metrics = Metrics("test")
    acked: list[Received] = []
    inbox: Inbox[Received] = Inbox(100)
    writer = IngestWriter(store, inbox, acked.extend, rules, AlertService(store, metrics),
                          metrics, 50, spool=spool, spool_limit=2**30, node="test",
                          replay_batch=7)
    running = asyncio.create_task(writer.run())

    async def drained() -> bool:
        return writer.spool_pending == 0

    try:
        await eventually(drained, timeout=30)
    finally:
        inbox.close()
        await asyncio.wait_for(running, 10)
    return writer


async def count(store: Store, sql: str) -> Any:
    async with store.connection() as conn:
        return await conn.fetchval(sql)


async def test_a_replay_repeated_after_a_crash_applies_nothing_twice(
    store: Store, fresh_dsn: str, tmp_path: Path
) -> None:
    config = make_config(fresh_dsn, "mqtt://127.0.0.1:1")
    spool = await Spool.open(tmp_path / "spool")
    for b in range(20):
        batch = Batch.of([Received(i, 1, [keyless(b * 10 + i)]) for i in range(10)])
        batch.dead.append(letter(f"vigie/{SITE}/inconnu-{b}/event"))
        batch.statuses.append(DeviceStatus(SITE, "centrale", False, T0))
        await spool.append([(batch.encode(), 12)])
    await spool.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(tmp_path / "spool", snapshot)

    spool = await Spool.open(tmp_path / "spool")
    first = await replay(store, config, spool)
    await spool.close()
    assert first.replayed == 20 * 12
    # The crash: the records were applied, but the disk still has them all.
    shutil.rmtree(tmp_path / "spool")
    shutil.copytree(snapshot, tmp_path / "spool")
    spool = await Spool.open(tmp_path / "spool")
    assert spool.pending_records == 20
    await replay(store, config, spool)
    await spool.close()

    assert await count(store, "SELECT count(*) FROM events") == 200
    assert await count(store, "SELECT count(DISTINCT data->>'n') FROM events") == 200
    assert await count(store, "SELECT count(*) FROM dead_letters") == 20
    # Each offline status raised the device_offline alert once more: 20, not 40.
    assert await count(store, "SELECT count FROM alerts WHERE kind = 'device_offline'") == 20
    assert await count(store, "SELECT seq FROM spool_replay") == 20


async def test_a_batch_whose_commit_was_lost_is_checked_before_it_is_applied(
    store: Store, fresh_dsn: str, tmp_path: Path
) -> None:
    config = make_config(fresh_dsn, "mqtt://127.0.0.1:1")

    async def attempt(topic: str, commit: bool) -> int:
        """A write as the writer makes it, whose client never heard how it ended."""
        async with store.connection() as conn:
            tx = conn.transaction()
            await tx.start()
            xid = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
            await insert_dead_letters(conn, [letter(topic)])
            await (tx.commit() if commit else tx.rollback())
        return xid

    committed = Batch(dead=[letter("committed")], messages=1,
                      xid=await attempt("committed", commit=True))
    aborted = Batch(dead=[letter("aborted")], messages=1,
                    xid=await attempt("aborted", commit=False))
    spool = await Spool.open(tmp_path / "spool")
    await spool.append([(committed.encode(), 1), (aborted.encode(), 1)])
    await replay(store, config, spool)
    await spool.close()
    async with store.connection() as conn:
        topics = sorted(r["topic"] for r in await conn.fetch("SELECT topic FROM dead_letters"))
    assert topics == ["aborted", "committed"]
