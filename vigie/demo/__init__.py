"""`vigie demo`: the whole system on one machine with nothing but `pip install`.

An embedded PostgreSQL, an MQTT broker (the one on 127.0.0.1:1883 if something listens
there, else an in-process one), three simulated collèges of Yvelines and Hauts-de-Seine
publishing sensor traffic, and the API with a printed operator token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from vigie.config import Config, parse_config
from vigie.demo._clips import make_clip
from vigie.sensors._broker import PROTOCOL, broker_reachable, embedded_broker
from vigie.store._tokens import create_token, revoke_token

__all__ = ["demo_config", "run_demo"]

log = logging.getLogger("vigie.demo")

PARIS = ZoneInfo("Europe/Paris")
_WEEK = {"mon": "07:30-18:30", "tue": "07:30-18:30", "wed": "07:30-12:30",
         "thu": "07:30-18:30", "fri": "07:30-17:30"}

DEMO_SITES: list[dict[str, Any]] = [
    {"id": "clg-jean-moulin-versailles", "name": "Collège Jean Moulin", "uai": "0781234A",
     "commune": "Versailles", "holiday_zone": "C", "opening_hours": _WEEK,
     "sensors": [
         {"id": "porte-hall", "kind": "door", "zone": "entree", "name": "Porte du hall"},
         {"id": "porte-cantine", "kind": "door", "zone": "cantine", "name": "Porte cantine"},
         {"id": "centrale-a", "kind": "intrusion", "zone": "batiment-a",
          "name": "Centrale bâtiment A"},
         {"id": "panique-accueil", "kind": "panic", "zone": "entree", "name": "Bouton accueil"},
         {"id": "contact-cour", "kind": "door", "zone": "cour", "format": "zigbee2mqtt",
          "topic": "zigbee2mqtt/clg-jean-moulin/contact-cour", "name": "Portail cour"},
     ]},
    {"id": "clg-debussy-saint-germain", "name": "Collège Claude Debussy", "uai": "0782567K",
     "commune": "Saint-Germain-en-Laye", "holiday_zone": "C", "opening_hours": _WEEK,
     "sensors": [
         {"id": "porte-gymnase", "kind": "door", "zone": "gymnase", "name": "Porte gymnase"},
         {"id": "centrale", "kind": "intrusion", "zone": "batiment", "name": "Centrale"},
         {"id": "autoprot-baie", "kind": "tamper", "zone": "baie-info",
          "name": "Autoprotection baie informatique"},
         {"id": "dad-cdi", "kind": "smoke", "zone": "cdi", "name": "Détecteur CDI"},
     ]},
    {"id": "clg-victor-hugo-issy", "name": "Collège Victor Hugo", "uai": "0920876F",
     "commune": "Issy-les-Moulineaux", "holiday_zone": "C", "opening_hours": _WEEK,
     "sensors": [
         {"id": "porte-service", "kind": "door", "zone": "service", "name": "Porte de service"},
         {"id": "centrale", "kind": "intrusion", "zone": "batiment", "name": "Centrale"},
         {"id": "chaufferie", "kind": "technical", "zone": "chaufferie",
          "name": "Défaut chaufferie", "heartbeat": "2m"},
     ]},
]


# (site, camera id, name, zone, clip kind, seed): two faulty cameras among healthy ones.
DEMO_CAMERAS = [
    ("clg-jean-moulin-versailles", "entree", "Entrée principale", "entree", "normal", 1),
    ("clg-jean-moulin-versailles", "cour", "Cour de récréation", "cour", "normal", 2),
    ("clg-jean-moulin-versailles", "preau", "Préau", "cour", "frozen", 3),
    ("clg-debussy-saint-germain", "parking", "Parking", "parking", "normal", 4),
    ("clg-debussy-saint-germain", "couloir-cdi", "Couloir du CDI", "cdi", "black", 5),
    ("clg-victor-hugo-issy", "hall", "Hall d'accueil", "service", "normal", 6),
    ("clg-victor-hugo-issy", "gymnase", "Gymnase", "gymnase", "covered", 7),
]


def demo_config(data_dir: Path, mqtt_url: str, protocol: str, listen: str,
                clips: dict[tuple[str, str], Path] | None = None) -> Config:
    """The demo's configuration; `clips` gives each camera's video file (none: no cameras)."""
    sites = [dict(site) for site in DEMO_SITES]
    for site in sites:
        site["cameras"] = [
            {"id": cam, "name": name, "zone": zone,
             "url": f"file://{clips[(site_id, cam)]}", "checks": {"learn_for": "30s"}}
            for site_id, cam, name, zone, _, _ in DEMO_CAMERAS
            if site_id == site["id"] and clips and (site_id, cam) in clips
        ]
    return parse_config({
        "node": {"name": "vigie-demo", "data_dir": str(data_dir), "camera_workers": 1},
        "mqtt": {"url": mqtt_url, "protocol": protocol, "client_id": "vigie-demo",
                 "topic_prefix": "vigie"},
        "api": {"listen": listen},
        "sites": sites,
    })


def _make_clips(directory: Path) -> dict[tuple[str, str], Path]:
    return {(site, cam): make_clip(directory, kind, seed)
            for site, cam, _, _, kind, seed in DEMO_CAMERAS}


def _step(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", file=sys.stderr, flush=True)


@asynccontextmanager
async def _broker(prefer_local: bool) -> AsyncIterator[tuple[str, str]]:
    """(url, protocol) of a reachable broker: the local one, else one of our own."""
    if prefer_local and broker_reachable("127.0.0.1", 1883):
        yield "mqtt://127.0.0.1:1883", "5"
        return
    async with embedded_broker("127.0.0.1", 0) as (host, port):
        yield f"mqtt://{host}:{port}", PROTOCOL


class Simulator:
    """Sensor traffic of the three collèges: routine door movements and a few incidents."""

    def __init__(self, url: str, protocol: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"vigie-demo-sim-{uuid.uuid4().hex[:6]}",
            protocol=paho.MQTTv5 if protocol == "5" else paho.MQTTv311)
        self._client.connect(host, int(port))
        self._client.loop_start()
        self._rng = random.Random(2026)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _send(self, topic: str, payload: dict[str, Any] | str, retain: bool = False) -> None:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        self._client.publish(topic, body, qos=1, retain=retain)

    def event(self, site: str, sensor: str, state: str, at: datetime | None = None,
              **data: Any) -> None:
        at = at or datetime.now(UTC)
        self._send(f"vigie/{site}/{sensor}/event", {
            "id": f"demo-{uuid.uuid4().hex[:12]}", "ts": at.isoformat(), "state": state,
            **({"data": data} if data else {})})

    def incidents(self) -> None:
        """What an operator should see at once: last night's intrusion, a tamper, a panic."""
        last_night = (datetime.now(PARIS) - timedelta(days=1)).replace(
            hour=2, minute=13, second=0, microsecond=0)
        self.event("clg-jean-moulin-versailles", "porte-cantine", "open", last_night)
        self.event("clg-jean-moulin-versailles", "centrale-a", "alarm",
                   last_night + timedelta(seconds=20), zone_detail="couloir RDC")
        self.event("clg-debussy-saint-germain", "autoprot-baie", "alarm")
        self.event("clg-jean-moulin-versailles", "panique-accueil", "alarm")
        # A door contact whose battery is nearly flat: a blind spot to come.
        self._send("zigbee2mqtt/clg-jean-moulin/contact-cour",
                   {"contact": True, "battery": 9, "linkquality": 87,
                    "last_seen": datetime.now(UTC).isoformat()})
        self._send("vigie/clg-victor-hugo-issy/chaufferie/status", "online", retain=True)
        # Malformed input lands in the dead-letter table, and ingestion goes on.
        self._send("vigie/clg-victor-hugo-issy/centrale/event", "{not json")

    def routine(self) -> None:
        """One tick of ordinary life: doors opening and closing, the boiler's heartbeat."""
        site, sensor = self._rng.choice([
            ("clg-jean-moulin-versailles", "porte-hall"),
            ("clg-debussy-saint-germain", "porte-gymnase"),
            ("clg-victor-hugo-issy", "porte-service"),
        ])
        self.event(site, sensor, "open")
        self.event(site, sensor, "closed", datetime.now(UTC) + timedelta(seconds=4))
        self.event("clg-victor-hugo-issy", "chaufferie", "normal", temperature_c=
                   round(self._rng.uniform(55, 70), 1))

    async def run(self) -> None:
        self.incidents()
        while True:
            await asyncio.sleep(5)
            self.routine()


