"""End to end: a node from its config, an intrusion published on a real Mosquitto, the
webhook receiver and Alertmanager told, an operator's resolution through the API told too;
the metrics count it, and never show a secret."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest

from tests.conftest import device_client, eventually, make_config
from tests.notify.conftest import SECRET, URL_PASSWORD, Alertmanager, Receiver
from tests.test_node_e2e import publish, token, topic
from vigie.app import Node, running_node

JM = "clg-jean-moulin"


@pytest.fixture
async def node(fresh_dsn: str, mqtt_url: str, receiver: Receiver,
               alertmanager: Alertmanager) -> AsyncIterator[Node]:
    hook_url = receiver.url.replace("http://", f"http://vigie:{URL_PASSWORD}@") + "/hook"
    config = make_config(fresh_dsn, mqtt_url, notifiers=[
        {"type": "webhook", "name": "csu", "url": hook_url, "secret": SECRET},
        {"type": "alertmanager", "name": "am", "url": alertmanager.url,
         "severities": ["critical"]},
    ], api={"listen": "127.0.0.1:0", "public_url": "https://vigie.test"})
    async with running_node(config) as node:
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
        assert node.notifiers is not None
        await eventually(lambda: _all_sending(node))
        yield node


async def _all_sending(node: Node) -> bool:
    assert node.notifiers is not None
    return len(node.notifiers.loops) == 2 and all(lp.sending for lp in node.notifiers.loops)


async def test_from_mqtt_to_the_webhook_and_alertmanager_and_back(
        node: Node, receiver: Receiver, alertmanager: Alertmanager) -> None:
    pub = device_client(node.config.mqtt.url)
    try:
        publish(pub, topic(node.config, JM, "centrale-a"), {
            "id": f"evt-{uuid.uuid4().hex[:8]}", "kind": "intrusion", "state": "alarm",
            "ts": datetime(2026, 11, 28, 2, 13, tzinfo=UTC).isoformat()})
    finally:
        pub.loop_stop()
        pub.disconnect()

    async def opened() -> bool:
        return receiver.events() == [("alert.opened", "centrale-a")]

    await eventually(opened)
    body = receiver.accepted[0].json
    alert_id = body["alert"]["id"]
    assert receiver.accepted[0].signature_ok
    assert body["url"] == f"https://vigie.test/api/v1/alerts/{alert_id}"
    [held] = await eventually(alertmanager.alerts)
    assert held["labels"]["source"] == "centrale-a"
    assert held["generatorURL"] == body["url"]

    operator = await token(node, "operator")
    async with aiohttp.ClientSession() as http, http.post(
            f"{node.api_url}/api/v1/alerts/{alert_id}/resolve",
            headers={"Authorization": f"Bearer {operator}"},
            json={"comment": "fausse alerte, chat"}) as r:
        assert r.status == 200

    async def resolved() -> bool:
        return receiver.events()[-1:] == [("alert.resolved", "centrale-a")]

    await eventually(resolved)
    await eventually(lambda: _empty(alertmanager))
    metrics = node.metrics.exposition().decode()
    assert 'vigie_notifications_sent_total{notifier="csu"} 2.0' in metrics
    assert 'vigie_notifications_sent_total{notifier="am"} 2.0' in metrics
    assert 'vigie_notifier_active{notifier="am"} 1.0' in metrics
    assert SECRET not in metrics and URL_PASSWORD not in metrics


async def _empty(am: Alertmanager) -> bool:
    return await am.alerts() == []
