"""PostgreSQL stopped for a minute under 1,000 events a second, then started again.

On real parts: `vigie run`, our own PostgreSQL cluster (pg_ctl), our own Mosquitto, a live
RTSP camera. While the database is away vigie acknowledges from its spool, says it is not
ready and why, serves camera states and open alerts from memory, refuses writes with 503,
and keeps judging its camera (its changes pushed to the live feed at once). When the
database is back every event the broker acknowledged to the publisher is stored exactly
once (keyless door events included: their key is their reception, so only a double
delivery or a double replay could store one twice), and the camera's transition and alert
raised during the outage are stored with their original timestamps.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.cameras.harness import RtspServer
from tests.conftest import Mosquitto
from tests.faults.clients import FeedClient
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

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

OUTAGE = 60.0
RATE = 1000.0


def test_postgres_down_for_a_minute_under_load_loses_and_duplicates_nothing(
    pg_cluster: PgCluster, cluster_dsn: str, broker: Mosquitto, rtsp_server: RtspServer,
    data_dir: Path, tmp_path: Path,
) -> None:
    camera = rtsp_server.add_live("faults-entree")
    config = write_config(
        tmp_path / "vigie.yaml", dsn=cluster_dsn, mqtt_url=broker.url, data_dir=data_dir,
        sites=[site({"entree": camera})],
        defaults={"camera": {"offline_after": "2s"}})
    vigie = VigieProcess(config, tmp_path / "vigie.log")
    load = LoadPublisher(broker.url, mixed_load(), rate=RATE)
    feed: FeedClient | None = None
    try:
        vigie.start()
        token = new_token(cluster_dsn)
        status, _ = vigie.get("/api/v1/cameras", token)  # the operator is logged in
        assert status == 200
        feed = FeedClient(vigie.api, token).start()
        load.start()
        # An intrusion before the outage: its alert stays open (only an operator resolves
        # it), while the doors' alerts open and close with the load.
        load.client.publish(f"vigie/{SITE}/centrale/event", json.dumps(
            {"id": "intrusion-1", "state": "alarm"}).encode(), qos=1)
        [intrusion] = wait_until(lambda: query(
            cluster_dsn, "SELECT id FROM alerts WHERE kind = 'intrusion'"), 30,
            "the intrusion alert before the outage")
        wait_until(lambda: vigie.get("/api/v1/cameras", token)[1]["items"][0]["state"]
                   == "ok", 30, "the camera seen ok")

        pg_cluster.stop("fast")
        stopped_at = datetime.now(UTC)
        t_stop = time.monotonic()

        # Not ready, and why.
        status, ready = wait_until(
            lambda: (r := vigie.get("/readyz"))[0] == 503
            and r[1]["checks"]["database"].startswith("database unreachable") and r, 15,
            "readyz not ready because of the database")
        # Every loop still runs (none died of a connection lost mid-query).
        assert not [k for k in ready["checks"] if k.startswith("loop:")], ready
        # What is in memory is still served; the rest is refused, clearly.
        status, alerts = vigie.get("/api/v1/alerts?state=open", token)
        assert status == 200 and alerts.get("from_memory") is True, alerts
        assert str(intrusion["id"]) in {a["id"] for a in alerts["items"]}
        status, one = vigie.get(f"/api/v1/alerts/{intrusion['id']}", token)
        assert status == 200 and one["kind"] == "intrusion" and one["from_memory"] is True
        status, body = vigie.get(f"/api/v1/alerts/{intrusion['id']}/ack", token,
                                 method="POST")
        assert status == 503 and body["error"]["code"] == "database_unavailable", body
        # The camera is still judged: it goes away during the outage.
        rtsp_server.fault("faults-entree", "stop")
        wait_until(lambda: vigie.get("/api/v1/cameras", token)[1]["items"][0]["state"]
                   == "offline", 30, "the camera seen offline from memory")
        # And told to the live feed at once, before it can be stored.
        wait_until(lambda: [m for m in feed.of_type("camera.state") if m.get("provisional")
                            and m["camera"]["state"] == "offline"], 30,
                   "the camera's change on the live feed")
        spooled = wait_until(lambda: vigie.metrics().get("vigie_spool_messages", 0) > 1000
                             and vigie.metrics()["vigie_spool_messages"], 30,
                             "messages spooled")
        assert spooled

        time.sleep(max(0.0, OUTAGE - (time.monotonic() - t_stop)))
        started_at = datetime.now(UTC)
        pg_cluster.start()
        t_start = time.monotonic()
        wait_until(lambda: vigie.metrics().get("vigie_spool_messages", 1) == 0, 120,
                   "spool replayed", interval=0.1)
        recovery = time.monotonic() - t_start
        wait_until(vigie.ready, 30, "ready again")
        time.sleep(5)  # and the load goes on, written directly again
    finally:
        load.stop()
        if feed is not None:
            feed.close()
    try:
        load.wait_acked(60)
        acked = set(load.acked)
        numbers = wait_until(lambda: (s := stored_numbers(cluster_dsn)) and
                             len(s) >= len(acked) and s, 120, "every event stored")
        metrics = vigie.metrics()
        transitions = query(cluster_dsn, "SELECT at, state FROM camera_transitions "
                                         "WHERE camera = 'entree' ORDER BY at")
        offline = wait_until(lambda: query(
            cluster_dsn, "SELECT opened_at FROM alerts WHERE source = 'entree' "
                         "AND kind = 'offline'"), 30, "the camera alert stored")
    finally:
        load.close()
        vigie.stop()

    missing = acked - set(numbers)
    twice = {n: c for n, c in numbers.items() if c > 1}
    assert not missing, f"{len(missing)} acknowledged event(s) lost, e.g. {sorted(missing)[:5]}"
    assert not twice, f"{len(twice)} event(s) stored twice, e.g. {sorted(twice)[:5]}"
    assert set(numbers) <= set(range(load.attempted))
    # Raised during the outage, stored after it, with the time it happened.
    [went_offline] = [t["at"] for t in transitions if t["state"] == "offline"]
    assert stopped_at < went_offline < started_at
    assert stopped_at < offline[0]["opened_at"] < started_at
    assert metrics["vigie_spool_replayed_messages_total"] >= spooled
    record("postgres_outage", outage_s=round(OUTAGE), rate=RATE, published=load.attempted,
           acknowledged_by_broker=len(acked), stored=len(numbers), lost=len(missing),
           duplicated=len(twice), spooled=int(metrics["vigie_spool_appended_messages_total"]),
           recovery_s=round(recovery, 1), peak_spool=mib(vigie.peaks.spool_bytes),
           peak_rss=mib(vigie.peaks.rss), site=SITE)


def test_a_full_spool_stops_acknowledgements_and_drops_nothing(
    pg_cluster: PgCluster, cluster_dsn: str, broker: Mosquitto, data_dir: Path,
    tmp_path: Path,
) -> None:
    """At `spool.max_size` vigie acknowledges nothing more: the broker keeps the rest for
    its session, and everything arrives once the database is back."""
    cap, total = 256 * 1024, 8_000
    config = write_config(tmp_path / "vigie.yaml", dsn=cluster_dsn, mqtt_url=broker.url,
                          data_dir=data_dir, sites=[site()],
                          spool={"max_size": f"{cap // 1024}KiB"})
    vigie = VigieProcess(config, tmp_path / "vigie.log")
    load = LoadPublisher(broker.url, mixed_load(), rate=2_000, limit=total)
    try:
        vigie.start()
        pg_cluster.stop("fast")
        load.start()
        load.wait_acked(60)
        wait_until(lambda: vigie.metrics().get("vigie_spool_full") == 1, 30, "spool full")
        full = vigie.metrics()
        time.sleep(2)
        still = vigie.metrics()
        pg_cluster.start()
        numbers = wait_until(lambda: (s := stored_numbers(cluster_dsn)) and len(s) >= total
                             and s, 120, "everything stored")
        after = vigie.metrics()
    finally:
        load.close()
        vigie.stop()
    # At the cap: the spool holds no more than the cap (plus the record that reached it),
    # and stays there: nothing more was acknowledged from it.
    assert full["vigie_spool_bytes"] <= cap
    assert still["vigie_spool_appended_messages_total"] == full[
        "vigie_spool_appended_messages_total"]
    assert full["vigie_spool_messages"] < total  # the rest stayed at the broker
    assert set(numbers) == set(range(total)) and max(numbers.values()) == 1
    assert after["vigie_spool_full"] == 0
    record("spool_cap", cap=mib(cap), published=total,
           spooled_at_cap=int(full["vigie_spool_messages"]),
           held_at_broker=total - int(full["vigie_spool_messages"]), stored=len(numbers))