async def _operator_token(node: Any) -> str:
    async with node.store.connection() as conn:
        with contextlib.suppress(Exception):
            await revoke_token(conn, "demo-operator")
        token, _ = await create_token(conn, name="demo-operator", role="operator", sites=None,
                                      expires_at=datetime.now(UTC) + timedelta(days=1))
    return token


async def run_demo(
    data_dir: Path, listen: str = "127.0.0.1:8080", *, stop: asyncio.Event | None = None,
    prefer_local_broker: bool = True,
    on_ready: Callable[[str, str], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or `stop` is set); `on_ready(api_url, token)` once up."""
    from vigie.app import running_node

    total = 5
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        _step(1, total, "MQTT broker: looking for one on 127.0.0.1:1883…")
        url, protocol = await stack.enter_async_context(_broker(prefer_local_broker))
        print(f"      using {url} (MQTT {protocol})", file=sys.stderr)
        _step(2, total, "camera streams: encoding the demo's clips (first run only)…")
        clips = await asyncio.to_thread(_make_clips, data_dir / "demo-clips")
        _step(3, total, f"starting vigie with an embedded PostgreSQL under {data_dir}…")
        config = demo_config(data_dir, url, protocol, listen, clips)
        node = await stack.enter_async_context(running_node(config))
        assert node.subscriber is not None
        if not await node.subscriber.wait_connected(15):
            print(f"      not yet connected to {url}; vigie keeps trying", file=sys.stderr)
        _step(4, total, "creating an operator token…")
        token = await _operator_token(node)
        _step(5, total, "simulating three collèges (Versailles, Saint-Germain-en-Laye, Issy)…")
        sim = Simulator(url, protocol)
        stack.callback(sim.close)
        sim_task = asyncio.create_task(sim.run(), name="vigie:demo-simulator")
        api = node.api_url
        print(f"""
vigie demo is running. Operator token (valid one day):

    export TOKEN={token}

Open alerts (last night's intrusion, a tamper, a panic button, a flat battery):
    curl -s -H "Authorization: Bearer $TOKEN" {api}/api/v1/alerts?state=open
Acknowledge one:
    curl -s -X POST -H "Authorization: Bearer $TOKEN" -d '{{"comment": "rondier prévenu"}}' \\
         {api}/api/v1/alerts/<id>/ack
Cameras (the Préau freezes, the CDI corridor goes black, the gymnasium is covered,
within about 20 s):
    curl -s -H "Authorization: Bearer $TOKEN" {api}/api/v1/cameras
    curl -s -H "Authorization: Bearer $TOKEN" -o entree.jpg \\
         {api}/api/v1/cameras/clg-jean-moulin-versailles/entree/snapshot
Sites, sensors, events:
    curl -s -H "Authorization: Bearer $TOKEN" {api}/api/v1/sites
    curl -s -H "Authorization: Bearer $TOKEN" "{api}/api/v1/events?limit=5"
Metrics and the API description:
    {api}/metrics      {api}/api/v1/openapi.json

Ctrl-C to stop.
""", file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready(api, token)
        await stop.wait()
        sim_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sim_task
        print("stopping…", file=sys.stderr)
