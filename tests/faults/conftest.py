"""Fixtures of the fault tests: a PostgreSQL cluster of their own, a Mosquitto each, the
RTSP harness of tests/cameras, and the figures each test reports (printed at the end of the
run, and written to $VIGIE_FAULTS_REPORT as JSON when set)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.cameras.conftest import h264_clip, rtsp_server, rtsp_server_process  # noqa: F401
from tests.conftest import Mosquitto
from tests.faults.harness import PgCluster

FIGURES: list[tuple[str, dict[str, Any]]] = []


def record(test: str, **figures: Any) -> None:
    """Figures for the closing report of the run."""
    FIGURES.append((test, figures))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault-test figures")
    for test, figures in FIGURES:
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        terminalreporter.write_line(f"{test}: {shown}")
    report = os.environ.get("VIGIE_FAULTS_REPORT")
    if report:
        Path(report).write_text(json.dumps([{"test": t, **f} for t, f in FIGURES], indent=2))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    base = Path(tempfile.mkdtemp(prefix="vigie-faults-pg-"))
    base.chmod(0o755)  # the server runs as postgres
    cluster = PgCluster(base / "cluster")
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def cluster_dsn(pg_cluster: PgCluster) -> AsyncIterator[str]:
    """A fresh database on the tests' own cluster; the cluster is running again after the
    test (a test that stopped it must have started it, or this says so)."""
    name = f"vigie_fault_{os.urandom(5).hex()}"
    admin = await asyncpg.connect(pg_cluster.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_cluster.admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    if not pg_cluster.running():
        pg_cluster.start()
    admin = await asyncpg.connect(pg_cluster.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own, with persistence (restartable on the same port).

    Started as root, Mosquitto switches to the `mosquitto` user, which cannot write into
    pytest's private temporary directory: persistence would then fail silently (sessions
    and queued messages gone at a restart). `user root` keeps it where it can write."""
    mosquitto = Mosquitto(tmp_path / "mosquitto", extra="user root" if os.geteuid() == 0
                          else "")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="vigie-faults-node-"))
    yield base / "var"
    shutil.rmtree(base, ignore_errors=True)
