"""vigie.store._migrate: idempotent, safe when several nodes start at once, strict on files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from tests.conftest import eventually
from vigie.store import Store, _migrate
from vigie.store._migrate import MIGRATION_LOCK, apply_migrations, load_migrations


async def _history(conn: asyncpg.Connection) -> list[tuple[int, str, Any]]:
    rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")
    return [(r["version"], r["name"], r["applied_at"]) for r in rows]


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {r["tablename"] for r in rows}


@pytest.fixture
async def conn(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(fresh_dsn)
    try:
        yield c
    finally:
        await c.close()


def _use_migrations(monkeypatch: pytest.MonkeyPatch, root: Path, files: dict[str, str]) -> None:
    """Make load_migrations read `files` (name → SQL) instead of the packaged ones."""
    folder = root / "migrations"
    folder.mkdir()
    for name, sql in files.items():
        (folder / name).write_text(sql, encoding="utf-8")
    monkeypatch.setattr(_migrate, "resources", SimpleNamespace(files=lambda package: root))


# --- the packaged migrations -----------------------------------------------------------------


def test_packaged_migrations_are_numbered_from_one_without_gaps() -> None:
    migrations = load_migrations()
    assert migrations, "no migration shipped"
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "core"
    assert all(m.sql.strip() for m in migrations)


async def test_applying_twice_is_a_no_op(conn: asyncpg.Connection) -> None:
    expected = load_migrations()
    first = await apply_migrations(conn)
    assert [m.version for m in first] == [m.version for m in expected]
    history = await _history(conn)
    assert [(v, n) for v, n, _ in history] == [(m.version, m.name) for m in expected]
    tables = await _tables(conn)
    assert {"sites", "events", "alerts", "api_tokens", "schema_migrations"} <= tables

    assert await apply_migrations(conn) == []
    assert await _history(conn) == history  # same rows, same applied_at
    assert await _tables(conn) == tables
    # The lock is released after each call: another session can take it at once.
    assert not await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())")


async def test_store_migrate_counts_what_it_applied(fresh_dsn: str) -> None:
    store = await Store.open(fresh_dsn, size=2)
    try:
        assert await store.migrate() == len(load_migrations())
        assert await store.migrate() == 0
    finally:
        await store.close()


@pytest.mark.parametrize("nodes", [2, 5])
async def test_nodes_migrating_at_once_apply_each_migration_once(
    fresh_dsn: str, nodes: int
) -> None:
    conns = [await asyncpg.connect(fresh_dsn) for _ in range(nodes)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied = [m.version for result in results for m in result]
        assert sorted(applied) == [m.version for m in load_migrations()]
        # One connection did all the work; the others waited for the lock, then found none.
        assert sorted(len(r) for r in results) == [0] * (nodes - 1) + [len(load_migrations())]
        rows = await conns[0].fetch(
            "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version")
        assert {r["version"]: r["n"] for r in rows} == {m.version: 1 for m in load_migrations()}
        # Every session released the lock.
        for c in conns:
            assert await c.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK)
            await c.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def test_a_waiting_node_applies_what_the_holder_did_not(
    fresh_dsn: str, conn: asyncpg.Connection
) -> None:
    """A node that finds the lock taken waits for it rather than migrating alongside."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    other = await asyncpg.connect(fresh_dsn)
    try:
        waiting = asyncio.create_task(apply_migrations(other))

        async def blocked() -> bool:
            return bool(await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))

        await eventually(blocked)
        assert not waiting.done()
        assert "schema_migrations" not in await _tables(conn)
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        assert [m.version for m in await waiting] == [m.version for m in load_migrations()]
    finally:
        await other.close()


# --- reading migration files -----------------------------------------------------------------


def test_load_migrations_sorts_by_number_and_ignores_other_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_migrations(monkeypatch, tmp_path, {
        "0010_later.sql": "SELECT 10;",
        "0002_second.sql": "SELECT 2;",
        "0001_first.sql": "SELECT 1;",
        "README.md": "not a migration",
        "0003_Upper-Case.sql": "SELECT 3;",  # not a valid name: ignored
        "03_short.sql": "SELECT 3;",
        "0004_draft.sql.bak": "SELECT 4;",
    })
    migrations = load_migrations()
    assert [(m.version, m.name, m.sql) for m in migrations] == [
        (1, "first", "SELECT 1;"), (2, "second", "SELECT 2;"), (10, "later", "SELECT 10;")]


def test_load_migrations_refuses_duplicate_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_migrations(monkeypatch, tmp_path, {
        "0001_core.sql": "SELECT 1;",
        "0002_alerts.sql": "SELECT 2;",
        "0002_events.sql": "SELECT 2;",
    })
    with pytest.raises(RuntimeError, match="duplicate migration numbers"):
        load_migrations()


async def test_a_failing_migration_rolls_back_alone_and_releases_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_dsn: str, conn: asyncpg.Connection
) -> None:
    _use_migrations(monkeypatch, tmp_path, {
        "0001_one.sql": "CREATE TABLE one (id int);",
        "0002_broken.sql": "CREATE TABLE two (id int); SELECT no_such_column FROM one;",
    })
    with pytest.raises(asyncpg.UndefinedColumnError):
        await apply_migrations(conn)
    assert [(v, n) for v, n, _ in await _history(conn)] == [(1, "one")]
    assert "two" not in await _tables(conn)  # 0002 rolled back as a whole
    other = await asyncpg.connect(fresh_dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK)
    finally:
        await other.close()

    # Fixed, it applies on the next start, and only it.
    (tmp_path / "migrations" / "0002_broken.sql").write_text("CREATE TABLE two (id int);")
    assert [m.version for m in await apply_migrations(conn)] == [2]
