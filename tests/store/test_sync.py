"""vigie.store._sync: the configuration mirrored into PostgreSQL, secrets left out."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import pytest

from tests.conftest import SITES, make_config
from vigie.config import Config
from vigie.store import Store
from vigie.store._sync import sync_config

MQTT = "mqtt://127.0.0.1:1883"  # never connected to here
PASSWORD = "S3cr3t-Zebra-42"
QUERY_PASSWORD = "Qu3ry-Pass-77"



def config_with(dsn: str, sites: list[dict[str, Any]]) -> Config:
    return make_config(dsn, MQTT, sites=sites)


def sites() -> list[dict[str, Any]]:
    out = copy.deepcopy(SITES)
    out[0]["cameras"].append(
        {"id": "cour", "name": "Cour", "zone": "cour",
         "url": f"rtsp://10.0.0.9:554/live?user=admin&password={QUERY_PASSWORD}"})
    return out


async def sync(store: Store, config: Config) -> None:
    async with store.connection() as conn:
        await sync_config(conn, config)


async def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        return [dict(r) for r in await conn.fetch(sql)]


async def active(store: Store, table: str) -> dict[tuple[str, ...], bool]:
    key = "id" if table == "sites" else "site, id"
    return {tuple(r[k] for k in r if k != "active"): r["active"]
            for r in await rows(store, f"SELECT {key}, active FROM {table}")}


async def test_sync_inserts_sites_cameras_and_sensors(store: Store, fresh_dsn: str) -> None:
    await sync(store, config_with(fresh_dsn, sites()))

    [jm, pasteur] = await rows(store, "SELECT * FROM sites ORDER BY id")
    assert (jm["id"], jm["name"], jm["uai"], jm["commune"], jm["timezone"],
            jm["holiday_zone"], jm["active"]) == (
        "clg-jean-moulin", "Collège Jean Moulin", "0781234A", "Versailles", "Europe/Paris",
        "C", True)
    assert pasteur["id"] == "clg-pasteur" and pasteur["active"]

    cameras = await rows(store, "SELECT site, id, name, zone, transport, active FROM cameras "
                                "ORDER BY site, id")
    assert cameras == [
        {"site": "clg-jean-moulin", "id": "cour", "name": "Cour", "zone": "cour",
         "transport": "tcp", "active": True},
        {"site": "clg-jean-moulin", "id": "entree", "name": "Entrée", "zone": "entree",
         "transport": "tcp", "active": True},
    ]
    sensors = {(r["site"], r["id"]): r for r in await rows(store, "SELECT * FROM sensors")}
    assert set(sensors) == {(s["id"], x["id"]) for s in SITES for x in s["sensors"]}
    cour = sensors[("clg-jean-moulin", "contact-cour")]
    assert (cour["kind"], cour["zone"], cour["format"], cour["topic"]) == (
        "door", "cour", "zigbee2mqtt", "zigbee2mqtt/clg-jean-moulin/contact-cour")
    hall = sensors[("clg-jean-moulin", "porte-hall")]
    assert (hall["name"], hall["format"], hall["topic"]) == ("Porte du hall", "native", None)
    assert all(r["active"] for r in sensors.values())


async def test_camera_urls_are_stored_without_credentials(store: Store, fresh_dsn: str) -> None:
    await sync(store, config_with(fresh_dsn, sites()))
    urls = {r["id"]: r["url"] for r in await rows(store, "SELECT id, url FROM cameras")}
    assert urls == {"entree": "rtsp://***@127.0.0.1:8554/entree",
                    "cour": "rtsp://10.0.0.9:554/live"}
    # Nowhere in the table, in any column, whatever its type.
    dump = " ".join(r["t"] for r in await rows(store, "SELECT c::text AS t FROM cameras c"))
    for secret in (PASSWORD, QUERY_PASSWORD, "admin"):
        assert secret not in dump


async def test_removed_objects_become_inactive_and_come_back(
    store: Store, fresh_dsn: str
) -> None:
    full = sites()
    await sync(store, config_with(fresh_dsn, full))
    async with store.connection() as conn:
        # History that must survive the removal (no cascade, no delete).
        await conn.execute(
            "UPDATE sensors SET last_state = 'closed', battery = 77 "
            "WHERE site = 'clg-jean-moulin' AND id = 'porte-hall'")

    reduced = copy.deepcopy(full[:1])  # clg-pasteur removed
    reduced[0]["sensors"] = [s for s in reduced[0]["sensors"] if s["id"] != "porte-hall"]
    reduced[0]["cameras"] = [c for c in reduced[0]["cameras"] if c["id"] != "cour"]
    await sync(store, config_with(fresh_dsn, reduced))

    assert await active(store, "sites") == {("clg-jean-moulin",): True, ("clg-pasteur",): False}
    sensors = await active(store, "sensors")
    assert len(sensors) == sum(len(s["sensors"]) for s in full)  # nothing deleted
    assert sensors[("clg-jean-moulin", "porte-hall")] is False
    assert sensors[("clg-pasteur", "porte-gymnase")] is False  # its site is gone
    assert sensors[("clg-pasteur", "centrale")] is False
    assert sensors[("clg-jean-moulin", "centrale-a")] is True
    assert await active(store, "cameras") == {("clg-jean-moulin", "entree"): True,
                                              ("clg-jean-moulin", "cour"): False}

    renamed = copy.deepcopy(full)
    renamed[1]["name"] = "Collège Louis Pasteur (Nanterre)"
    renamed[0]["sensors"][0]["zone"] = "hall-nord"
    await sync(store, config_with(fresh_dsn, renamed))
    assert set((await active(store, "sites")).values()) == {True}
    assert set((await active(store, "sensors")).values()) == {True}
    assert set((await active(store, "cameras")).values()) == {True}
    [pasteur] = await rows(store, "SELECT name FROM sites WHERE id = 'clg-pasteur'")
    assert pasteur["name"] == "Collège Louis Pasteur (Nanterre)"
    [hall] = await rows(store, "SELECT zone, last_state, battery FROM sensors "
                               "WHERE site = 'clg-jean-moulin' AND id = 'porte-hall'")
    assert hall == {"zone": "hall-nord", "last_state": "closed", "battery": 77}


async def test_sync_is_atomic(store: Store, fresh_dsn: str) -> None:
    """A sync that fails half-way leaves the previous mirror as it was."""
    await sync(store, config_with(fresh_dsn, sites()))
    before = await active(store, "sensors")
    config = config_with(fresh_dsn, sites())
    async with store.connection() as conn:
        # Existing rows pass (NOT VALID); the sync's own UPDATE of that row then fails.
        await conn.execute("ALTER TABLE sensors ADD CONSTRAINT no_gym "
                           "CHECK (id <> 'porte-gymnase') NOT VALID")
        with pytest.raises(asyncpg.CheckViolationError):
            await sync_config(conn, config)
    assert await active(store, "sensors") == before
    assert set((await active(store, "sites")).values()) == {True}
