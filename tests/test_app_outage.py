"""A node started while its PostgreSQL does not answer: it comes up, says why it is not
ready, spools what it receives, and stops cleanly without ever having reached it.

(With the database coming back, on a cluster stopped and started with pg_ctl: see
tests/faults/test_outage_start.py.)
"""

from __future__ import annotations

import logging
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import device_client, eventually, free_port, make_config
from tests.test_node_e2e import publish, topic
from vigie.api._token_snapshot import KnownToken, decode, encode, write_file
from vigie.app import running_node
from vigie.store._tokens import create_token, revoke_token, token_hash


@pytest.mark.parametrize("cluster", [False, True], ids=["alone", "cluster"])
async def test_a_node_comes_up_without_its_database_and_stops_cleanly(
    mqtt_url: str, cluster: bool,
) -> None:
    nowhere = f"postgresql://vigie@127.0.0.1:{free_port()}/vigie"  # nothing listens there
    config = make_config(nowhere, mqtt_url, cluster={"enabled": cluster})
    client = device_client(mqtt_url)
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


# API tokens while the database is away: the node's token snapshot (vigie.api._token_snapshot).


async def _call(http: aiohttp.ClientSession, url: str, token: str, method: str = "GET"
                ) -> tuple[int, Any]:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}) as r:
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, body


def _snapshot_names(path: Path) -> set[str]:
    return {t.name for t in decode(path.read_bytes())[0].values()} if path.exists() else set()


async def test_a_node_restarted_during_an_outage_authenticates_from_its_token_snapshot(
    fresh_dsn: str, mqtt_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(fresh_dsn, mqtt_url)
    path = config.node.data_dir / "api-tokens.json"
    async with running_node(config) as node:
        async with node.store.connection() as conn:
            operator, _ = await create_token(conn, name="csu", role="operator", sites=None,
                                             expires_at=None)
            short, _ = await create_token(conn, name="short", role="operator", sites=None,
                                          expires_at=datetime.now(UTC) + timedelta(seconds=4))
            gone, _ = await create_token(conn, name="gone", role="admin", sites=None,
                                         expires_at=None)
        # Heard at once (NOTIFY), well before the 30 s round.
        await eventually(lambda: _async(_snapshot_names(path) == {"csu", "short", "gone"}))
        async with node.store.connection() as conn:
            await revoke_token(conn, "gone")
        await eventually(lambda: _async(_snapshot_names(path) == {"csu", "short"}))
    raw = path.read_bytes()
    for token in (operator, short, gone):
        assert token.encode() not in raw
    assert token_hash(operator).hex().encode() in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    nowhere = f"postgresql://vigie@127.0.0.1:{free_port()}/vigie"  # nothing listens there
    config = make_config(nowhere, mqtt_url, node={"data_dir": str(config.node.data_dir)},
                         api={"auth_failures_per_minute": 5})
    client = device_client(mqtt_url)
    try:
        async with running_node(config) as node, aiohttp.ClientSession() as http:
            assert not node.store.available
            assert node.subscriber is not None and await node.subscriber.wait_connected(5)
            api = node.api_url + "/api/v1"
            publish(client, topic(config, "clg-jean-moulin", "centrale-a"),
                    {"id": f"restart-{uuid.uuid4().hex}", "state": "alarm"})
            [alert] = await eventually(lambda: _async(
                [a for a in node.alerts.open_alerts.values() if a.kind == "intrusion"]))
            # Reads from memory answer.
            status, cameras = await _call(http, api + "/cameras", operator)
            assert status == 200 and [c["id"] for c in cameras["items"]] == ["entree"], cameras
            status, alerts = await _call(http, api + "/alerts?state=open", operator)
            assert status == 200 and alerts["from_memory"], alerts
            assert [a["id"] for a in alerts["items"]] == [str(alert.id)]
            # Writes are refused, and audited on disk (the audit spool).
            status, refused = await _call(http, f"{api}/alerts/{alert.id}/ack", operator,
                                          "POST")
            assert status == 503 and refused["error"]["code"] == "database_unavailable"
            status, _ = await _call(http, api + "/cameras/clg-jean-moulin/entree/snapshot",
                                    operator)
            assert status in (404, 503)  # an audited read: no picture, no crash

            async def audited() -> bool:
                async with http.get(node.api_url + "/metrics") as r:
                    text = await r.text()
                return 'vigie_queue_length{queue="audit_spool"} 2.0' in text

            await eventually(audited)
            # Unknown, revoked (before the round that wrote the snapshot) and expired: 401.
            await eventually(lambda: _async(datetime.now(UTC) > _expiry(path, "short")))
            assert (await _call(http, api + "/alerts", operator))[0] == 200
            for token in ("vigie_" + "x" * 43, gone, short):
                status, body = await _call(http, api + "/alerts", token)
                assert status == 401 and body["error"]["code"] == "unauthorized", body
            # The throttle still counts failures, and a guess from a throttled address is
            # not even checked; a token accepted in the last seconds still passes it.
            for _ in range(2):
                assert (await _call(http, api + "/alerts", "vigie_guess"))[0] == 401
            assert (await _call(http, api + "/alerts", "vigie_guess"))[0] == 429
            assert (await _call(http, api + "/alerts", operator))[0] == 200
    finally:
        client.loop_stop()
        client.disconnect()
    for token in (operator, short, gone):
        assert token not in caplog.text
        assert token_hash(token).hex() not in caplog.text


@pytest.mark.parametrize("snapshot", ["missing", "corrupt", "writable-by-others"])
async def test_without_a_usable_token_snapshot_tokens_wait_for_the_database(
    mqtt_url: str, snapshot: str, caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = f"postgresql://vigie@127.0.0.1:{free_port()}/vigie"
    config = make_config(nowhere, mqtt_url)
    path = config.node.data_dir / "api-tokens.json"
    token = "vigie_" + "t" * 43
    if snapshot != "missing":
        raw = encode([KnownToken(token_hash(token), "csu", "admin", None, None)],
                     datetime.now(UTC))
        write_file(path, raw[:-5] if snapshot == "corrupt" else raw)
        if snapshot == "writable-by-others":
            path.chmod(0o666)
    async with running_node(config, with_mqtt=False) as node, aiohttp.ClientSession() as http:
        assert (await _call(http, node.api_url + "/healthz", token))[0] == 200
        for candidate in (token, "vigie_unknown"):
            status, body = await _call(http, node.api_url + "/api/v1/alerts", candidate)
            assert status == 503 and body["error"]["code"] == "database_unavailable", body
    assert ("no API token snapshot" if snapshot == "missing" else
            "API token snapshot") in caplog.text
    assert [r for r in caplog.records if "token snapshot" in r.getMessage()
            and r.levelno == logging.WARNING]
    assert token not in caplog.text


def _expiry(path: Path, name: str) -> datetime:
    [expires] = [t.expires_at for t in decode(path.read_bytes())[0].values() if t.name == name]
    assert expires is not None
    return expires


async def _async(value: Any) -> Any:
    return value
