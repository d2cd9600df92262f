"""A node started while its PostgreSQL does not answer: it comes up, says why it is not
ready, spools what it receives, and stops cleanly without ever having reached it.

(With the database coming back, on a cluster stopped and started with pg_ctl: see
tests/faults/test_outage_start.py.)
"""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from tests.conftest import eventually, free_port, make_config
from tests.test_node_e2e import publish, publisher, topic
from vigie.app import running_node


@pytest.mark.parametrize("cluster", [False, True], ids=["alone", "cluster"])
async def test_a_node_comes_up_without_its_database_and_stops_cleanly(
    mqtt_url: str, cluster: bool,
) -> None:
    nowhere = f"postgresql://vigie@127.0.0.1:{free_port()}/vigie"  # nothing listens there
    config = make_config(nowhere, mqtt_url, cluster={"enabled": cluster})
    client = publisher(mqtt_url)
    try:
        async with running_node(config) as node, aiohttp.ClientSession() as http:
            async with http.get(node.api_url + "/healthz") as r:
                assert r.status == 200
            async with http.get(node.api_url + "/readyz") as r:
                body = await r.json()
            assert r.status == 503
            assert body["checks"]["database"].startswith("database unreachable: "), body
            assert "vigie@127.0.0.1" not in str(body)  # the DSN is not shown
            assert not [k for k in body["checks"] if k.startswith("loop:")], body
            assert node.subscriber is not None and await node.subscriber.wait_connected(5)
            writer = node.writer
            assert writer is not None
            for n in range(3):
                publish(client, topic(config, "clg-jean-moulin", "centrale-a"),
                        {"id": f"cold-{uuid.uuid4().hex}", "state": "alarm", "n": n})

            async def spooled() -> bool:
                return writer.spooled >= 3

            await eventually(spooled)
            # Decided in memory meanwhile: one intrusion alert, its repeats counted.
            [alert] = [a for a in node.alerts.open_alerts.values() if a.kind == "intrusion"]
            assert alert.count == 3 and alert.source == "centrale-a"
        # Stopped (no database to flush to, nothing waited for): kept for the next start.
        assert writer.spool_pending == 3
    finally:
        client.loop_stop()
        client.disconnect()
