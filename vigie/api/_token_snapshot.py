"""What the node last knew of the valid API tokens, kept on its disk: the API keeps
authenticating while PostgreSQL is away, after a restart too.

The database is the authority whenever it answers (`Authenticator.principal` asks it first).
This snapshot holds only what it stores of each valid token — its SHA-256, name, role, sites
and expiry, never the token itself — in `node.data_dir/api-tokens.json` (mode 0600, written
atomically). It is read from the database every `api.token_snapshot_every` seconds and at
once when a token is created or revoked anywhere (NOTIFY on `vigie_tokens`), and patched
between rounds with what each lookup in the database said about one token.

The bound on revocation: a token revoked while this node could not hear it (its LISTEN
connection down) and less than one round before the database went away is still in the
snapshot, and accepted by this node until the database answers again or the token
expires. A node stopped for a while and restarted during an outage starts from the
snapshot it wrote last: the tokens revoked since are accepted until the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from vigie.errors import StoreUnavailable, VigieError
from vigie.secrets import redact_text
from vigie.store import Store
from vigie.store._direct import DRIVER_ERRORS, close_quietly
from vigie.store._tokens import CHANNEL, ROLES, TokenInfo, token_hash, valid_tokens

__all__ = ["FILE_NAME", "KnownToken", "SnapshotError", "TokenSnapshot", "decode", "encode",
           "read_file", "write_file"]

log = logging.getLogger("vigie.api")

FILE_NAME = "api-tokens.json"
FORMAT = 1


class SnapshotError(VigieError):
    """The snapshot file cannot be trusted: it is ignored as a whole."""


@dataclass(frozen=True, slots=True)
class KnownToken:
    digest: bytes  # SHA-256 of the token, as in api_tokens.hash
    name: str
    role: str
    sites: frozenset[str] | None  # None: every site
    expires_at: datetime | None

    @classmethod
    def of(cls, digest: bytes, info: TokenInfo) -> KnownToken:
        return cls(digest, info.name, info.role, info.sites, info.expires_at)

    def valid_at(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


def encode(tokens: Iterable[KnownToken], taken_at: datetime) -> bytes:
    return orjson.dumps({
        "format": FORMAT, "taken_at": taken_at.isoformat(),
        "tokens": [{"hash": t.digest.hex(), "name": t.name, "role": t.role,
                    "sites": sorted(t.sites) if t.sites is not None else None,
                    "expires_at": t.expires_at.isoformat() if t.expires_at else None}
                   for t in sorted(tokens, key=lambda t: t.name)]})


def decode(raw: bytes) -> tuple[dict[bytes, KnownToken], datetime]:
    """The tokens and when they were read from the database; SnapshotError if anything is
    off (all or nothing: a half-understood file must not let anyone in)."""
    try:
        doc = orjson.loads(raw)
        if doc["format"] != FORMAT:
            raise SnapshotError(f"unknown format {doc['format']!r}")
        taken_at = _aware(doc["taken_at"])
        if not isinstance(doc["tokens"], list):
            raise TypeError("tokens")
        tokens = [_token(t) for t in doc["tokens"]]
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SnapshotError(f"not a token snapshot ({type(exc).__name__})") from None
    return {t.digest: t for t in tokens}, taken_at


def _token(entry: dict[str, Any]) -> KnownToken:
    digest = bytes.fromhex(entry["hash"])
    name, role, sites = entry["name"], entry["role"], entry["sites"]
    if len(digest) != 32 or not isinstance(name, str) or role not in ROLES:
        raise ValueError("bad entry")
    if sites is not None and not (isinstance(sites, list)
                                  and all(isinstance(s, str) for s in sites)):
        raise ValueError("bad sites")
    expires = entry["expires_at"]
    return KnownToken(digest, name, role, frozenset(sites) if sites is not None else None,
                      _aware(expires) if expires is not None else None)


def _aware(value: str) -> datetime:
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError("naive time")
    return at


def write_file(path: Path, raw: bytes) -> None:
    """Atomically (a crash leaves the old file or the new one), readable by the node's user
    only: what it holds lets no one in, but its integrity lets tokens in."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash; O_EXCL below must create it afresh with our mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_file(path: Path) -> bytes | None:
    """The file's bytes, None if there is none; SnapshotError if others could have written
    it (a token of theirs would be let in while the database is away)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_mode & 0o022 or st.st_uid != os.geteuid():
                raise SnapshotError(f"writable by others or not ours "
                                    f"(mode {st.st_mode & 0o777:o}, uid {st.st_uid})")
            return f.read(16 * 1024 * 1024)
    except FileNotFoundError:
        return None


class TokenSnapshot:
    """The valid tokens as this node last knew them; `complete` once a whole list was read
    (from the file or the database): only then does a token missing from it mean invalid."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path  # None: in memory only
        self.tokens: dict[bytes, KnownToken] = {}
        self.complete = False
        self.taken_at: datetime | None = None
        self._forgotten: set[bytes] = set()  # refused by the database during a round
        self._wake = asyncio.Event()

    @classmethod
    async def load(cls, path: Path, *, database_up: bool = False) -> TokenSnapshot:
        """The snapshot on disk; an empty, incomplete one (every token waits for the
        database) if there is none or it cannot be trusted. Never fails."""
        snapshot = cls(path)
        try:
            raw = await asyncio.to_thread(read_file, path)
            if raw is None:
                # A first start with the database up writes it in a moment: nothing to say.
                (log.info if database_up else log.warning)(
                    "no API token snapshot at %s yet: API calls with a token answer 503 "
                    "until the database answers", path)
                return snapshot
            snapshot.tokens, snapshot.taken_at = decode(raw)
        except (SnapshotError, OSError) as exc:
            log.warning("API token snapshot %s ignored: %s; while the database is away, API "
                        "calls with a token answer 503", path, exc)
            return snapshot
        snapshot.complete = True
        log.info("API token snapshot: %d valid token(s) as of %s", len(snapshot.tokens),
                 snapshot.taken_at.isoformat(timespec="seconds"))
        return snapshot

    def age(self, now: datetime) -> float:
        """Seconds since the tokens were read from the database (this run or, loaded from
        the file, an earlier one); NaN if they never were."""
        return (now - self.taken_at).total_seconds() if self.taken_at else math.nan

    def find(self, token: str, now: datetime) -> KnownToken | None:
        """The token's entry if it is valid now; None if not. StoreUnavailable if this node
        cannot tell (it never read a whole list)."""
        digest = token_hash(token)
        entry = self.tokens.get(digest)
        # Found by hash, like the database does; compared in constant time all the same.
        if entry is not None and hmac.compare_digest(entry.digest, digest):
            return entry if entry.valid_at(now) else None
        if not self.complete:
            raise StoreUnavailable("database unavailable, and no API token snapshot yet")
        return None

    def learned(self, token: str, info: TokenInfo | None) -> None:
        """What the database just said of one token (None: invalid), ahead of the next round,
        which it also brings forward when the file holds something else."""
        digest = token_hash(token)
        if info is None:
            if self.tokens.pop(digest, None) is not None:
                self._forgotten.add(digest)
                self._wake.set()
        elif self.tokens.get(digest) != (entry := KnownToken.of(digest, info)):
            self.tokens[digest] = entry
            self._wake.set()

    async def refresh(self, store: Store, now: datetime) -> None:
        """Read every valid token from the database, and write the file."""
        self._forgotten.clear()
        async with store.connection() as conn:
            rows = await valid_tokens(conn, now)
        tokens = {d: KnownToken.of(d, info) for d, info in rows}
        for digest in self._forgotten:  # refused since the read began: stays out
            tokens.pop(digest, None)
        self.tokens, self.taken_at, self.complete = tokens, now, True
        if self.path is not None:
            await asyncio.to_thread(write_file, self.path, encode(tokens.values(), now))

    async def run(self, store: Store, dsn: str, every: float,
                  clock: Callable[[], datetime]) -> None:
        """Refresh every `every` seconds, and at once when told (NOTIFY, or a lookup that
        found the snapshot out of date)."""
        listener: Any = None
        failing = ""
        try:
            while True:
                if listener is None or listener.is_closed():
                    listener = await self._listen(dsn)
                self._wake.clear()  # before the read: a change told during it is not lost
                try:
                    await self.refresh(store, clock())
                    failing = ""
                except StoreUnavailable:
                    pass  # the snapshot is what it is for; the next round tries again
                except (VigieError, OSError) as exc:
                    if str(exc) != failing:  # once, not every round
                        log.warning("API token snapshot not refreshed: %s", exc)
                    failing = str(exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):
                        await self._wake.wait()
        finally:
            if listener is not None:
                await close_quietly(listener)

    async def _listen(self, dsn: str) -> Any:
        """A connection of its own that hears token changes; None while that fails (the
        rounds alone keep the snapshot, a round later)."""
        try:
            conn = await asyncpg.connect(dsn, timeout=5, command_timeout=30,
                                         server_settings={"application_name": "vigie-tokens"})
        except DRIVER_ERRORS:
            return None
        try:
            conn.add_termination_listener(lambda _conn: self._wake.set())
            await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
        except DRIVER_ERRORS as exc:
            log.debug("token changes: cannot listen: %s", redact_text(str(exc)))
            await close_quietly(conn)
            return None
        except BaseException:  # cancelled (the node stops) while it set up: not left open
            conn.terminate()
            raise
        return conn

