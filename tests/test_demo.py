"""`vigie demo` end to end: embedded PostgreSQL, the in-process broker, simulated traffic,
and the alerts it promises visible through the API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import eventually, free_port
from vigie.demo import run_demo

EXPECTED_CAMERAS = {
    "entree": ("ok", []), "cour": ("ok", []), "parking": ("ok", []), "hall": ("ok", []),
    "preau": ("degraded", ["frozen"]), "couloir-cdi": ("degraded", ["black"]),
    "gymnase": ("degraded", ["covered"]),
}


@pytest.fixture
def data_dir(reachable_data_dir: Path) -> Path:
    return reachable_data_dir


async def test_demo_shows_incidents_with_nothing_but_pip(data_dir: Path) -> None:
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    demo = asyncio.create_task(run_demo(
        data_dir, f"127.0.0.1:{free_port()}", stop=stop, prefer_local_broker=False,
        on_ready=lambda url, token: ready.set_result((url, token))))
    try:
        api, token = await asyncio.wait_for(ready, 60)
        headers = {"Authorization": f"Bearer {token}"}
        kinds: set[str] = set()
        async with aiohttp.ClientSession(headers=headers) as http:
            for _ in range(100):
                async with http.get(f"{api}/api/v1/alerts?state=open") as r:
                    assert r.status == 200
                    kinds = {a["kind"] for a in (await r.json())["items"]}
                if {"intrusion", "door", "tamper", "panic", "battery_low"} <= kinds:
                    break
                await asyncio.sleep(0.1)
            assert {"intrusion", "door", "tamper", "panic", "battery_low"} <= kinds
            async with http.get(f"{api}/api/v1/sites") as r:
                assert len((await r.json())["items"]) == 3

            # The demo's cameras: three faulty among healthy ones, seen within seconds.
            async def cameras() -> dict[str, tuple[str, list[str]]] | None:
                async with http.get(f"{api}/api/v1/cameras") as r:
                    now = {c["id"]: (c["state"], c["reasons"]) for c in
                           (await r.json())["items"]}
                return now if now == EXPECTED_CAMERAS else None

            await eventually(cameras, timeout=60, interval=0.5)
    finally:
        stop.set()
        await asyncio.wait_for(demo, 30)
