"""The retention job: partitions made ahead and dropped whole, old rows and images purged.

The database part runs on one node at a time, cluster-wide, under an advisory lock; the
others skip it for that round. Snapshot files live on each node's own disk, so every node
removes its own expired files (by age), besides the files of the rows the job deletes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vigie.config import Config
from vigie.errors import VigieError
from vigie.store import Store
from vigie.store import _audit as audit
from vigie.store import _retention as q

__all__ = ["RETENTION_LOCK", "RetentionJob", "RetentionReport"]

log = logging.getLogger("vigie.retention")

# Distinct from the migration lock; the same on every node: "vigieret" in ASCII.
RETENTION_LOCK = 0x7669676965726574
# How long a dedup key is kept: a message is redelivered by the broker within its session
# expiry, or replayed from a node's spool soon after the database returns.
MIN_KEY_WINDOW = timedelta(days=7)


@dataclass
class RetentionReport:
    """What one run did (empty when another node held the lock)."""

    ran: bool = False
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)
    files: int = 0

    @property
    def purged(self) -> bool:
        return bool(self.dropped or self.files or any(self.deleted.values()))


class RetentionJob:
    def __init__(self, store: Store, config: Config, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._data_dir = config.node.data_dir

    async def run(self) -> None:
        """Once at start (partitions for now and ahead), then every `retention.every`."""
        while True:
            try:
                report = await self.run_once()
                if report.purged or report.created:
                    log.info("retention: %d partition(s) created, %d dropped, rows deleted %s, "
                             "%d snapshot file(s) removed", len(report.created),
                             len(report.dropped), report.deleted, report.files)
            except (VigieError, OSError) as exc:
                log.warning("retention: run failed, retrying later: %s", exc)
            await asyncio.sleep(self._config.retention.every)

    async def run_once(self) -> RetentionReport:
        now = self._clock()
        report = RetentionReport()
        report.files += await asyncio.to_thread(self._sweep_files, now)
        async with self._store.connection() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK):
                return report  # another node is at it
            try:
                await self._database(conn, now, report)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
            if report.purged:
                await audit.record(conn, actor="vigie:retention", action="retention.purge",
                                   outcome="ok", details={
                                       "dropped": report.dropped, "deleted": report.deleted,
                                       "files": report.files})
        return report

    async def _database(self, conn: Any, now: datetime, report: RetentionReport) -> None:
        report.ran = True
        keep = self._config.retention
        ages = {"events": keep.events, "camera_samples": keep.camera_samples,
                "audit_log": keep.audit}
        # Audit rows are stamped by the database's clock: their partitions follow it too, and
        # the audit is never purged on the word of one node's clock alone.
        db_now: datetime = await conn.fetchval("SELECT now()")
        for name, spec in q.PARTITIONED.items():
            age = timedelta(seconds=ages[name])
            cutoff = now - age
            report.created += await q.ensure_partitions(conn, spec, now)
            if name == "audit_log":
                report.created += await q.ensure_partitions(conn, spec, db_now)
                cutoff = min(cutoff, db_now - age)
            report.dropped += await q.drop_partitions_before(conn, spec, cutoff)
            if spec.has_default:
                report.deleted[f"{name}_default"], _ = await q.delete_before(
                    conn, f"{name}_default", spec.column, cutoff)
        key_window = max(MIN_KEY_WINDOW, timedelta(seconds=2 * self._config.mqtt.session_expiry))
        plain = {
            "event_keys": ("received_at", key_window),
            "camera_transitions": ("at", timedelta(seconds=keep.camera_samples)),
            "dead_letters": ("received_at", timedelta(seconds=keep.dead_letters)),
        }
        for table, (column, age) in plain.items():
            report.deleted[table], _ = await q.delete_before(conn, table, column, now - age)
        count, paths = await q.delete_before(conn, "snapshots", "taken_at",
                                             now - timedelta(seconds=keep.snapshots), "path")
        report.deleted["snapshots"] = count
        report.files += await asyncio.to_thread(self._remove, paths)

    def _remove(self, relative_paths: list[str]) -> int:
        """Remove the files of deleted snapshot rows that are on this node's disk."""
        removed = 0
        base = self._data_dir.resolve()
        for relative in relative_paths:
            path = (base / relative).resolve()
            if not path.is_relative_to(base):
                continue  # a row never points outside the data dir; if one did, leave it
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass  # on another node's disk, or swept already
        return removed

    def _sweep_files(self, now: datetime) -> int:
        """Remove this node's snapshot files older than the retention period, whether or not
        a row still names them (a copy whose row was never written, a camera removed)."""
        root = self._data_dir / "snapshots"
        if not root.is_dir():
            return 0
        cutoff = (now - timedelta(seconds=self._config.retention.snapshots)).timestamp()
        removed = 0
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory) / name
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed
