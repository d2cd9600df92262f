"""Connections of their own, outside the pool (LISTEN, a notifier's advisory lock): what
says such a connection is lost, and closing one without waiting on a server gone away."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

__all__ = ["DRIVER_ERRORS", "close_quietly"]

# InternalClientError: asyncpg's protocol confused by a server going away mid-query (seen
# when PostgreSQL is stopped under load): a lost connection like the others.
DRIVER_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                 asyncpg.exceptions.InternalClientError)


async def close_quietly(conn: Any, timeout: float = 2.0) -> None:
    """Close politely for `timeout` seconds at most, then cut it."""
    try:
        with contextlib.suppress(*DRIVER_ERRORS):
            async with asyncio.timeout(timeout):
                await conn.close()
    finally:
        if not conn.is_closed():
            conn.terminate()
