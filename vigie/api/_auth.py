"""Bearer tokens: who is calling, with which role, on which sites."""

from __future__ import annotations

import functools
import ipaddress
import time
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from vigie.api._token_snapshot import KnownToken, TokenSnapshot
from vigie.errors import StoreUnavailable
from vigie.store import Store
from vigie.store._tokens import authenticate, token_hash

__all__ = ["Authenticator", "Principal", "client_address", "forwarded_https"]

# A valid token is re-checked against the database at most this often (revocation delay).
CACHE_SECONDS = 5.0
# Failed attempts allowed per client address and window, before 429 (api.auth_failures_per_minute).
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
    """Who a token is: the database's answer whenever it answers, and while it is away what
    the node last knew of the valid tokens (`TokenSnapshot`: on disk, so after a restart
    too; see its module for how late a revocation may be heard)."""

    def __init__(self, store: Store, max_failures: int = MAX_FAILURES,
                 snapshot: TokenSnapshot | None = None) -> None:
        self._store = store
        self._max_failures = max_failures
        self.snapshot = snapshot or TokenSnapshot()  # in memory only: what lookups taught
        # Tokens accepted in the last seconds: (when, what, whether the database said so).
        # Only the database's answers are reused as answers; the snapshot's are asked again
        # (the database may be back, and decide otherwise), but pass the throttle.
        self._cache: dict[str, tuple[float, KnownToken, bool]] = {}
        self._failures: dict[str, list[float]] = {}

    def throttled(self, remote: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(remote, ()) if now - t < FAILURE_WINDOW]
        if recent:
            self._failures[remote] = recent
        else:
            self._failures.pop(remote, None)
        return len(recent) >= self._max_failures

    def failed(self, remote: str) -> None:
        self._failures.setdefault(remote, []).append(time.monotonic())
        if len(self._failures) > 10_000:  # bounded, whatever an attacker does
            self._failures.pop(next(iter(self._failures)))

    def cached(self, token: str) -> bool:
        """Whether the token was accepted in the last seconds: such a token passes the
        throttle of its address (many users behind one proxy, one of them failing). Not
        every token of the snapshot: checking each guess against it would let an address
        that is throttled go on guessing."""
        entry = self._cache.get(token)
        return entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS

    async def principal(self, token: str, now: datetime) -> Principal | None:
        cached = self._cache.get(token)
        if (cached and cached[2] and time.monotonic() - cached[0] < CACHE_SECONDS
                and cached[1].valid_at(now)):
            return _principal(cached[1])
        try:
            async with self._store.connection() as conn:
                info = await authenticate(conn, token, now)
        except StoreUnavailable:
            # The database is away: the snapshot decides (revoked tokens are not in it,
            # expired ones are refused); StoreUnavailable (503) if there is none at all.
            known = self.snapshot.find(token, now)
            if known is None:
                return None
            self._remember(token, known, from_database=False)
            return _principal(known)
        self.snapshot.learned(token, info)
        if info is None:
            self._cache.pop(token, None)
            return None
        known = KnownToken.of(token_hash(token), info)
        self._remember(token, known, from_database=True)
        return _principal(known)

    def _remember(self, token: str, known: KnownToken, from_database: bool) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (time.monotonic(), known, from_database)


def _principal(token: KnownToken) -> Principal:
    return Principal(token.name, token.role, token.sites)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def client_address(request: web.Request, trusted: tuple[str, ...]) -> str:
    """The address of the client, for the audit log and the authentication throttle.

    X-Forwarded-For is believed only as far as it was written by trusted proxies: walking it
    from the right (the hop nearest to us), the first address that is not a trusted proxy is
    the client. Without trusted proxies, the header is ignored: anyone can send one.
    """
    peer = request.remote or "?"
    networks = _networks(trusted)
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", ())
            for h in v.split(",")]
    address = peer
    for hop in reversed(hops):
        if not hop:
            continue
        address = hop
        if not _trusted(hop, networks):
            break
    return address[:64]  # bounded: it goes into the audit log and a dictionary key


def forwarded_https(request: web.Request, trusted: tuple[str, ...]) -> bool:
    """Whether the client's connection is HTTPS: ours, or the trusted proxy's in front."""
    if request.secure:
        return True
    networks = _networks(trusted)
    if not networks or not _trusted(request.remote or "?", networks):
        return False
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https"
