"""A lone node (cluster.enabled off) keeps working as before, lists itself in
/api/v1/nodes, and says so when another node shares its database: both then watch every
camera."""

from __future__ import annotations

import logging
import uuid

import aiohttp
import pytest

from tests.conftest import make_config
from vigie.app import running_node
from vigie.store._tokens import create_token


async def test_lone_nodes_list_themselves_and_warn_about_each_other(
        fresh_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vigie.cluster")
    first = make_config(fresh_dsn, "mqtt://127.0.0.1:1", node={"name": "alone-1"})
    second = make_config(fresh_dsn, "mqtt://127.0.0.1:1", node={"name": "alone-2"})
    async with running_node(first, with_mqtt=False) as node:
        assert node.leases is None and node.cameras is not None
        # Every configured camera is judged, as by a lone node before several nodes existed.
        assert node.cameras._judging is None
        assert not [r for r in caplog.records if r.name == "vigie.cluster"]
        async with running_node(second, with_mqtt=False):
            assert any("alone-1" in r.getMessage() and "cluster.enabled is off" in
                       r.getMessage() for r in caplog.records)
            async with node.store.connection() as conn:
                token, _ = await create_token(conn, name=f"v-{uuid.uuid4().hex[:6]}",
                                              role="viewer", sites=None, expires_at=None)
            async with aiohttp.ClientSession() as http, http.get(
                    f"{node.api_url}/api/v1/nodes",
                    headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                body = await r.json()
        listed = {n["name"]: (n["state"], n["clustered"], n["cameras"]) for n in body["items"]}
        assert listed == {"alone-1": ("up", False, 1), "alone-2": ("up", False, 1)}
    async with running_node(first, with_mqtt=False) as node, node.store.connection() as conn:
        from vigie.cluster import list_nodes

        states = {n.name: n.state for n in await list_nodes(conn)}
    # The second left gracefully; the first is back.
    assert states == {"alone-1": "up", "alone-2": "stopped"}
