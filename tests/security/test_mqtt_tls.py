"""MQTT over TLS against a real Mosquitto that checks vigie's client certificate, username
and password: events flow; a broker vigie cannot verify, or a missing client certificate,
gets no connection."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import eventually, make_config
from tests.security.conftest import MQTT_USER, TlsBroker
from vigie.app import running_node
from vigie.config import Config


def tls_config(dsn: str, broker: TlsBroker, **tls: Any) -> Config:
    certs = broker.certs
    return make_config(dsn, broker.url, mqtt={
        "username": MQTT_USER, "password_file": str(broker.password_file),
        "tls": {"ca_file": str(certs.ca), "cert_file": str(certs.client_cert),
                "key_file": str(certs.client_key), **tls}})


def publish(broker: TlsBroker, topic: str, payload: bytes) -> None:
    """As a site's gateway would: its own certificate, the same credentials."""
    certs = broker.certs
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gateway-test")
    client.username_pw_set(MQTT_USER, broker.password_file.read_text().strip())
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    client.tls_set_context(context)
    client.connect("localhost", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_events_flow_over_tls_with_certificate_and_password(
    fresh_dsn: str, tls_broker: TlsBroker
) -> None:
    config = tls_config(fresh_dsn, tls_broker)
    async with running_node(config) as node:
        assert node.subscriber is not None
        assert await node.subscriber.wait_connected(10), "no TLS connection to the broker"
        topic = f"{config.mqtt.topic_prefix}/clg-pasteur/centrale/event"
        stamp = datetime.now(UTC).isoformat()
        await asyncio.to_thread(publish, tls_broker, topic,
                                f'{{"state": "alarm", "ts": "{stamp}"}}'.encode())

        async def stored() -> Any:
            async with node.store.connection() as conn:
                return await conn.fetchval(
                    "SELECT count(*) FROM events WHERE site = 'clg-pasteur'")

        assert await eventually(stored) == 1


@pytest.mark.parametrize("case", ["unknown CA", "no client certificate", "wrong host name"])
async def test_no_connection_without_mutual_trust(fresh_dsn: str, tls_broker: TlsBroker,
                                                  case: str) -> None:
    certs = tls_broker.certs
    config = {
        "unknown CA": lambda: tls_config(fresh_dsn, tls_broker, ca_file=str(certs.other_ca)),
        "no client certificate": lambda: make_config(fresh_dsn, tls_broker.url, mqtt={
            "username": MQTT_USER, "password_file": str(tls_broker.password_file),
            "tls": {"ca_file": str(certs.ca)}}),
        # The certificate names localhost and 127.0.0.1, not this name.
        "wrong host name": lambda: make_config(
            fresh_dsn, f"mqtts://127.0.0.2:{tls_broker.port}", mqtt={
                "username": MQTT_USER, "password_file": str(tls_broker.password_file),
                "tls": {"ca_file": str(certs.ca), "cert_file": str(certs.client_cert),
                        "key_file": str(certs.client_key)}}),
    }[case]()
    async with running_node(config) as node:
        assert node.subscriber is not None
        assert not await node.subscriber.wait_connected(3)
        assert node.readiness()["mqtt"].startswith("not connected")
