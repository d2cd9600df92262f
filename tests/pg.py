"""Throwaway PostgreSQL databases for the tests and the benchmarks.

Created through the admin DSN (`$VIGIE_TEST_PG`, else the local server as `postgres`) and
dropped WITH (FORCE), so a node that is still connected does not keep one alive.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["PG_ADMIN_DSN", "create_database", "drop_database", "temporary_database"]

PG_ADMIN_DSN = os.environ.get("VIGIE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def _with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` (user, host and query string kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


async def create_database(prefix: str) -> str:
    """Create an empty database named `<prefix>_<random>`; return its DSN."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"database prefix {prefix!r}: lowercase letters, digits and '_'")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_database(PG_ADMIN_DSN, name)


async def drop_database(dsn: str) -> None:
    """Drop the database of a DSN made by `create_database`, connections and all."""
    name = _database_of(dsn)
    if not name or name == _database_of(PG_ADMIN_DSN) or '"' in name:
        raise ValueError(f"refusing to drop database {name!r}")
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def temporary_database(prefix: str) -> AsyncIterator[str]:
    """A database for the duration of the block, dropped after (even on failure)."""
    dsn = await create_database(prefix)
    try:
        yield dsn
    finally:
        await drop_database(dsn)
