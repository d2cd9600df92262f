"""Audit entries kept while the database is away are written once, with their own time.

On a real PostgreSQL: the entries go through the spool's replay mark (`spool_replay`), so a
replay repeated from an older copy of the spool (a crash after the commit, before the
records left the disk) writes nothing twice; past its limit the spool keeps nothing more
and says so.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vigie.spool import AuditEntry, AuditSpool
from vigie.store import Store

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def entry(n: int) -> AuditEntry:
    return AuditEntry(at=T0 + timedelta(seconds=n), actor="operateur-1",
                      action="get_camera_snapshot", outcome="200",
                      target=f"/api/v1/cameras/entree-{n}/snapshot", site="clg-pasteur",
                      remote="10.0.0.7", details={"role": "operator"})


async def rows(store: Store) -> list[tuple[datetime, str, str | None, str]]:
    async with store.connection() as conn:
        found = await conn.fetch("SELECT at, actor, target, outcome FROM audit_log ORDER BY at")
    return [(r["at"], r["actor"], r["target"], r["outcome"]) for r in found]


async def test_entries_are_written_once_with_their_time_even_replayed_again(
    store: Store, tmp_path: Path,
) -> None:
    audit = await AuditSpool.open(tmp_path / "audit", store, "node-a")
    for n in range(5):
        assert await audit.add(entry(n))
    await audit.close()
    shutil.copytree(tmp_path / "audit", tmp_path / "copy")  # the disk before the replay

    audit = await AuditSpool.open(tmp_path / "audit", store, "node-a")
    assert audit.pending == 5
    assert await audit.replay_some()
    assert not await audit.replay_some() and audit.pending == 0
    await audit.close()
    written = await rows(store)
    assert [r[0] for r in written] == [T0 + timedelta(seconds=n) for n in range(5)]
    assert written[0][1:] == ("operateur-1", "/api/v1/cameras/entree-0/snapshot", "200")

    # A crash after the commit, before the spool forgot them: nothing written twice.
    again = await AuditSpool.open(tmp_path / "copy", store, "node-a")
    assert again.pending == 5
    assert await again.replay_some()
    await again.close()
    assert await rows(store) == written


async def test_a_full_spool_gives_entries_up_and_counts_them(
    store: Store, tmp_path: Path,
) -> None:
    audit = await AuditSpool.open(tmp_path / "audit", store, "node-a", limit=400)
    kept = [await audit.add(entry(n)) for n in range(5)]
    assert kept[0] and not kept[-1]
    assert audit.given_up == kept.count(False) > 0
    assert audit.pending == kept.count(True)
    await audit.close()
