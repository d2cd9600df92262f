"""A vigie node with something to show: cameras on the RTSP test server (one healthy, one
black, one refused), sensors publishing over a real Mosquitto, malformed messages, alerts;
and a real Prometheus scraping it. Shared by the dashboard and console tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.cameras.harness import RtspServer
from tests.conftest import SITES, device_client, free_port, make_config, wait_port
from tests.deploy.conftest import DEPLOY, tool
from vigie.app import Node, running_node
from vigie.store._tokens import create_token

SITE = "clg-jean-moulin"
# Fast thresholds, as in tests/cameras/test_watch.py, so cameras are judged within seconds.
CHECKS = {"offline_after": "3s", "frozen_after": "4s", "analyse_every": "1s", "min_fps": 5,
          "fps_window": "4s", "learn_for": "4s", "bad_samples": 2, "good_samples": 2}


def camera_sites(rtsp: RtspServer) -> list[dict[str, Any]]:
    """The test sites, the first one with three cameras: ok, black (degraded), refused."""
    ok = rtsp.add_live("eco-entree")
    black = rtsp.add_live("eco-cour")
    rtsp.fault("eco-cour", "black")
    sites = [dict(s) for s in SITES]
    sites[0]["cameras"] = [
        {"id": "entree", "name": "Entrée", "zone": "entree", "url": ok, "checks": CHECKS},
        {"id": "cour", "name": "Cour", "zone": "cour", "url": black, "checks": CHECKS},
        {"id": "gymnase", "name": "Gymnase", "zone": "gymnase",
         "url": "rtsp://127.0.0.1:9/refused", "checks": CHECKS},
    ]
    return sites


@asynccontextmanager
async def camera_node(dsn: str, mqtt_url: str, rtsp: RtspServer, **config_overrides: Any
                      ) -> AsyncIterator[Node]:
    config = make_config(dsn, mqtt_url, sites=camera_sites(rtsp), **config_overrides)
    try:
        async with running_node(config) as node:
            assert node.subscriber is not None and await node.subscriber.wait_connected(5)
            yield node
    finally:
        for mount in ("eco-entree", "eco-cour"):
            with contextlib.suppress(Exception):
                rtsp.remove(mount)


async def make_token(node: Node, role: str = "operator") -> str:
    async with node.store.connection() as conn:
        value, _ = await create_token(conn, name=f"{role}-{uuid.uuid4().hex[:6]}", role=role,
                                      sites=None, expires_at=None)
    return value


class Publisher:
    """Sensor traffic on the node's topics, as a site's devices would send it."""

    def __init__(self, node: Node) -> None:
        self.prefix = node.config.mqtt.topic_prefix
        self.client = device_client(node.config.mqtt.url)

    def event(self, site: str, sensor: str, kind: str, state: str, **extra: Any) -> None:
        payload = {"id": uuid.uuid4().hex, "ts": datetime.now(UTC).isoformat(), "kind": kind,
                   "state": state, **extra}
        self.raw(f"{self.prefix}/{site}/{sensor}/event", json.dumps(payload).encode())

    def raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def traffic(node: Node, token: str, stop: asyncio.Event) -> None:
    """Until `stop`: intrusions and door events (alerts and their repeats), a malformed
    message now and then, API calls; a new alert every few rounds."""
    pub = Publisher(node)
    rounds = 0
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            while not stop.is_set():
                await asyncio.to_thread(pub.event, SITE, "centrale-a", "intrusion", "alarm")
                await asyncio.to_thread(pub.event, SITE, "porte-hall", "door",
                                        "open" if rounds % 2 else "closed")
                await asyncio.to_thread(pub.event, "clg-pasteur", "porte-gymnase", "door",
                                        "open")
                if rounds % 3 == 0:
                    await asyncio.to_thread(pub.raw, f"{pub.prefix}/{SITE}/centrale-a/event",
                                            b"{not json")
                async with http.get(node.api_url + "/api/v1/alerts?state=open") as r:
                    assert r.status == 200
                rounds += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await asyncio.to_thread(pub.close)


class Prometheus:
    """Debian's Prometheus on a free port, scraping one node every second and evaluating
    deploy/prometheus/rules.yml every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rules.yml").write_text((DEPLOY / "prometheus" / "rules.yml").read_text())
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": "vigie", "scrape_timeout": "900ms",
                                "static_configs": [{"targets": [self.target]}]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port("127.0.0.1", self.port, timeout=30)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"Prometheus did not start:\n{self.log_tail()}") from None

    async def ready(self, timeout: float = 30.0) -> None:
        """Until /-/ready answers 200 (the TSDB is open and the rules are loaded)."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/-/ready") as r:
                        if r.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"Prometheus not ready in {timeout}s:\n"
                                       f"{self.log_tail()}")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        text = (self.workdir / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def prometheus(workdir: Path, target: str) -> Iterator[Prometheus]:
    prom = Prometheus(workdir, target)
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()
