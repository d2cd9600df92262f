"""A node that restarts finds the camera alerts it left open: they resolve when the camera is
seen healthy, instead of staying open for ever."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.conftest import SITES, eventually, make_config
from vigie.app import running_node
from vigie.store._alerts import AlertOccurrence, upsert_alert

JM = SITES[0]["id"]


async def test_a_camera_alert_left_open_before_a_restart_resolves_once_the_camera_is_fine(
    fresh_dsn: str, mqtt_url: str
) -> None:
    from tests.cameras.clips import FfmpegMissing, clip

    try:
        video = clip("h264", seconds=20)
    except FfmpegMissing as exc:
        pytest.fail(str(exc))
    site = copy.deepcopy(SITES[0])
    site["cameras"] = [{"id": "hall", "zone": "batiment-a", "url": f"file://{video}"}]
    config = make_config(fresh_dsn, mqtt_url, sites=[site])
    async with running_node(config, with_mqtt=False) as node:
        # As a previous run of the node left it: the camera was offline when it stopped.
        async with node.store.transaction() as conn:
            alert, opened = await upsert_alert(conn, AlertOccurrence(
                site=JM, source="hall", source_type="camera", kind="offline",
                severity="major", title="Camera offline: hall",
                at=datetime.now(UTC) - timedelta(minutes=5)))
        assert opened

    async with running_node(config, with_mqtt=False):
        db = await asyncpg.connect(fresh_dsn)
        try:
            async def resolved() -> bool:
                state = await db.fetchval("SELECT state FROM alerts WHERE id = $1", alert.id)
                return bool(state == "resolved")

            await eventually(resolved, timeout=30)
            rows = await db.fetch("SELECT state FROM alerts WHERE source = 'hall'")
            assert [r["state"] for r in rows] == ["resolved"]  # and no second alert
        finally:
            await db.close()
