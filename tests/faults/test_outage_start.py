"""vigie started while PostgreSQL is down: it comes up, spools, and catches up once it answers.

On real parts: `vigie run` against our own PostgreSQL cluster, stopped before vigie starts
(and holding a database never migrated), our own Mosquitto and a live RTSP camera. The node
answers /healthz, says why it is not ready, acknowledges the load from its spool and judges
its camera; once PostgreSQL is started, the schema is migrated, the config synced, the
spool replayed: every event the broker acknowledged to the publisher is stored exactly once,
and the camera's first transition with the time it happened.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.cameras.harness import RtspServer
from tests.conftest import Mosquitto
from tests.faults.common import (
    SITE,
    mib,
    mixed_load,
    new_token,
    query,
    site,
    stored_numbers,
    wait_until,
)
from tests.faults.conftest import record
from tests.faults.harness import LoadPublisher, PgCluster, VigieProcess, write_config
from vigie.store._migrate import load_migrations

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

TOTAL, RATE = 3_000, 500.0


def test_vigie_started_while_postgres_is_down_becomes_ready_once_it_answers(
    pg_cluster: PgCluster, cluster_dsn: str, broker: Mosquitto, rtsp_server: RtspServer,
    data_dir: Path, tmp_path: Path,
) -> None:
    camera = rtsp_server.add_live("faults-cold-start")
    config = write_config(
        tmp_path / "vigie.yaml", dsn=cluster_dsn, mqtt_url=broker.url, data_dir=data_dir,
        sites=[site({"entree": camera})], defaults={"camera": {"offline_after": "2s"}})
    vigie = VigieProcess(config, tmp_path / "vigie.log")
    load = LoadPublisher(broker.url, mixed_load(), rate=RATE, limit=TOTAL)
    pg_cluster.stop("fast")
    try:
        vigie.start(ready=False)
        status, ready = vigie.get("/readyz")
        assert status == 503, ready
        assert ready["checks"]["database"].startswith("database unreachable"), ready
        assert ready["checks"]["mqtt"] == "ok", ready
        assert not [k for k in ready["checks"] if k.startswith("loop:")], ready
        load.start()
        load.wait_acked(60)
        # Everything was acknowledged to the broker from the spool, durably.
        wait_until(lambda: vigie.metrics().get("vigie_spool_appended_messages_total", 0)
                   >= TOTAL, 60, "the load spooled")
        # The camera is judged meanwhile.
        up = f'vigie_camera_up{{camera="entree",site="{SITE}"}}'
        wait_until(lambda: vigie.metrics().get(up) == 1, 30, "the camera seen up")
        assert vigie.get("/readyz")[0] == 503

        db_started_at = datetime.now(UTC)
        pg_cluster.start()
        t_start = time.monotonic()
        wait_until(vigie.ready, 60, "ready once PostgreSQL answers", interval=0.1)
        to_ready = time.monotonic() - t_start
        numbers = wait_until(lambda: (s := stored_numbers(cluster_dsn)) and len(s) >= TOTAL
                             and s, 120, "every event stored")
        stored_in = time.monotonic() - t_start
        token = new_token(cluster_dsn)
        status, cameras = vigie.get("/api/v1/cameras", token)
        assert status == 200 and cameras["items"][0]["state"] == "ok", cameras
        transitions = wait_until(lambda: query(
            cluster_dsn, "SELECT at, state FROM camera_transitions WHERE camera = 'entree' "
                         "ORDER BY at"), 30, "the camera's transition stored")
        metrics = vigie.metrics()
    finally:
        load.close()
        vigie.stop()

    missing = set(range(TOTAL)) - set(numbers)
    twice = {n: c for n, c in numbers.items() if c > 1}
    assert not missing, f"{len(missing)} acknowledged event(s) lost, e.g. {sorted(missing)[:5]}"
    assert not twice, f"{len(twice)} event(s) stored twice, e.g. {sorted(twice)[:5]}"
    # Migrated and synced once it answered.
    versions = [r["version"] for r in query(cluster_dsn, "SELECT version FROM "
                                                         "schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in load_migrations()]
    assert [r["id"] for r in query(cluster_dsn, "SELECT id FROM sites")] == [SITE]
    # Seen ok during the outage: stored with that time.
    assert transitions[0]["state"] == "ok" and transitions[0]["at"] < db_started_at
    assert metrics["vigie_spool_replayed_messages_total"] == TOTAL
    record("cold_start_without_postgres", published=TOTAL, acknowledged=len(load.acked),
           stored=len(numbers), lost=len(missing), duplicated=len(twice),
           ready_after_pg_s=round(to_ready, 1), stored_after_pg_s=round(stored_in, 1),
           peak_spool=mib(vigie.peaks.spool_bytes), peak_rss=mib(vigie.peaks.rss))
