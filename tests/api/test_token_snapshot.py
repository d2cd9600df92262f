"""vigie.api._token_snapshot: what the node keeps of the valid tokens, to authenticate while
PostgreSQL is away. The file and lookups as pure logic, then the rounds on a real database."""

from __future__ import annotations

import asyncio
import math
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import eventually
from vigie.api._auth import Authenticator
from vigie.api._token_snapshot import (
    KnownToken,
    SnapshotError,
    TokenSnapshot,
    decode,
    encode,
    read_file,
    write_file,
)
from vigie.errors import StoreUnavailable
from vigie.store import Store
from vigie.store._tokens import create_token, revoke_token, token_hash

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TOKEN = "vigie_" + "a" * 43


def _known(token: str = TOKEN, *, name: str = "csu", role: str = "operator",
           sites: frozenset[str] | None = None, expires_at: datetime | None = None
           ) -> KnownToken:
    return KnownToken(token_hash(token), name, role, sites, expires_at)


def _snapshot(*tokens: KnownToken) -> TokenSnapshot:
    snapshot = TokenSnapshot()
    snapshot.tokens = {t.digest: t for t in tokens}
    snapshot.complete = True
    return snapshot


def test_encode_decode_round_trip_keeps_only_what_the_database_stores() -> None:
    tokens = [_known(), _known("vigie_other", name="tech", role="technician",
                               sites=frozenset({"clg-a", "clg-b"}),
                               expires_at=NOW + timedelta(days=90))]
    raw = encode(tokens, NOW)
    assert TOKEN.encode() not in raw and b"vigie_other" not in raw
    assert token_hash(TOKEN).hex().encode() in raw
    decoded, taken_at = decode(raw)
    assert taken_at == NOW
    assert decoded == {t.digest: t for t in tokens}


