"""Bearer tokens: who is calling, with which role, on which sites."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from vigie.errors import StoreUnavailable
from vigie.store import Store
from vigie.store._tokens import authenticate

__all__ = ["Authenticator", "Principal"]

# A valid token is re-checked against the database at most this often (revocation delay).
CACHE_SECONDS = 5.0
# Failed attempts allowed per client address and window, before 429.
MAX_FAILURES = 20
FAILURE_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    sites: frozenset[str] | None  # None: every site

    def sees(self, site: str) -> bool:
        return self.sites is None or site in self.sites


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._failures: dict[str, list[float]] = {}

    def throttled(self, remote: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(remote, ()) if now - t < FAILURE_WINDOW]
        if recent:
            self._failures[remote] = recent
        else:
            self._failures.pop(remote, None)
        return len(recent) >= MAX_FAILURES

    def failed(self, remote: str) -> None:
        self._failures.setdefault(remote, []).append(time.monotonic())
        if len(self._failures) > 10_000:  # bounded, whatever an attacker does
            self._failures.pop(next(iter(self._failures)))

    def cached(self, token: str) -> bool:
        entry = self._cache.get(token)
        return entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS

    async def principal(self, token: str, now: datetime) -> Principal | None:
        cached = self._cache.get(token)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            async with self._store.connection() as conn:
                info = await authenticate(conn, token, now)
        except StoreUnavailable:
            # The database is away: a token it accepted before still opens what the node
            # can serve from memory (no token can be revoked meanwhile either).
            if cached:
                return cached[1]
            raise
        if info is None:
            self._cache.pop(token, None)
            return None
        principal = Principal(info.name, info.role, info.sites)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (time.monotonic(), principal)
        return principal
