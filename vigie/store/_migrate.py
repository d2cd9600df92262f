"""Numbered `.sql` migrations, applied in order under an advisory lock.

Several nodes may start at once: the first takes the lock and migrates, the others wait for
it and then find nothing left to do.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

__all__ = ["Migration", "MigrationProgress", "apply_migrations", "load_migrations"]

log = logging.getLogger("vigie.store")

# Any constant works as long as every node uses the same one: "vigie" in ASCII.
MIGRATION_LOCK = 0x7669676965
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("vigie.store").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {versions}")
    return found


# (applied so far, to apply, the migration just applied)
MigrationProgress = Callable[[int, int, "Migration"], None]


async def apply_migrations(
    conn: asyncpg.Connection,
    on_progress: MigrationProgress | None = None,
) -> list[Migration]:
    """Apply what is missing; return the migrations applied by this call. `on_progress`
    hears (applied so far, to apply, the migration just applied)."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        missing = [mig for mig in load_migrations() if mig.version not in done]
        for mig in missing:
            started = time.monotonic()
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    mig.version, mig.name,
                )
            log.info("applied migration %04d_%s in %.2fs", mig.version, mig.name,
                     time.monotonic() - started)
            applied.append(mig)
            if on_progress is not None:
                on_progress(len(applied), len(missing), mig)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
