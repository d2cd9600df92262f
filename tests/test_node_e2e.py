"""End to end on real parts: a node from a config, events published to a real Mosquitto,
rows in a real PostgreSQL, alerts through the HTTP API."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest

from tests.conftest import device_client, eventually, make_config
from vigie.app import Node, running_node
from vigie.config import Config
from vigie.store._tokens import create_token


def publish(client: paho.Client, topic: str, payload: Any) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    client.publish(topic, body, qos=1).wait_for_publish(5)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base, self.token = session, base, token

    async def call(self, method: str, path: str, token: str | None = None,
                   **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        async with self.session.request(method, self.base + path, headers=headers,
                                        **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body


@pytest.fixture
async def node(fresh_dsn: str, mqtt_url: str) -> AsyncIterator[Node]:
    async with running_node(make_config(fresh_dsn, mqtt_url)) as node:
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
        yield node


async def token(node: Node, role: str, sites: list[str] | None = None) -> str:
    async with node.store.connection() as conn:
        value, _ = await create_token(conn, name=f"{role}-{uuid.uuid4().hex[:6]}", role=role,
                                      sites=sites, expires_at=None)
    return value


@pytest.fixture
async def api(node: Node) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, node.api_url, await token(node, "operator"))


def topic(config: Config, site: str, sensor: str, leaf: str = "event") -> str:
    return f"{config.mqtt.topic_prefix}/{site}/{sensor}/{leaf}"


async def count(node: Node, sql: str, *args: Any) -> int:
    async with node.store.connection() as conn:
        return int(await conn.fetchval(sql, *args))


async def test_intrusion_raises_one_alert_with_count_and_history(node: Node, api: Api) -> None:
    pub = device_client(node.config.mqtt.url)
    t0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    for i in range(3):
        publish(pub, topic(node.config, "clg-jean-moulin", "centrale-a"), {
            "id": f"evt-{i}", "ts": (t0 + timedelta(seconds=i)).isoformat(),
            "kind": "intrusion", "state": "alarm", "zone": "batiment-a"})
    await eventually(lambda: count(node, "SELECT count(*) FROM events"))
    await eventually(lambda: _eq(count(node, "SELECT count(*) FROM events"), 3))

    status, body = await api.call("GET", "/api/v1/alerts?state=open")
    assert status == 200
    [alert] = body["items"]
    assert alert["kind"] == "intrusion" and alert["severity"] == "critical"
    assert alert["count"] == 3 and alert["source"] == "centrale-a"
    assert alert["fingerprint"] == "clg-jean-moulin/centrale-a/intrusion"

    # A clearing event is recorded but does not close an intrusion alert.
    publish(pub, topic(node.config, "clg-jean-moulin", "centrale-a"),
            {"id": "evt-clear", "ts": (t0 + timedelta(minutes=1)).isoformat(), "state": "normal"})
    await eventually(lambda: _eq(count(node, "SELECT count(*) FROM events"), 4))
    status, body = await api.call("GET", f"/api/v1/alerts/{alert['id']}")
    assert body["state"] == "open"

    status, body = await api.call("POST", f"/api/v1/alerts/{alert['id']}/ack",
                                  json={"comment": "rondier envoyé"})
    assert status == 200 and body["state"] == "acknowledged"
    assert body["acknowledged_by"].startswith("operator-")
    status, body = await api.call("POST", f"/api/v1/alerts/{alert['id']}/comments",
                                  json={"comment": "fenêtre cassée côté cour"})
    assert status == 201
    status, body = await api.call("POST", f"/api/v1/alerts/{alert['id']}/resolve", json={})
    assert status == 200 and body["state"] == "resolved"
    status, body = await api.call("POST", f"/api/v1/alerts/{alert['id']}/ack")
    assert status == 409 and body["error"]["code"] == "conflict"

    status, body = await api.call("GET", f"/api/v1/alerts/{alert['id']}")
    actions = [(h["action"], h["comment"]) for h in body["history"]]
    assert actions == [("opened", None), ("acknowledged", "rondier envoyé"),
                       ("commented", "fenêtre cassée côté cour"), ("resolved", None)]

    # After resolution, a new occurrence opens a new alert.
    publish(pub, topic(node.config, "clg-jean-moulin", "centrale-a"),
            {"id": "evt-again", "ts": (t0 + timedelta(hours=1)).isoformat(), "state": "alarm"})
    await eventually(lambda: _eq(count(node, "SELECT count(*) FROM alerts"), 2))
    pub.loop_stop()


async def _eq(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_redelivered_event_is_stored_once(node: Node) -> None:
    pub = device_client(node.config.mqtt.url)
    payload = {"id": "dup-1", "ts": "2026-11-28T10:00:00+01:00", "state": "open"}
    for _ in range(3):
        publish(pub, topic(node.config, "clg-pasteur", "porte-gymnase"), payload)
    # Same topic+payload with a timestamp and no id: one row too.
    payload2 = {"ts": "2026-11-28T10:05:00+01:00", "state": "closed"}
    for _ in range(2):
        publish(pub, topic(node.config, "clg-pasteur", "porte-gymnase"), payload2)
    publish(pub, topic(node.config, "clg-pasteur", "centrale"),
            {"id": "marker", "ts": "2026-11-28T10:06:00+01:00", "state": "normal"})
    await eventually(lambda: count(node, "SELECT count(*) FROM events WHERE sensor = 'centrale'"))
    assert await count(node, "SELECT count(*) FROM events WHERE sensor = 'porte-gymnase'") == 2
    pub.loop_stop()


async def test_malformed_messages_are_dead_lettered_and_ingest_goes_on(
    node: Node, api: Api
) -> None:
    pub = device_client(node.config.mqtt.url)
    prefix = node.config.mqtt.topic_prefix
    bad = [
        (f"{prefix}/clg-pasteur/centrale/event", b"{not json"),
        (f"{prefix}/clg-pasteur/centrale/event", b"\xff\xfe\x00binary"),
        (f"{prefix}/clg-pasteur/centrale/event", json.dumps({"state": 42}).encode()),
        (f"{prefix}/clg-inconnu/centrale/event", json.dumps({"state": "alarm"}).encode()),
        (f"{prefix}/clg-pasteur/inconnu/event", json.dumps({"state": "alarm"}).encode()),
        (f"{prefix}/clg-pasteur/centrale/event", b"{" + b" " * 70_000 + b"}"),
    ]
    for t, payload in bad:
        publish(pub, t, payload)
    publish(pub, topic(node.config, "clg-pasteur", "centrale"),
            {"id": "good", "ts": "2026-11-28T03:00:00Z", "state": "alarm"})
    await eventually(lambda: count(node, "SELECT count(*) FROM events"))
    assert await count(node, "SELECT count(*) FROM dead_letters") == len(bad)
    reasons = {r for (r,) in await _rows(node, "SELECT reason FROM dead_letters")}
    assert reasons == {"not_json", "binary", "invalid", "unknown_site", "unknown_sensor",
                       "oversized"}

    admin = await token(node, "admin")
    status, body = await api.call("GET", "/api/v1/dead-letters", token=admin)
    assert status == 200 and len(body["items"]) == len(bad)
    status, _ = await api.call("GET", "/api/v1/dead-letters")  # operator
    assert status == 403

    async with aiohttp.ClientSession() as s, s.get(node.api_url + "/metrics") as r:
        text = await r.text()
    assert 'vigie_ingest_rejected_total{reason="not_json"} 1.0' in text
    assert 'vigie_sensor_events_total{kind="intrusion",site="clg-pasteur"} 1.0' in text
    assert "vigie_db_write_queue" in text and "vigie_build_info" in text
    assert 'vigie_alerts_total{kind="intrusion",severity="critical",site="clg-pasteur"} 1.0' in text
    assert "vigie_event_to_alert_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text
    pub.loop_stop()


async def _rows(node: Node, sql: str) -> list[Any]:
    async with node.store.connection() as conn:
        return list(await conn.fetch(sql))


async def test_zigbee2mqtt_door_battery_and_availability(node: Node, api: Api) -> None:
    pub = device_client(node.config.mqtt.url)
    z2m = "zigbee2mqtt/clg-jean-moulin/contact-cour"
    publish(pub, z2m, {"contact": False, "battery": 12, "linkquality": 90,
                       "last_seen": "2026-11-28T22:00:00+01:00"})
    alerts = await eventually(lambda: _open_kinds(api), timeout=10)
    assert {"door", "battery_low"} <= alerts
    # Closing the door resolves the door alert by itself; the battery alert stays.
    publish(pub, z2m, {"contact": True, "battery": 12, "linkquality": 91,
                       "last_seen": "2026-11-28T22:01:00+01:00"})
    await eventually(lambda: _kinds_are(api, {"battery_low"}))
    # The device's availability: offline raises a technical alert, online resolves it.
    publish(pub, f"{z2m}/availability", b"offline")
    await eventually(lambda: _kinds_are(api, {"battery_low", "device_offline"}))
    publish(pub, f"{z2m}/availability", {"state": "online"})
    await eventually(lambda: _kinds_are(api, {"battery_low"}))
    _, body = await api.call("GET", "/api/v1/sensors?site=clg-jean-moulin")
    [cour] = [s for s in body["items"] if s["id"] == "contact-cour"]
    assert cour["last_state"] == "closed" and cour["battery"] == 12 and cour["online"] is True
    pub.loop_stop()


async def _open_kinds(api: Api) -> set[str]:
    _, body = await api.call("GET", "/api/v1/alerts?state=open,acknowledged")
    return {a["kind"] for a in body["items"]}


async def _kinds_are(api: Api, kinds: set[str]) -> bool:
    return await _open_kinds(api) == kinds


async def test_door_severity_depends_on_opening_hours(node: Node, api: Api) -> None:
    pub = device_client(node.config.mqtt.url)
    # Thursday 10:00 in Versailles: open → info. Saturday 03:00: closed → critical.
    publish(pub, topic(node.config, "clg-jean-moulin", "porte-hall"),
            {"id": "d1", "ts": "2026-11-26T10:00:00+01:00", "state": "open"})
    publish(pub, topic(node.config, "clg-pasteur", "porte-gymnase"),
            {"id": "d2", "ts": "2026-11-28T03:00:00+01:00", "state": "open"})
    await eventually(lambda: count(node, "SELECT count(*) = 2 FROM alerts"))
    _, body = await api.call("GET", "/api/v1/alerts")
    by_site = {a["site"]: a["severity"] for a in body["items"]}
    assert by_site == {"clg-jean-moulin": "info", "clg-pasteur": "critical"}
    pub.loop_stop()
