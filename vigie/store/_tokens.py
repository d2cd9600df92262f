"""API tokens: random 256-bit secrets shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from vigie.errors import Conflict, NotFound

__all__ = [
    "CHANNEL",
    "ROLES",
    "TokenInfo",
    "authenticate",
    "create_token",
    "list_tokens",
    "revoke_token",
    "token_hash",
    "valid_tokens",
]

ROLES = ("admin", "operator", "technician", "viewer")
_PREFIX = "vigie_"
# Told on every creation and revocation (delivered at commit): each node refreshes its token
# snapshot at once instead of at its next round (vigie.api._token_snapshot).
CHANNEL = "vigie_tokens"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: uuid.UUID
    name: str
    role: str
    sites: frozenset[str] | None  # None: every site
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        def iso(v: datetime | None) -> str | None:
            return v.isoformat() if v else None

        return {"id": str(self.id), "name": self.name, "role": self.role,
                "sites": sorted(self.sites) if self.sites is not None else None,
                "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
                "last_used_at": iso(self.last_used_at), "revoked_at": iso(self.revoked_at)}


def token_hash(token: str) -> bytes:
    """What is stored of a token (api_tokens.hash, and the node's token snapshot)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _info(row: Any) -> TokenInfo:
    return TokenInfo(row["id"], row["name"], row["role"],
                     frozenset(row["sites"]) if row["sites"] is not None else None,
                     row["created_at"], row["expires_at"], row["last_used_at"], row["revoked_at"])


_COLUMNS = "id, name, role, sites, created_at, expires_at, last_used_at, revoked_at"


async def create_token(
    conn: Any, *, name: str, role: str, sites: list[str] | None, expires_at: datetime | None
) -> tuple[str, TokenInfo]:
    """Return the clear token (to show once) and what is stored about it."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = _PREFIX + secrets.token_urlsafe(32)
    exists = await conn.fetchval(
        "SELECT 1 FROM api_tokens WHERE name = $1 AND revoked_at IS NULL", name)
    if exists:
        raise Conflict(f"a token named {name!r} already exists; revoke it first")
    try:
        row = await conn.fetchrow(
            f"INSERT INTO api_tokens (id, name, hash, role, sites, expires_at) "
            f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
            uuid.uuid4(), name, token_hash(token), role, sites, expires_at,
        )
    except asyncpg.UniqueViolationError:  # created at the same moment elsewhere
        raise Conflict(f"a token named {name!r} already exists; revoke it first") from None
    await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return token, _info(row)


async def list_tokens(conn: Any) -> list[TokenInfo]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at, name")
    return [_info(r) for r in rows]


async def revoke_token(conn: Any, name: str) -> TokenInfo:
    row = await conn.fetchrow(
        f"UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL "
        f"RETURNING {_COLUMNS}", name)
    if row is None:
        raise NotFound(f"no active token named {name!r}")
    await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return _info(row)


async def authenticate(conn: Any, token: str, now: datetime) -> TokenInfo | None:
    """The token's record if it is valid now; None otherwise (unknown, revoked, expired)."""
    digest = token_hash(token)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, hash FROM api_tokens WHERE hash = $1", digest)
    # The lookup is by hash already; the comparison is constant-time all the same.
    if row is None or not hmac.compare_digest(bytes(row["hash"]), digest):
        return None
    info = _info(row)
    if info.revoked_at is not None or (info.expires_at is not None and info.expires_at <= now):
        return None
    if info.last_used_at is None or (now - info.last_used_at).total_seconds() > 60:
        # Coarse on purpose: one write a minute per token, not one per request.
        await conn.execute("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1", info.id, now)
    return info


async def valid_tokens(conn: Any, now: datetime) -> list[tuple[bytes, TokenInfo]]:
    """Every token valid now (neither revoked nor expired), with its hash."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS}, hash FROM api_tokens WHERE revoked_at IS NULL "
        f"AND (expires_at IS NULL OR expires_at > $1) ORDER BY name", now)
    return [(bytes(r["hash"]), _info(r)) for r in rows]
