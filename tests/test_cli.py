"""The `vigie` command, run as a subprocess the way an operator runs it.

Each command gets a config file of its own pointing at a fresh database and at our broker;
secrets come from the environment and must never show in what the command prints.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

import vigie
from tests.conftest import eventually, free_port
from tests.test_config import BROKEN, BROKEN_CASES
from vigie.store._migrate import load_migrations

ROOT = Path(__file__).resolve().parent.parent
CAM_PASSWORD = "Cam-Pa55-Quokka-913"
MQTT_PASSWORD = "Mqtt-Pa55-Narwhal-457"
DB_PASSWORD = "Db-Pa55-Axolotl-266"
SECRETS = (CAM_PASSWORD, MQTT_PASSWORD, DB_PASSWORD)
SITE = "clg-jean-moulin"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIGIE_", "CAM_")) or k == "VIGIE_TEST_PG"}
    env.update(VIGIE_T_CAM_PASS=CAM_PASSWORD, VIGIE_T_MQTT_PASS=MQTT_PASSWORD,
               VIGIE_T_DB_PASS=DB_PASSWORD, PYTHONUNBUFFERED="1", **extra)
    return env


async def vigie_cli(*args: str | Path, timeout: float = 60) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigie", *map(str, args), cwd=ROOT, env=environment(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def write_config(path: Path, dsn: str, mqtt_url: str, *, listen: str = "127.0.0.1:0",
                 client_id: str | None = None) -> Path:
    path.write_text(f"""\
node: {{name: cli-test, data_dir: {path.parent / "var"}}}
database: {{dsn: "{dsn}"}}
mqtt:
  url: "{mqtt_url}"
  username: vigie
  password: "${{VIGIE_T_MQTT_PASS}}"
  client_id: "{client_id or 'vigie-cli-' + uuid.uuid4().hex[:8]}"
  topic_prefix: "t{uuid.uuid4().hex[:6]}"
api: {{listen: "{listen}"}}
sites:
  - id: {SITE}
    name: Collège Jean Moulin
    uai: "0781234A"
    commune: Versailles
    opening_hours: {{mon: "07:30-18:30"}}
    cameras:
      # Nothing listens there: a camera that is down, which must not hold anything up.
      - {{id: entree, name: Entrée,
         url: "rtsp://admin:${{VIGIE_T_CAM_PASS}}@127.0.0.1:{free_port()}/s2"}}
    sensors:
      - {{id: porte-hall, kind: door, zone: entree}}
      - {{id: centrale-a, kind: intrusion, zone: batiment-a}}
      - {{id: fumee-cdi, kind: smoke}}
