"""What several fault tests share: the site they run, the load they publish, the counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from vigie.store._tokens import create_token

SITE = "clg-faults"
DOORS = 5
TECHNICAL = 10


def site(cameras: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """A collège with technical sensors, doors, an intrusion panel (and the given cameras)."""
    return {
        "id": SITE, "name": "Collège des pannes", "uai": "0789997X",
        "cameras": [{"id": cid, "name": cid, "zone": "entree", "url": url}
                    for cid, url in (cameras or {}).items()],
        "sensors": [{"id": f"tech-{i}", "kind": "technical", "zone": "baie"}
                    for i in range(TECHNICAL)]
        + [{"id": f"porte-{i}", "kind": "door", "zone": "entree"} for i in range(DOORS)]
        + [{"id": "centrale", "kind": "intrusion", "zone": "batiment"}],
        **extra,
    }


def mixed_load(prefix: str = "vigie", keyless_every: int = 10
               ) -> Callable[[int], tuple[str, dict[str, Any]]]:
    """Message n: mostly technical reports with an id; every `keyless_every`-th a door
    opening or closing with neither id nor timestamp (stored once only if nothing is
    delivered, spooled or replayed twice: its key is its reception). `data.n` numbers it."""

    def payload(n: int) -> tuple[str, dict[str, Any]]:
        if keyless_every and n % keyless_every == 0:
            door = (n // keyless_every) % DOORS
            state = "open" if (n // (keyless_every * DOORS)) % 2 == 0 else "closed"
            return f"{prefix}/{SITE}/porte-{door}/event", {"state": state, "data": {"n": n}}
        return f"{prefix}/{SITE}/tech-{n % TECHNICAL}/event", {
            "id": f"e{n}", "ts": datetime.now(UTC).isoformat(), "state": "normal",
            "data": {"n": n}}

    return payload


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def stored_numbers(dsn: str) -> dict[int, int]:
    """data.n of each stored event → how many rows carry it."""
    rows = query(dsn, "SELECT (data->>'n')::int AS n, count(*) AS c FROM events "
                      "WHERE data ? 'n' GROUP BY 1")
    return {r["n"]: r["c"] for r in rows}


def new_token(dsn: str, role: str = "operator") -> str:
    async def run() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            value, _ = await create_token(conn, name=f"{role}-faults", role=role, sites=None,
                                          expires_at=None)
            return value
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def wait_for_row(dsn: str, sql: str, timeout: float) -> None:
    """Poll on one connection, every few milliseconds: to act the moment a row appears."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + timeout
            while not await conn.fetch(sql):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no row from {sql!r} within {timeout}s")
                await asyncio.sleep(0.002)
        finally:
            await conn.close()

    asyncio.run(run())


def stored_when_settled(dsn: str, expected: set[int], timeout: float) -> dict[int, int]:
    """Stored numbers once `expected` are all there, or as they are after `timeout` (the
    test's assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        numbers = stored_numbers(dsn)
        if set(numbers) >= expected or time.monotonic() > deadline:
            return numbers
        time.sleep(0.5)
