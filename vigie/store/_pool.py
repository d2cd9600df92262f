"""The connection pool, and the translation of driver errors into vigie's own.

When a new connection cannot be made, the database is marked away: for a short while every
caller fails at once with StoreUnavailable (an API request answers 503 now, not after a
connect timeout; a writer spools at once), then the next caller tries again. The wait grows
(with jitter: the nodes of a cluster must not come back all together) while it stays away.
A connection that dies mid-query is not enough to mark it away: the pool reconnects.

A node may start while PostgreSQL is away (`Store.open_later`): the store then has no
connection and stays closed to every caller (StoreUnavailable, the reason being `pending`)
until the node has checked the schema and calls `opened()`; only that start-up work gets a
connection before (`connection(before_ready=True)`). Nothing is written to a schema that
may not be migrated yet.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from vigie.errors import StoreError, StoreUnavailable
from vigie.secrets import redact_text
from vigie.store._migrate import MigrationProgress, apply_migrations

__all__ = ["Store"]

log = logging.getLogger("vigie.store")

_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # The protocol confused by a server going away mid-query (PostgreSQL stopped under load).
    asyncpg.exceptions.InternalClientError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python values, through orjson (fast, and strict about NaN).
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


RETRY_MIN, RETRY_MAX = 0.25, 5.0  # seconds between attempts while the database is away


class Store:
    """PostgreSQL access for one node: a pool, and the transaction helper."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.unavailable = ""  # why the database is away; empty while it answers
        self.unavailable_since: float | None = None  # time.monotonic()
        self._retry_at = 0.0
        self._delay = RETRY_MIN
        # Why the store is not open to callers yet although the database may answer (a node
        # started while it was away: migrations not applied yet); empty once `opened()`.
        self.pending = ""

    @property
    def available(self) -> bool:
        return not self.unavailable and not self.pending

    @property
    def why_unavailable(self) -> str:
        """For /readyz: empty while available."""
        if self.unavailable:
            return f"database unreachable: {self.unavailable}"
        return f"database not ready: {self.pending}" if self.pending else ""

    def opened(self) -> None:
        """The schema is checked (a node that started while the database was away)."""
        if self.pending:
            log.info("database ready: open to every part of the node")
        self.pending = ""

    def mark_away(self, reason: str) -> None:
        """The database did not answer in time (a ping): fail fast until the next try."""
        self._away(reason)

    def _away(self, reason: str) -> None:
        now = time.monotonic()
        if not self.unavailable:
            log.warning("database unreachable: %s", reason)
            self.unavailable_since = now
            self._delay = RETRY_MIN
        else:
            self._delay = min(self._delay * 2, RETRY_MAX)
        self.unavailable = reason
        self._retry_at = now + self._delay * random.uniform(0.5, 1.5)

    def _back(self) -> None:
        if self.unavailable:
            since = self.unavailable_since or time.monotonic()
            log.info("database reachable again after %.1fs", time.monotonic() - since)
        self.unavailable = ""
        self.unavailable_since = None

    @classmethod
    async def open(cls, dsn: str, size: int = 10, timeout: float = 5.0) -> Store:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=size, timeout=timeout, command_timeout=30,
                init=_init_connection,
                # Timestamps PostgreSQL writes as JSON come out in UTC, like Python's.
                server_settings={"timezone": "UTC"},
            )
        except _UNAVAILABLE as exc:
            reason = redact_text(str(exc))
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {reason}") from None
        except asyncpg.PostgresError as exc:
            reason = redact_text(str(exc))
            raise StoreError(f"PostgreSQL refused the connection: {reason}") from None
        return cls(pool)

    @classmethod
    async def open_later(cls, dsn: str, size: int = 10, timeout: float = 5.0,
                         reason: str = "not reached since the node started") -> Store:
        """A store whose database cannot be reached now: the pool connects on demand
        (min_size 0: creating it connects nothing), and the store stays closed to callers
        until `opened()`."""
        pool = await asyncpg.create_pool(
            dsn, min_size=0, max_size=size, timeout=timeout, command_timeout=30,
            init=_init_connection, server_settings={"timezone": "UTC"})
        store = cls(pool)
        store.pending = "schema not checked yet (started while it was away)"
        store._away(reason)
        return store

    async def close(self, timeout: float = 1.0) -> None:
        """Close the pool; connections still busy after `timeout` are cut (shutdown budget)."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except TimeoutError:
            log.warning("database connections still busy after %.1fs: closed", timeout)
            self.pool.terminate()

    async def migrate(self, on_progress: MigrationProgress | None = None) -> int:
        """Apply missing migrations; return how many were applied."""
        async with self.connection(before_ready=True) as conn:
            return len(await apply_migrations(conn, on_progress))

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def probe(self) -> None:
        """Try the database now, even while it is marked away (the reconnect loop)."""
        self._retry_at = 0.0
        await self.ping()

    @asynccontextmanager
    async def connection(self, *, before_ready: bool = False) -> AsyncIterator[Any]:
        """A pooled connection; driver errors leave as StoreError/StoreUnavailable.
        `before_ready`: the node's start-up work (migrations, config sync), allowed before
        `opened()` and tried whenever asked (it keeps its own pace)."""
        if self.pending and not before_ready:
            raise StoreUnavailable(f"database unavailable: {self.pending}")
        if self.unavailable and time.monotonic() < self._retry_at and not before_ready:
            raise StoreUnavailable(f"database unavailable: {self.unavailable}")
        try:
            conn = await self.pool.acquire()
        except _UNAVAILABLE as exc:
            self._away(redact_text(str(exc)) or type(exc).__name__)
            raise StoreUnavailable(f"database unavailable: {self.unavailable}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"database error: {redact_text(str(exc))}") from exc
        self._back()
        try:
            yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unavailable: {redact_text(str(exc))}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"database error: {redact_text(str(exc))}") from exc
        finally:
            await _release(self.pool, conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.connection() as conn, conn.transaction():
            yield conn


async def _release(pool: asyncpg.Pool, conn: Any) -> None:
    """Back to the pool; a connection that died is closed there, and the release of a
    connection whose server is gone must not replace the caller's own error."""
    try:
        await pool.release(conn)
    except _UNAVAILABLE as exc:
        # A server shutting down can leave the protocol mid-operation: asyncpg then
        # refuses the reset (InternalClientError). The connection is dropped either way.
        log.debug("releasing a dead connection: %r", exc)
