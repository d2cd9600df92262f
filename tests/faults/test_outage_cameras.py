"""A camera that goes offline while PostgreSQL is away: an open alert at once, stored after.

On real parts: `vigie run`, our own PostgreSQL cluster (pg_ctl), our own Mosquitto, a live
RTSP camera and a WebSocket client on the live feed. During the outage the camera's offline
alert is among the open alerts the API serves (from memory) and reaches the live client as a
provisional message (no seq); once the database is back it is stored once, with the id the
operator was shown and the time the camera went offline; when the camera returns, the
alert resolves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cameras.harness import RtspServer
from tests.conftest import Mosquitto
from tests.faults.clients import FeedClient
from tests.faults.common import SITE, new_token, query, site, wait_until
from tests.faults.harness import PgCluster, VigieProcess, write_config

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

MOUNT = "faults-outage-camera"


def _offline(vigie: VigieProcess, token: str, from_memory: bool = False
             ) -> list[dict[str, Any]]:
    status, body = vigie.get("/api/v1/alerts?state=open", token)
    assert status == 200, body
    assert body.get("from_memory", False) is from_memory, body
    return [a for a in body["items"] if a["source"] == "entree" and a["kind"] == "offline"]


def test_a_camera_offline_during_an_outage_is_an_open_alert_at_once_and_stored_once(
    pg_cluster: PgCluster, cluster_dsn: str, broker: Mosquitto, rtsp_server: RtspServer,
    data_dir: Path, tmp_path: Path,
) -> None:
    camera = rtsp_server.add_live(MOUNT)
    config = write_config(
        tmp_path / "vigie.yaml", dsn=cluster_dsn, mqtt_url=broker.url, data_dir=data_dir,
        sites=[site({"entree": camera})], defaults={"camera": {"offline_after": "2s"}})
    vigie = VigieProcess(config, tmp_path / "vigie.log")
    feed: FeedClient | None = None
    try:
        vigie.start()
        token = new_token(cluster_dsn)
        up = f'vigie_camera_up{{camera="entree",site="{SITE}"}}'
        wait_until(lambda: vigie.metrics().get(up) == 1, 30, "the camera seen up")
        assert _offline(vigie, token) == []  # the operator is logged in
        feed = FeedClient(vigie.api, token).start()

        pg_cluster.stop("fast")
        wait_until(lambda: vigie.get("/readyz")[0] == 503, 30, "not ready without PostgreSQL")
        cut_at = datetime.now(UTC)
        rtsp_server.fault(MOUNT, "stop")
        [shown] = wait_until(lambda: _offline(vigie, token, from_memory=True), 30,
                             "the offline alert served from memory")
        assert shown["state"] == "open" and shown["severity"] == "major", shown
        pushed = wait_until(lambda: feed.about(shown["id"]), 15,
                            "the offline alert on the live feed")
        assert [(m["type"], m["provisional"], m["seq"]) for m in pushed] == [
            ("alert.opened", True, None)], pushed

        pg_cluster.start()
        wait_until(vigie.ready, 60, "ready once PostgreSQL answers", interval=0.1)
        stored = wait_until(lambda: query(
            cluster_dsn, "SELECT id, opened_at, state, count FROM alerts "
                         "WHERE source = 'entree' AND kind = 'offline'"), 60,
            "the offline alert stored")
        assert [str(r["id"]) for r in stored] == [shown["id"]], (stored, shown)
        # Opened at the time the camera was judged offline, during the outage.
        assert cut_at < stored[0]["opened_at"] < datetime.now(UTC)
        wait_until(lambda: [a["id"] for a in _offline(vigie, token)] == [shown["id"]], 30,
                   "served from the database, same id")

        rtsp_server.fault(MOUNT, "start")
        wait_until(lambda: query(cluster_dsn, "SELECT 1 FROM alerts WHERE source = 'entree' "
                                              "AND kind = 'offline' AND state = 'resolved'"),
                   60, "the offline alert resolved once the camera is back")
        wait_until(lambda: not _offline(vigie, token), 30, "gone from the open alerts")
        told = [m["type"] for m in feed.about(shown["id"])]
        # Told opened once (from memory, not again when stored), then resolved.
        assert told.count("alert.opened") == 1 and told[-1] == "alert.resolved", told
    finally:
        if feed is not None:
            feed.close()
        vigie.stop()
        rtsp_server.remove(MOUNT)
