"""One node at a time: a job run only by the holder of a PostgreSQL advisory lock.

The lock belongs to the session of a connection kept for it. A node that dies closes its
socket and PostgreSQL releases the lock at once; a node cut off by the network is dropped
by the server's TCP keepalives (set short on that session), and stops the job itself when
its own checks of the connection fail. Another node then takes the lock and the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from vigie.cluster._leases import DB_ERRORS
from vigie.secrets import redact_text

__all__ = ["HEARTBEAT_LOCK", "MQTT_LOCK", "Leadership"]

log = logging.getLogger("vigie.cluster")

# Advisory lock keys: any constants, the same on every node ("vigiem", "vigieh").
MQTT_LOCK = 0x76696769656D
HEARTBEAT_LOCK = 0x766967696568

Job = Callable[[], Coroutine[Any, Any, None]]


class Leadership:
    def __init__(self, dsn: str, key: int, what: str, *, interval: float = 1.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._dsn = dsn
        self._key = key
        self.what = what
        self._interval = interval
        self._on_change = on_change
        self.leading = False

    async def run(self, job: Job) -> None:
        """Run `job` while this node holds the lock, and take it whenever it is free, until
        cancelled. The job is cancelled when the lock can no longer be proven."""
        while True:
            conn: Any = None
            try:
                conn = await self._connect()
                await self._elected(conn)
                await self._lead(conn, job)
            except DB_ERRORS as exc:
                log.debug("%s: election connection failed: %s", self.what,
                          redact_text(str(exc)) or type(exc).__name__)
            finally:
                self._set(False)
                if conn is not None:
                    with contextlib.suppress(*DB_ERRORS):
                        await asyncio.wait_for(conn.close(), 1.0)
                    if not conn.is_closed():
                        conn.terminate()
            await asyncio.sleep(self._interval * random.uniform(0.5, 1.5))

    async def _elected(self, conn: Any) -> None:
        """Return once the lock is ours (PostgreSQL has no wait with a timeout for it that
        would also tell a dead connection from a taken lock: ask again every interval)."""
        while True:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
                return
            await asyncio.sleep(self._interval * random.uniform(0.8, 1.2))

    async def _lead(self, conn: Any, job: Job) -> None:
        log.info("%s: this node was elected", self.what)
        self._set(True)
        task = asyncio.create_task(job(), name=f"vigie:elected:{self.what}")
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self._interval)
                if not task.done():
                    try:
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), self._interval * 2)
                    except DB_ERRORS:
                        log.warning("%s: lost the database connection, and with it the "
                                    "lock: stepping down", self.what)
                        raise
            task.result()  # a job that ends on its own: its error, or a clean end
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _connect(self) -> Any:
        return await asyncpg.connect(self._dsn, timeout=5.0, server_settings={
            "application_name": f"vigie-election {self.what}"[:63],
            # The server drops the session, and so the lock, ~10 s after the network dies.
            "tcp_keepalives_idle": "4", "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3", "tcp_user_timeout": "10000",
        })

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            if self._on_change is not None:
                self._on_change(leading)
