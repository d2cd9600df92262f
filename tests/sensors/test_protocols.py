"""The MQTT read path on a real broker, in both protocol versions and at every QoS: the
node frames and decodes PUBLISHes itself (vigie.sensors._framing) and leaves the rest to
paho; every message arrives once, whatever the mix, including one larger than a read."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.conftest import eventually, make_config
from tests.sensors.test_ingest import Publisher, node_of


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_every_message_arrives_once_at_every_qos(
        fresh_dsn: str, mqtt_url: str, protocol: str, qos: int) -> None:
    config = make_config(fresh_dsn, mqtt_url, mqtt={"protocol": protocol, "qos": qos})
    prefix = config.mqtt.topic_prefix
    sent = 0
    async with node_of(config):
        pub = Publisher(mqtt_url)
        try:
            infos = []
            for i in range(600):
                body = {"id": f"m{i}", "ts": "2026-11-28T03:00:00Z", "state": "normal"}
                infos.append(pub.client.publish(f"{prefix}/clg-pasteur/centrale/event",
                                                json.dumps(body).encode(), qos=i % 3))
                sent += 1
                if i == 300:  # larger than one read of the socket: a dead letter
                    big = b'{"state": "normal", "pad": "' + b"x" * 100_000 + b'"}'
                    infos.append(pub.client.publish(
                        f"{prefix}/clg-pasteur/centrale/event", big, qos=1))
            await pub.wait(infos)
        finally:
            pub.close()
        conn = await asyncpg.connect(fresh_dsn)
        try:
            async def all_in() -> bool:
                events = await conn.fetchval("SELECT count(*) FROM events")
                dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
                return bool(events == sent and dead == 1)

            await eventually(all_in, timeout=30)
            keys = await conn.fetch("SELECT dedup_key FROM events")
            assert len({k["dedup_key"] for k in keys}) == sent
            reason = await conn.fetchval("SELECT reason FROM dead_letters")
            assert reason == "oversized"
        finally:
            await conn.close()
