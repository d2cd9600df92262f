"""The connection pool, and the translation of driver errors into vigie's own."""

from __future__ import annotations

import asyncio
import logging
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


class Store:
    """PostgreSQL access for one node: a pool, and the transaction helper."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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

    async def close(self) -> None:
        await self.pool.close()

    async def migrate(self, on_progress: MigrationProgress | None = None) -> int:
        """Apply missing migrations; return how many were applied."""
        async with self.connection() as conn:
            return len(await apply_migrations(conn, on_progress))

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; driver errors leave as StoreError/StoreUnavailable."""
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unavailable: {redact_text(str(exc))}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"database error: {redact_text(str(exc))}") from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.connection() as conn, conn.transaction():
            yield conn
