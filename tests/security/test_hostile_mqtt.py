"""Hostile MQTT traffic end to end: 10,000 random and mutated payloads (the decoder fuzz
corpus) published to a real Mosquitto and ingested by a running node. Nothing crashes;
every message the decoder refuses is in the dead-letter table with its reason, counted in
the metric; the valid ones are stored; and ingestion goes on after them."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Mosquitto, eventually, make_config
from tests.sensors.test_decode_fuzz import CONFIG, NOW, ROUTER, fuzz_case
from vigie.app import running_node
from vigie.errors import IngestError

RUNS = 10_000


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own: the fuzz corpus uses the default `vigie/` prefix."""
    mosquitto = Mosquitto(tmp_path / "mosquitto")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def corpus() -> list[tuple[str, bytes, str]]:
    """(topic, payload, what the decoder says: "ok" or the reason) for every case on a
    topic the node subscribes to (others never reach it)."""
    rng = random.Random(20261128)
    filters = ROUTER.subscriptions()
    pattern = re.compile("^(" + "|".join(
        re.escape(f).replace(r"\+", "[^/]+") for f in filters) + ")$")
    cases = []
    while len(cases) < RUNS:
        topic, payload = fuzz_case(rng)
        if not pattern.match(topic):
            continue
        try:
            ROUTER.decode(topic, payload, NOW)
            verdict = "ok"
        except IngestError as exc:
            verdict = exc.reason
        cases.append((topic, payload, verdict))
    return cases


def publish_all(port: int, cases: list[tuple[str, bytes, str]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fuzzer")
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload, _ in cases]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.slow
async def test_ten_thousand_hostile_messages_are_dead_lettered_with_their_reason(
    fresh_dsn: str, broker: Mosquitto
) -> None:
    cases = corpus()
    expected = Counter(v for _, _, v in cases if v != "ok")
    site = CONFIG.sites[0].model_dump(mode="json")
    config = make_config(fresh_dsn, broker.url, sites=[site],
                         mqtt={"topic_prefix": "vigie"})
    # The corpus was judged at NOW: the node's clock says the same.
    async with running_node(config, clock=lambda: NOW) as node:
        assert node.subscriber is not None and await node.subscriber.wait_connected(10)
        await asyncio.to_thread(publish_all, broker.port, cases)

        async def dead_letters() -> Counter[str] | None:
            async with node.store.connection() as conn:
                rows = await conn.fetch(
                    "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason")
            found = Counter({r["reason"]: r["n"] for r in rows})
            return found if sum(found.values()) >= sum(expected.values()) else None

        found = await eventually(dead_letters, timeout=120, interval=0.5)
        assert found == expected
        # After all that, a good message is still taken.
        await asyncio.to_thread(publish_all, broker.port, [(
            "vigie/lycee-a/panic/event", b'{"id": "after-fuzz", "state": "alarm"}', "ok")])

        async def stored() -> bool:
            async with node.store.connection() as conn:
                return bool(await conn.fetchval(
                    "SELECT 1 FROM events WHERE dedup_key LIKE 'id:%/after-fuzz'"))

        assert await eventually(stored, timeout=30)
        metrics = node.metrics.exposition().decode()
        counted = sum(float(m.group(1)) for m in re.finditer(
            r'^vigie_ingest_rejected_total\{reason="[^"]+"\} (\S+)$', metrics, re.M))
        assert counted == sum(expected.values())
        assert node.readiness()["ingest"] == "ok"
    print(f"\nhostile MQTT: {len(cases)} messages, {sum(expected.values())} dead-lettered "
          f"({dict(expected.most_common())}), {len(cases) - sum(expected.values())} accepted")
