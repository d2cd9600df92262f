"""The embedded PostgreSQL: first start, restart with data kept, every way of stopping."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

import vigie
from vigie.errors import StoreError
from vigie.store._embedded import embedded_postgres

# Started in a child process that the test then kills: prints the postmaster's pid once ready.
HOLDER = """\
import asyncio, sys
from pathlib import Path
import asyncpg
from vigie.store._embedded import embedded_postgres

async def main() -> None:
    async with embedded_postgres(Path(sys.argv[1])) as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.close()
        pid = (Path(sys.argv[1]) / "postgres" / "postmaster.pid").read_text().split()[0]
        print(pid, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
def data_dir(reachable_data_dir: Path) -> Path:
    return reachable_data_dir


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting for its reaper is dead)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if not await asyncio.to_thread(running, pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_restart_keeps_data_and_leaves_no_server(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vigie.store")
    async with embedded_postgres(data_dir) as dsn:
        pid = await asyncio.to_thread(postmaster_pid, data_dir)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == "vigie"
            await conn.execute("CREATE TABLE camera (id text PRIMARY KEY, name text)")
            await conn.execute("INSERT INTO camera VALUES ('entree', 'Entrée principale')")
        finally:
            await conn.close()
    assert not await asyncio.to_thread(running, pid)
    assert "new cluster" in caplog.text

    caplog.clear()
    async with embedded_postgres(data_dir) as dsn:
        second_pid = await asyncio.to_thread(postmaster_pid, data_dir)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT name FROM camera") == "Entrée principale"
        finally:
            await conn.close()
    assert not await asyncio.to_thread(running, second_pid)
    assert "existing cluster" in caplog.text
    assert "stopped in" in caplog.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_server_stops_when_vigie_dies(data_dir: Path, signum: signal.Signals) -> None:
    # A vigie killed without running its cleanup must not leave a server behind.
    env = {**os.environ, "PYTHONPATH": str(Path(vigie.__file__).parents[1])}
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(data_dir), stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None
        pid = int(await asyncio.wait_for(holder.stdout.readline(), 60))
        assert await asyncio.to_thread(running, pid)
        holder.send_signal(signum)
        assert await holder.wait() == -signum
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    assert await wait_gone(pid), f"PostgreSQL (pid {pid}) outlived vigie after {signum.name}"

    # ... and the next run starts on the same data without a fuss.
    async with embedded_postgres(data_dir) as dsn:
        conn = await asyncpg.connect(dsn)
        await conn.close()


async def test_one_server_per_data_dir(data_dir: Path) -> None:
    async with embedded_postgres(data_dir) as dsn:
        with pytest.raises(StoreError, match="another vigie process"):
            async with embedded_postgres(data_dir):
                pass
        conn = await asyncpg.connect(dsn)  # the first one is unharmed
        await conn.close()


async def test_unusable_data_dir_is_a_store_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(StoreError, match="embedded PostgreSQL"):
        async with embedded_postgres(not_a_dir):
            pass

    (tmp_path / "var" / "postgres").mkdir(parents=True)
    (tmp_path / "var" / "postgres" / "stray").write_text("")
    with pytest.raises(StoreError, match="not a PostgreSQL cluster"):
        async with embedded_postgres(tmp_path / "var"):
            pass
