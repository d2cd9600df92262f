"""API tokens across a PostgreSQL outage and a restart, on the tests' own cluster (pg_ctl).

The documented bound, shown: a token revoked while the node could not hear of it (here: the
node stopped) is still in its snapshot, so a node restarted while PostgreSQL is down
accepts it; the moment PostgreSQL answers again, the database decides and refuses it, and
the snapshot on disk forgets it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import eventually, make_config
from tests.faults.harness import PgCluster
from vigie.api._token_snapshot import decode
from vigie.app import running_node
from vigie.store._tokens import create_token, revoke_token

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


async def _status(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status


def _names(path: Path) -> set[str]:
    return {t.name for t in decode(path.read_bytes())[0].values()} if path.exists() else set()


async def _async(value: Any) -> Any:
    return value


async def test_a_stale_snapshot_lasts_until_postgres_answers_again(
    pg_cluster: PgCluster, cluster_dsn: str, mqtt_url: str,
) -> None:
    config = make_config(cluster_dsn, mqtt_url)
    path = config.node.data_dir / "api-tokens.json"
    async with running_node(config, with_mqtt=False) as node:
        async with node.store.connection() as conn:
            kept, _ = await create_token(conn, name="csu", role="operator", sites=None,
                                         expires_at=None)
            stale, _ = await create_token(conn, name="stale", role="admin", sites=None,
                                          expires_at=None)
        await eventually(lambda: _async(_names(path) == {"csu", "stale"}))
    # Revoked while no node listens, then the database goes away.
    conn = await asyncpg.connect(cluster_dsn)
    try:
        await revoke_token(conn, "stale")
    finally:
        await conn.close()
    pg_cluster.stop("fast")

    async with running_node(config, with_mqtt=False) as node, aiohttp.ClientSession() as http:
        alerts = node.api_url + "/api/v1/alerts?state=open"
        assert not node.store.available
        assert await _status(http, alerts, kept) == 200
        assert await _status(http, alerts, stale) == 200  # the bound: not heard of yet
        assert node.config.api.token_snapshot_every == 30.0
        # What an SRE watches: the snapshot in use is older than this run (read by the last).
        age = node.metrics.registry.get_sample_value("vigie_api_token_snapshot_age_seconds")
        assert age is not None and age >= time.monotonic() - node.started_at

        pg_cluster.start()
        await eventually(lambda: _async(node.store.available), timeout=60)
        # The database decides at once, and the file follows without waiting for a round.
        assert await _status(http, alerts, stale) == 401
        assert await _status(http, alerts, kept) == 200
        await eventually(lambda: _async(_names(path) == {"csu"}), timeout=5)
        fresh = node.metrics.registry.get_sample_value("vigie_api_token_snapshot_age_seconds")
        assert fresh is not None and fresh < age
