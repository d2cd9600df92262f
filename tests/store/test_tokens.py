"""vigie.store._tokens: tokens shown once, only their SHA-256 kept, and who may use them."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.conftest import eventually
from vigie.errors import Conflict, NotFound
from vigie.store import Store
from vigie.store._tokens import authenticate, create_token, list_tokens, revoke_token

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)



@pytest.fixture
async def conn(store: Store) -> AsyncIterator[Any]:
    async with store.connection() as c:
        yield c


async def new(conn: Any, name: str = "console-csu", role: str = "operator",
              sites: list[str] | None = None, expires_at: datetime | None = None) -> str:
    token, _ = await create_token(conn, name=name, role=role, sites=sites, expires_at=expires_at)
    return token


async def test_create_returns_the_token_once_and_stores_only_its_hash(conn: Any) -> None:
    token, info = await create_token(conn, name="console-csu", role="operator",
                                     sites=["clg-pasteur", "clg-jean-moulin"], expires_at=None)
    assert token.startswith("vigie_") and len(token) >= 6 + 43  # 256 bits, url-safe base64
    assert (info.name, info.role, info.sites) == (
        "console-csu", "operator", frozenset({"clg-pasteur", "clg-jean-moulin"}))
    assert info.revoked_at is None and info.last_used_at is None and info.expires_at is None

    [row] = await conn.fetch("SELECT hash, t::text AS everything FROM api_tokens t")
    assert bytes(row["hash"]) == hashlib.sha256(token.encode()).digest()
    secret_part = token.removeprefix("vigie_")
    for shown in (token, secret_part, secret_part[:16]):
        assert shown not in row["everything"]
    # Nor in what the API and the CLI list.
    [listed] = await list_tokens(conn)
    assert token not in repr(listed) and token not in str(listed.to_json())

    other = await new(conn, name="another")
    assert other != token


async def test_authenticate_accepts_a_valid_token(conn: Any) -> None:
    token = await new(conn, sites=["clg-pasteur"])
    info = await authenticate(conn, token, NOW)
    assert info is not None
    assert (info.name, info.role, info.sites) == ("console-csu", "operator",
                                                  frozenset({"clg-pasteur"}))


@pytest.mark.parametrize("token", [
    "vigie_" + "A" * 43, "", "vigie_", "Bearer vigie_x", "\x00", "é" * 100,
])
async def test_authenticate_refuses_unknown_tokens(conn: Any, token: str) -> None:
    await new(conn)
    assert await authenticate(conn, token, NOW) is None


async def test_authenticate_refuses_a_revoked_token(conn: Any) -> None:
    token = await new(conn)
    revoked = await revoke_token(conn, "console-csu")
    assert revoked.revoked_at is not None
    assert await authenticate(conn, token, NOW) is None


async def test_authenticate_refuses_an_expired_token(conn: Any) -> None:
    token = await new(conn, expires_at=NOW + timedelta(hours=1))
    assert await authenticate(conn, token, NOW) is not None
    assert await authenticate(conn, token, NOW + timedelta(minutes=59, seconds=59)) is not None
    assert await authenticate(conn, token, NOW + timedelta(hours=1)) is None  # at the instant
    assert await authenticate(conn, token, NOW + timedelta(days=1)) is None


async def test_duplicate_name_is_a_conflict_until_revoked(conn: Any) -> None:
    first = await new(conn)
    with pytest.raises(Conflict, match="console-csu"):
        await new(conn, role="admin")
    assert len(await list_tokens(conn)) == 1

    await revoke_token(conn, "console-csu")
    second = await new(conn)  # the name is free again once the old token is revoked
    assert second != first
    states = [(t.name, t.revoked_at is None) for t in await list_tokens(conn)]
    assert states == [("console-csu", False), ("console-csu", True)]
    assert await authenticate(conn, first, NOW) is None
    assert await authenticate(conn, second, NOW) is not None


async def test_concurrent_creation_of_one_name_is_a_conflict(store: Store) -> None:
    """Two admins create the same name at once: one gets the token, the other a Conflict
    (409), not a raw database error."""
    async with store.connection() as c1, store.connection() as c2:
        tx = c1.transaction()
        await tx.start()
        await new(c1)  # not committed yet: c2's check does not see it
        second = asyncio.create_task(new(c2))

        async def c2_waits_on_the_unique_index() -> bool:
            return bool(await store.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"))

        await eventually(c2_waits_on_the_unique_index)
        await tx.commit()
        [outcome] = await asyncio.gather(second, return_exceptions=True)
    assert isinstance(outcome, Conflict), f"expected Conflict, got {outcome!r}"
    async with store.connection() as conn:
        assert len(await list_tokens(conn)) == 1


async def test_revoke_unknown_or_already_revoked_is_not_found(conn: Any) -> None:
    with pytest.raises(NotFound, match="nobody"):
        await revoke_token(conn, "nobody")
    await new(conn)
    await revoke_token(conn, "console-csu")
    with pytest.raises(NotFound):
        await revoke_token(conn, "console-csu")


async def test_unknown_role_is_refused(conn: Any) -> None:
    with pytest.raises(ValueError, match="role"):
        await new(conn, role="root")
    assert await list_tokens(conn) == []


async def test_last_used_at_is_updated_coarsely(conn: Any) -> None:
    token = await new(conn)

    async def last_used() -> datetime | None:
        value: datetime | None = await conn.fetchval("SELECT last_used_at FROM api_tokens")
        return value

    assert await last_used() is None
    await authenticate(conn, token, NOW)
    assert await last_used() == NOW
    await authenticate(conn, token, NOW + timedelta(seconds=30))  # within the minute: no write
    assert await last_used() == NOW
    later = NOW + timedelta(seconds=61)
    info = await authenticate(conn, token, later)
    assert await last_used() == later
    assert info is not None
    [listed] = await list_tokens(conn)
    assert listed.last_used_at == later
    # Refused attempts leave no trace on the token.
    await revoke_token(conn, "console-csu")
    await authenticate(conn, token, later + timedelta(hours=1))
    assert await last_used() == later


async def test_token_rows_are_unique_by_hash(conn: Any) -> None:
    """The hash column is the lookup key: the schema refuses two rows with one hash."""
    await new(conn)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO api_tokens (id, name, hash, role) "
            "SELECT gen_random_uuid(), 'copy', hash, role FROM api_tokens")
