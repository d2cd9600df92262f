"""Audit entries the database could not take, kept on the node's disk until it can.

Every state-changing call and every snapshot view is audited, whatever its outcome: while
PostgreSQL is away the API still serves snapshots and answers writes with 503, and those
must be traced too. An entry that cannot be inserted is appended to a spool of its own
(`Spool`, fsynced), with the time it happened, and written when the database answers, in
one transaction with the spool's mark in `spool_replay`: a replay resumed after a crash
skips what the mark covers, so no entry is written twice. Past `limit` bytes waiting (a
flood of refused requests during a long outage), entries are counted and logged, not kept.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from vigie.errors import StoreError, VigieError
from vigie.spool._log import Spool
from vigie.store import Store

__all__ = ["AuditEntry", "AuditSpool"]

log = logging.getLogger("vigie.spool")

REPLAY_BATCH = 1_000  # entries per transaction
RETRY_EVERY = 1.0  # seconds between looks while entries wait

_INSERT = """
INSERT INTO audit_log (at, actor, action, target, site, remote, outcome, details)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::jsonb[])
"""
_MARK = """
INSERT INTO spool_replay (epoch, node, seq) VALUES ($1, $2, $3)
ON CONFLICT (epoch) DO UPDATE
SET seq = greatest(spool_replay.seq, EXCLUDED.seq), node = EXCLUDED.node, updated_at = now()
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    outcome: str
    target: str | None = None
    site: str | None = None
    remote: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps([self.at, self.actor, self.action, self.outcome, self.target,
                             self.site, self.remote, self.details])

    @classmethod
    def decode(cls, payload: bytes) -> AuditEntry:
        at, actor, action, outcome, target, site, remote, details = orjson.loads(payload)
        return cls(datetime.fromisoformat(at), actor, action, outcome, target, site, remote,
                   details)


class AuditSpool:
    """Open with `AuditSpool.open`; `add` what the database refused, `run` writes it."""

    def __init__(self, spool: Spool, store: Store, node: str, limit: int) -> None:
        self.spool = spool
        self._store = store
        self._node = node
        self._limit = limit
        self.given_up = 0  # entries neither written nor kept (the spool at its limit)
        # The spool is used by one task at a time: `add` (API handlers) and the replay.
        self._using = asyncio.Lock()
        self._waiting = asyncio.Event()
        if spool.pending_records:
            self._waiting.set()

    @classmethod
    async def open(cls, directory: Path, store: Store, node: str,
                   limit: int = 64 * 1024 * 1024) -> AuditSpool:
        return cls(await Spool.open(directory), store, node, limit)

    @property
    def pending(self) -> int:
        return self.spool.pending_records

    async def add(self, entry: AuditEntry) -> bool:
        """Keep an entry until the database takes it; False if it could not be kept."""
        record = entry.encode()
        async with self._using:
            if self.spool.pending_bytes + len(record) > self._limit:
                self.given_up += 1
                log.error("audit entry given up (%s %s by %s): %d bytes wait already",
                          entry.action, entry.target, entry.actor, self.spool.pending_bytes)
                return False
            try:
                await self.spool.append([(record, 1)])
            except OSError as exc:
                self.given_up += 1
                log.error("audit entry given up (%s by %s): cannot append to the spool: %s",
                          entry.action, entry.actor, exc)
                return False
        self._waiting.set()
        return True

    async def run(self) -> None:
        while True:
            await self._waiting.wait()
            try:
                while await self.replay_some():
                    pass
            except VigieError as exc:  # away again, or refused: later
                log.debug("audit entries not written yet: %s", exc)
            if not self.pending:
                self._waiting.clear()
            await asyncio.sleep(RETRY_EVERY)

    async def replay_some(self) -> bool:
        """Write the next entries waiting; True if some were, False if none wait."""
        async with self._using:
            records = await self.spool.read(REPLAY_BATCH)
            if not records:
                return False
            try:
                entries = [AuditEntry.decode(r.payload) for r in records]
            except (ValueError, TypeError) as exc:
                self.spool.rewind()
                raise StoreError(f"unreadable audit spool record: {exc}") from None
            try:
                async with self._store.transaction() as conn:
                    applied = await conn.fetchval(
                        "SELECT seq FROM spool_replay WHERE epoch = $1", self.spool.epoch) or 0
                    todo = [e for r, e in zip(records, entries, strict=True) if r.seq > applied]
                    if todo:
                        await conn.execute(
                            _INSERT, [e.at for e in todo], [e.actor for e in todo],
                            [e.action for e in todo], [e.target for e in todo],
                            [e.site for e in todo], [e.remote for e in todo],
                            [e.outcome for e in todo], [e.details for e in todo])
                    await conn.execute(_MARK, self.spool.epoch, self._node, records[-1].seq)
            except BaseException:
                self.spool.rewind()
                raise
            await self.spool.confirm()
        log.info("audit: %d entr(ies) from the outage written, %d waiting", len(records),
                 self.pending)
        return True

    async def close(self) -> None:
        await self.spool.close()
