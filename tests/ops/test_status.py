"""`vigie status` against real nodes (PostgreSQL, Mosquitto): ready, not ready, unreachable,
with and without a token, as text and as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import eventually, free_port, make_config
from tests.deploy.live import Publisher, make_token
from vigie.app import Node, running_node

VIGIE = str(Path(sys.executable).with_name("vigie"))


async def vigie(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a subprocess while this event loop keeps serving the node."""
    env = {"PATH": "/usr/bin:/bin", "VIGIE_TOKEN": ""}
    proc = await asyncio.create_subprocess_exec(VIGIE, *args, env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def node(fresh_dsn: str, mqtt_url: str) -> AsyncIterator[Node]:
    async with running_node(make_config(fresh_dsn, mqtt_url)) as node:
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
        yield node


async def _open_alerts(node: Node) -> int:
    async with node.store.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM alerts WHERE kind = 'intrusion'"))


async def test_status_of_a_ready_node_with_a_token(node: Node) -> None:
    publisher = Publisher(node)
    try:
        await asyncio.to_thread(publisher.event, "clg-jean-moulin", "centrale-a", "intrusion",
                                "alarm")
    finally:
        await asyncio.to_thread(publisher.close)
    await eventually(lambda: _open_alerts(node))
    token = await make_token(node, "viewer")

    code, out, err = await vigie("status", "--url", node.api_url, "--token", token)
    print(out)  # what an operator sees (pytest -s)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"vigie 0.1.0 · node {node.config.node.name} · {node.api_url}")
    assert lines[1].startswith("ready: database ok · mqtt ok")
    assert "\x1b[" not in out  # no colours when not on a terminal
    assert "1 events stored" in out
    assert "unresolved alerts: 1 critical" in out
    assert any(ln.startswith("clg-jean-moulin ") and "1 critical" in ln for ln in lines)
    assert any("critical" in ln and "clg-jean-moulin/centrale-a" in ln for ln in lines)
    assert "S3cr3t" not in out  # the test camera's password

    code, out, _ = await vigie("status", "--url", node.api_url, "--token", token, "--json")
    body = json.loads(out)
    assert code == 0 and body["ready"] and body["authorized"] and body["exit_code"] == 0
    assert body["build"]["node"] == node.config.node.name
    assert [a["kind"] for a in body["alerts"]] == ["intrusion"]


async def test_status_without_token_and_with_a_bad_one(node: Node) -> None:
    code, out, _ = await vigie("status", "--url", node.api_url)
    assert code == 0
    assert "give --token or $VIGIE_TOKEN" in out and "ready:" in out
    code, out, _ = await vigie("status", "--url", node.api_url, "--token", "nope")
    assert code == 2 and "token refused" in out


async def test_status_of_a_node_that_is_not_ready(fresh_dsn: str) -> None:
    closed = free_port()  # nothing listens there: the broker is "down"
    config = make_config(fresh_dsn, f"mqtt://127.0.0.1:{closed}")
    async with running_node(config) as node:
        code, out, _ = await vigie("status", "--url", node.api_url)
    assert code == 1
    assert "NOT READY" in out and f"mqtt not connected to 127.0.0.1:{closed}" in out


async def test_status_of_nothing() -> None:
    code, out, _ = await vigie("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and out.startswith("unreachable:")