@pytest.mark.parametrize("raw", [
    b"", b"{", b"null", b"[]", b'{"format": 2, "taken_at": "2026-03-02T09:00:00+00:00", '
                                b'"tokens": []}',
    b'{"format": 1, "tokens": []}',
    b'{"format": 1, "taken_at": "2026-03-02T09:00:00", "tokens": []}',  # naive
    b'{"format": 1, "taken_at": "2026-03-02T09:00:00+00:00", "tokens": {}}',
])
def test_a_file_that_is_not_a_snapshot_is_refused_as_a_whole(raw: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode(raw)


@pytest.mark.parametrize("change", [
    {"hash": "zz"}, {"hash": "ab" * 16}, {"role": "root"}, {"name": 3}, {"sites": "clg-a"},
    {"sites": [1]}, {"expires_at": "tomorrow"}, {"expires_at": "2026-03-03T09:00:00"},
])
def test_one_bad_entry_refuses_the_whole_file(change: dict[str, Any]) -> None:
    doc = orjson.loads(encode([_known(), _known("vigie_second", name="second")], NOW))
    doc["tokens"][1].update(change)
    with pytest.raises(SnapshotError):
        decode(orjson.dumps(doc))


def test_written_atomically_for_the_node_user_only(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    (tmp_path / "api-tokens.json.tmp").write_bytes(b"left by a crash")
    os.chmod(tmp_path / "api-tokens.json.tmp", 0o666)
    write_file(path, b"first")
    write_file(path, b"second")
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api-tokens.json"]
    assert read_file(path) == b"second"
    assert read_file(tmp_path / "missing.json") is None


def test_a_file_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    write_file(path, encode([_known()], NOW))
    path.chmod(0o620)
    with pytest.raises(SnapshotError, match="writable by others"):
        read_file(path)


def test_find_by_hash_respects_expiry() -> None:
    expiring = _known("vigie_expiring", name="short", expires_at=NOW + timedelta(minutes=5))
    snapshot = _snapshot(_known(sites=frozenset({"clg-a"})), expiring)
    found = snapshot.find(TOKEN, NOW)
    assert found is not None and found.name == "csu" and found.sites == {"clg-a"}
    assert snapshot.find("vigie_expiring", NOW) == expiring
    assert snapshot.find("vigie_expiring", NOW + timedelta(minutes=5)) is None
    assert snapshot.find("vigie_unknown", NOW) is None
    assert snapshot.find(TOKEN[:-1], NOW) is None


def test_without_a_whole_list_an_unknown_token_cannot_be_judged() -> None:
    snapshot = TokenSnapshot()
    with pytest.raises(StoreUnavailable):
        snapshot.find(TOKEN, NOW)
    snapshot.tokens[token_hash(TOKEN)] = _known()  # learned from one lookup
    assert snapshot.find(TOKEN, NOW) is not None
    with pytest.raises(StoreUnavailable):
        snapshot.find("vigie_other", NOW)


async def test_load_never_fails_and_says_why(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "api-tokens.json"
    missing = await TokenSnapshot.load(path)
    assert not missing.complete and "no API token snapshot" in caplog.text
    path.write_bytes(b"\x00garbage")
    path.chmod(0o600)
    corrupt = await TokenSnapshot.load(path)
    assert not corrupt.complete and "ignored: not a token snapshot" in caplog.text
    write_file(path, encode([_known()], NOW))
    good = await TokenSnapshot.load(path)
    assert good.complete and good.taken_at == NOW and good.find(TOKEN, NOW) is not None
    assert TOKEN not in caplog.text
    # Its age counts from when an earlier run read it from the database; none read: NaN.
    assert good.age(NOW + timedelta(minutes=3)) == 180.0
    assert math.isnan(missing.age(NOW)) and math.isnan(corrupt.age(NOW))


def test_learned_from_the_database_ahead_of_the_next_round() -> None:
    snapshot = _snapshot(_known())
    snapshot.learned(TOKEN, None)  # revoked, the database says
    assert snapshot.find(TOKEN, NOW) is None
    assert snapshot._wake.is_set()  # the file is rewritten at once


# On a real database.


async def _token(store: Store, name: str, **kw: Any) -> str:
    async with store.connection() as conn:
        token, _ = await create_token(conn, name=name, role=kw.get("role", "operator"),
                                      sites=kw.get("sites"), expires_at=kw.get("expires_at"))
    return token


async def test_a_round_writes_the_valid_tokens_hashes_only(store: Store, tmp_path: Path) -> None:
    kept = await _token(store, "kept", sites=["clg-a"])
    expired = await _token(store, "expired", expires_at=datetime.now(UTC) - timedelta(1))
    revoked = await _token(store, "revoked")
    async with store.connection() as conn:
        await revoke_token(conn, "revoked")
    snapshot = TokenSnapshot(tmp_path / "api-tokens.json")
    await snapshot.refresh(store, datetime.now(UTC))
    raw = (tmp_path / "api-tokens.json").read_bytes()
    for token in (kept, expired, revoked):
        assert token.encode() not in raw
    tokens, _ = decode(raw)
    assert [t.name for t in tokens.values()] == ["kept"]
    assert tokens[token_hash(kept)].sites == {"clg-a"}
    assert stat.S_IMODE((tmp_path / "api-tokens.json").stat().st_mode) == 0o600


async def test_creation_and_revocation_are_heard_at_once(
        store: Store, fresh_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    snapshot = TokenSnapshot(path)
    # A round every hour: only the notifications can bring the changes in time.
    task = asyncio.create_task(snapshot.run(store, fresh_dsn, 3600.0,
                                            lambda: datetime.now(UTC)))
    try:
        await eventually(lambda: _async(path.exists()))
        token = await _token(store, "new")

        async def names() -> list[str]:
            return [t.name for t in decode(path.read_bytes())[0].values()]

        await eventually(lambda: _has(names, ["new"]))
        async with store.connection() as conn:
            await revoke_token(conn, "new")
        await eventually(lambda: _has(names, []))
        assert token.encode() not in path.read_bytes()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_authenticator_falls_back_on_the_snapshot_only_while_away(
        store: Store, tmp_path: Path) -> None:
    token = await _token(store, "operator-1")
    snapshot = TokenSnapshot(tmp_path / "api-tokens.json")
    await snapshot.refresh(store, datetime.now(UTC))
    auth = Authenticator(store, snapshot=snapshot)
    async with store.connection() as conn:
        await revoke_token(conn, "operator-1")
    # The database answers: it is the authority, whatever the snapshot says...
    assert await auth.principal(token, datetime.now(UTC)) is None
    # ...and what it said is kept for when it is away.
    assert snapshot.find(token, datetime.now(UTC)) is None


async def _async(value: Any) -> Any:
    return value


async def _has(names: Any, expected: list[str]) -> bool:
    return bool(await names() == expected)