""", encoding="utf-8")
    return path


def with_password(dsn: str) -> str:
    """The DSN with a password: check-config never connects, so any password will do."""
    scheme, rest = dsn.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:${{VIGIE_T_DB_PASS}}@{host}"


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- check-config --------------------------------------------------------------------------


async def test_version() -> None:
    result = await vigie_cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"vigie {vigie.__version__}"


async def test_check_config_prints_a_summary_without_secrets(
    tmp_path: Path, fresh_dsn: str, mqtt_url: str
) -> None:
    config = write_config(tmp_path / "vigie.yaml", with_password(fresh_dsn), mqtt_url)
    result = await vigie_cli("check-config", "--config", config)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"{config}: ok — 1 site(s), 1 camera(s), 3 sensor(s)"
    assert "door 1, intrusion 1, smoke 1" in lines[1]
    assert "database: external" in result.out and mqtt_url in result.out
    assert_no_secret(result.both)


async def test_config_from_the_environment_variable(tmp_path: Path, mqtt_url: str) -> None:
    config = write_config(tmp_path / "vigie.yaml", "postgresql://x@127.0.0.1/x", mqtt_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigie", "check-config", cwd=tmp_path,
        env=environment(VIGIE_CONFIG=str(config)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out.decode().startswith(f"{config}: ok")


@pytest.mark.parametrize("name", sorted(BROKEN_CASES))
async def test_check_config_lists_every_problem_of_a_broken_file(name: str) -> None:
    path = BROKEN / name
    result = await vigie_cli("check-config", "--config", path)
    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert lines[0] == f"vigie: invalid configuration {path}"
    assert [line.strip() for line in lines[1:]] == BROKEN_CASES[name]
    assert "S3cr3t-Zebra-42" not in result.both  # the password in the broken fixtures
    assert "Traceback" not in result.err


async def test_check_config_of_a_missing_file(tmp_path: Path) -> None:
    result = await vigie_cli("check-config", "--config", tmp_path / "nope.yaml")
    assert result.code == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read" in result.err


# --- migrate and tokens --------------------------------------------------------------------


async def test_migrate(tmp_path: Path, fresh_dsn: str, mqtt_url: str) -> None:
    config = write_config(tmp_path / "vigie.yaml", fresh_dsn, mqtt_url)
    first = await vigie_cli("migrate", "--config", config)
    assert first.code == 0, first.err
    latest = load_migrations()[-1].version
    assert first.out.strip() == f"database schema at version {latest}"
    again = await vigie_cli("migrate", "-c", config)
    assert again.code == 0 and again.out == first.out
    conn = await asyncpg.connect(fresh_dsn)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        assert [r["version"] for r in versions] == [m.version for m in load_migrations()]
    finally:
        await conn.close()


async def test_migrate_without_a_database(tmp_path: Path, mqtt_url: str) -> None:
    dead = f"postgresql://vigie:${{VIGIE_T_DB_PASS}}@127.0.0.1:{free_port()}/vigie"
    config = write_config(tmp_path / "vigie.yaml", dead, mqtt_url)
    result = await vigie_cli("migrate", "--config", config, "--log-level", "error")
    assert result.code == 1
    assert result.err.startswith("vigie: cannot connect to PostgreSQL")
    assert "Traceback" not in result.err
    assert_no_secret(result.both)


async def test_token_create_list_revoke(tmp_path: Path, fresh_dsn: str, mqtt_url: str) -> None:
    config = write_config(tmp_path / "vigie.yaml", fresh_dsn, mqtt_url)
    created = await vigie_cli("token", "create", "--config", config, "--role", "operator",
                              "--name", "x", "--sites", SITE)
    assert created.code == 0, created.err
    [token] = created.out.splitlines()  # the token alone on stdout, once
    assert token.startswith("vigie_") and len(token) > 40
    assert "shown only once" in created.err and f"sites {SITE}" in created.err
    assert token not in created.err
    conn = await asyncpg.connect(fresh_dsn)
    try:
        row = await conn.fetchrow("SELECT name, role, sites, hash FROM api_tokens")
    finally:
        await conn.close()
    assert (row["name"], row["role"], row["sites"]) == ("x", "operator", [SITE])
    assert bytes(row["hash"]) == hashlib.sha256(token.encode()).digest()

    listed = await vigie_cli("token", "list", "--config", config)
    assert listed.code == 0, listed.err
    [line] = listed.out.splitlines()
    assert line.split()[:3] == ["x", "operator", "active"]
    assert f"sites={SITE}" in line and "last_used=never" in line
    assert token not in listed.both and token.removeprefix("vigie_")[:12] not in listed.both

    again = await vigie_cli("token", "create", "--config", config, "--role", "viewer",
                            "--name", "x")
    assert again.code == 1 and again.out == ""
    assert "already exists" in again.err

    revoked = await vigie_cli("token", "revoke", "--config", config, "x")
    assert revoked.code == 0, revoked.err
    assert "revoked token 'x'" in revoked.out
    listed = await vigie_cli("token", "list", "--config", config)
    [line] = listed.out.splitlines()
    assert line.split()[:3] == ["x", "operator", "revoked"]

    missing = await vigie_cli("token", "revoke", "--config", config, "x")
    assert missing.code == 1 and "no active token named 'x'" in missing.err


async def test_token_for_an_unknown_site_is_refused(
    tmp_path: Path, fresh_dsn: str, mqtt_url: str
) -> None:
    config = write_config(tmp_path / "vigie.yaml", fresh_dsn, mqtt_url)
    result = await vigie_cli("token", "create", "--config", config, "--role", "operator",
                             "--name", "y", "--sites", f"{SITE},clg-inconnu, clg-autre")
    assert result.code != 0
    assert result.out == ""
    assert "unknown site(s): clg-inconnu, clg-autre" in result.err
    assert "Traceback" not in result.err
    listed = await vigie_cli("token", "list", "--config", config)
    assert listed.out == ""  # nothing was created


@pytest.mark.parametrize("sites", ["", " ", ","])
async def test_token_with_an_empty_site_list_is_not_an_all_sites_token(
    tmp_path: Path, fresh_dsn: str, mqtt_url: str, sites: str
) -> None:
    """`--sites "$SITES"` with an empty variable must not silently widen the token to every
    site: refused, or a token that sees no site."""
    config = write_config(tmp_path / "vigie.yaml", fresh_dsn, mqtt_url)
    result = await vigie_cli("token", "create", "--config", config, "--role", "operator",
                             "--name", "scoped", "--sites", sites)
    if result.code != 0:
        assert result.out == "" and "Traceback" not in result.err
        return
    conn = await asyncpg.connect(fresh_dsn)
    try:
        stored_sites = await conn.fetchval("SELECT sites FROM api_tokens WHERE name = 'scoped'")
    finally:
        await conn.close()
    assert stored_sites is not None, "an empty --sites created a token for every site"


async def test_token_with_a_bad_role_is_a_usage_error(tmp_path: Path, mqtt_url: str) -> None:
    config = write_config(tmp_path / "vigie.yaml", "postgresql://x@127.0.0.1/x", mqtt_url)
    result = await vigie_cli("token", "create", "--config", config, "--role", "root",
                             "--name", "z")
    assert result.code == 2 and "invalid choice: 'root'" in result.err


# --- run, and stopping it ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_run_stops_cleanly_on_a_signal(
    tmp_path: Path, fresh_dsn: str, mqtt_url: str, sig: signal.Signals
) -> None:
    port = free_port()
    config = write_config(tmp_path / "vigie.yaml", fresh_dsn, mqtt_url,
                          listen=f"127.0.0.1:{port}")
    log = tmp_path / "vigie.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vigie", "run", "--config", str(config), cwd=ROOT,
            env=environment(), stdout=sink, stderr=sink)
        try:
            async with aiohttp.ClientSession() as session:

                async def ready() -> bool:
                    assert proc.returncode is None, log.read_text()
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                            return r.status == 200
                    except aiohttp.ClientConnectionError:
                        return False

                await eventually(ready, timeout=30, interval=0.1)
            proc.send_signal(sig)
            code = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log.read_text()
    assert code == 0, text
    lines = text.splitlines()
    assert any("running: 1 site(s)" in line for line in lines), text
    assert any(line.endswith("vigie: stopping") for line in lines), text
    assert any("vigie: stopped in" in line for line in lines), text
    assert "Traceback" not in text
    assert not [line for line in lines if "loop vigie:" in line]  # no loop crashed
    assert_no_secret(text)
