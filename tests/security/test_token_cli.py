"""Token lifecycle through the CLI against a real database: created with an expiry and a
scope, shown once, listed with its state and last use, revoked; each step audited."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vigie.store import Store
from vigie.store._tokens import authenticate


async def vigie(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "vigie.cli", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60)


async def test_token_expiry_last_use_revocation_and_audit(store: Store, fresh_dsn: str,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "vigie.yaml"
    config.write_text(f"database: {{dsn: '{fresh_dsn}'}}\nnode: {{data_dir: '{tmp_path}'}}\n"
                      "sites: [{id: clg-a, name: A, uai: '0781234A'}]\n")
    made = await vigie(config, "token", "create", "--role", "viewer", "--name", "csu-ecran",
                       "--sites", "clg-a", "--expires", "90d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("vigie_") and len(token) >= 6 + 43  # 256 bits, base64
    assert token not in made.stderr and "shown only once" in made.stderr

    now = datetime.now(UTC)
    async with store.connection() as conn:
        info = await authenticate(conn, token, now)
        assert info is not None and info.sites == frozenset({"clg-a"})
        assert info.expires_at is not None
        assert abs(info.expires_at - (now + timedelta(days=90))) < timedelta(minutes=5)
        assert await authenticate(conn, token, now + timedelta(days=91)) is None
        stored = await conn.fetchval("SELECT hash FROM api_tokens WHERE name = 'csu-ecran'")
        assert token.encode() not in bytes(stored)

    listed = await vigie(config, "token", "list")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("csu-ecran"))
    assert "active" in line and "sites=clg-a" in line and "last_used=never" not in line
    assert token not in listed.stdout

    revoked = await vigie(config, "token", "revoke", "csu-ecran")
    assert revoked.returncode == 0
    async with store.connection() as conn:
        assert await authenticate(conn, token, now) is None
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE actor LIKE 'cli:%' ORDER BY id")]
    assert actions == ["token.create", "token.list", "token.revoke"]


async def test_a_bad_lifetime_is_a_clear_error(store: Store, fresh_dsn: str,
                                               tmp_path: Path) -> None:
    config = tmp_path / "vigie.yaml"
    config.write_text(f"database: {{dsn: '{fresh_dsn}'}}\nnode: {{data_dir: '{tmp_path}'}}\n")
    run = await vigie(config, "token", "create", "--role", "admin", "--name", "x",
                      "--expires", "ninety days")
    assert run.returncode == 1
    assert run.stderr.strip() == ("vigie: --expires 'ninety days': expected a duration such "
                                  "as 5s, 500ms, 2m (e.g. 90d, 12h)")
