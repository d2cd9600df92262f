"""Real services for the tests: a fresh PostgreSQL database per session (dropped after) and
a Mosquitto broker of our own on a free port (or the one on 127.0.0.1:1883 if the
`mosquitto` executable is missing)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.pg import temporary_database
from vigie.config import Config, parse_config
from vigie.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def device_client(mqtt_url: str, max_inflight: int | None = None) -> paho.Client:
    """A device-side MQTT client, connected, its network loop in paho's own thread."""
    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    if max_inflight is not None:  # paho takes it only before connecting
        client.max_inflight_messages_set(max_inflight)
    client.connect(host, int(port))
    client.loop_start()
    return client


class Publisher:
    """A device-side MQTT client: QoS 1, as fast as the broker takes it (paho's own thread)."""

    def __init__(self, mqtt_url: str) -> None:
        self.client = device_client(mqtt_url, max_inflight=1_000)

    def publish(self, topic: str, payloads: Sequence[dict[str, Any]]) -> list[Any]:
        return [self.client.publish(topic, json.dumps(p).encode(), qos=1) for p in payloads]

    async def wait(self, infos: list[Any]) -> None:
        """Until the broker has acknowledged them all (it then holds them for vigie)."""

        def wait_all() -> None:
            for info in infos:
                info.wait_for_publish(30)
                assert info.is_published()

        await asyncio.to_thread(wait_all)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Mosquitto:
    """A Mosquitto broker owned by the tests, with the settings vigie's README recommends."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            # The default (1000) drops QoS 1 messages queued for a slow subscriber.
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            f"{self.extra}\n"
        )
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("mosquitto") is None:
        wait_port("127.0.0.1", 1883)
        yield "mqtt://127.0.0.1:1883"
        return
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker.url
    broker.stop()


@pytest.fixture(scope="session")
async def pg_dsn() -> AsyncIterator[str]:
    """A database of its own for this test session, dropped at the end."""
    async with temporary_database("vigie_test") as dsn:
        yield dsn


@pytest.fixture
async def fresh_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A database of its own for one test (migrations, isolation-sensitive tests)."""
    async with temporary_database("vigie_t") as dsn:
        yield dsn


SITES: list[dict[str, Any]] = [
    {
        "id": "clg-jean-moulin", "name": "Collège Jean Moulin", "uai": "0781234A",
        "commune": "Versailles", "holiday_zone": "C",
        "opening_hours": {d: "07:30-18:30" for d in ("mon", "tue", "thu", "fri")}
        | {"wed": "07:30-13:00"},
        "cameras": [{"id": "entree", "name": "Entrée", "zone": "entree",
                     "url": "rtsp://admin:S3cr3t-Zebra-42@127.0.0.1:8554/entree"}],
        "sensors": [
            {"id": "porte-hall", "kind": "door", "zone": "entree", "name": "Porte du hall"},
            {"id": "centrale-a", "kind": "intrusion", "zone": "batiment-a"},
            {"id": "panique-accueil", "kind": "panic", "zone": "entree"},
            {"id": "autoprot-baie", "kind": "tamper", "zone": "baie"},
            {"id": "contact-cour", "kind": "door", "zone": "cour", "format": "zigbee2mqtt",
             "topic": "zigbee2mqtt/clg-jean-moulin/contact-cour"},
        ],
    },
    {
        "id": "clg-pasteur", "name": "Collège Louis Pasteur", "uai": "0921234B",
        "commune": "Nanterre", "holiday_zone": "C",
        "sensors": [
            {"id": "porte-gymnase", "kind": "door", "zone": "gymnase"},
            {"id": "centrale", "kind": "intrusion", "zone": "batiment"},
        ],
    },
]


_DATA_DIRS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _remove_node_data_dirs() -> Iterator[None]:
    yield
    for path in _DATA_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def make_config(dsn: str, mqtt_url: str, **overrides: Any) -> Config:
    data_dir = tempfile.mkdtemp(prefix="vigie-node-")
    _DATA_DIRS.append(data_dir)
    raw: dict[str, Any] = {
        "node": {"name": f"test-{uuid.uuid4().hex[:6]}", "data_dir": data_dir,
                 "camera_workers": 1},
        "database": {"dsn": dsn},
        "mqtt": {"url": mqtt_url, "client_id": f"vigie-test-{uuid.uuid4().hex[:8]}",
                 "topic_prefix": f"t{uuid.uuid4().hex[:6]}"},
        "api": {"listen": "127.0.0.1:0"},
        "sites": SITES,
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(raw)


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def assert_cancel_lands(start: Callable[[], tuple[Coroutine[Any, Any, Any],
                                                       Callable[[], None]]],
                              woken_by: str) -> None:
    """A task waiting on the coroutine `start` returns, cancelled a few loop turns after its
    wake-up (the second thing `start` returns) happens, ends cancelled: asyncio.wait_for on
    Python 3.11 returns the inner result when both come in one loop turn, swallowing the
    cancel, and a loop around such a wait goes on after its owner stopped it."""
    for turns in range(6):  # the cancel lands a few loop turns after the wake-up
        wait, wake = start()
        waiting = asyncio.create_task(wait)
        await asyncio.sleep(0)
        wake()
        for _ in range(turns):
            await asyncio.sleep(0)
        if waiting.done():
            break
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert waiting.cancelled(), f"cancel {turns} turn(s) after {woken_by} was swallowed"


@pytest.fixture
async def store(fresh_dsn: str) -> AsyncIterator[Store]:
    """A migrated store on a database of its own."""
    s = await Store.open(fresh_dsn, size=3)
    try:
        await s.migrate()
        yield s
    finally:
        await s.close()


@pytest.fixture
def reachable_data_dir() -> Iterator[Path]:
    """A data directory the embedded PostgreSQL can use: as root, its server runs as the
    'vigie' user, which cannot enter pytest's private /tmp/pytest-of-root (a deployment
    would use /var/lib/vigie)."""
    base = Path(tempfile.mkdtemp(prefix="vigie-test-"))
    base.chmod(0o755)
    yield base / "var"
    shutil.rmtree(base, ignore_errors=True)
