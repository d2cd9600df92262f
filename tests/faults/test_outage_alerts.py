"""An intrusion while PostgreSQL is away: raised at once from memory, stored once after.

On real parts: `vigie run`, our own PostgreSQL cluster (pg_ctl), our own Mosquitto, a
WebSocket client on the live feed and a webhook receiver, under a steady mixed load. During
the outage the intrusion's alert is in the open alerts (from memory) and reaches the live
client within seconds; its repeats fold into its count. Once the database is back, the
replay stores it exactly once, with the id the client was shown, the event's own time as
`opened_at` and the right count; the live client is not told `alert.opened` a second time
for any alert, and the notifier sends the opening once. An operator's action refused during
the outage is audited with its own time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.faults.clients import FeedClient, WebhookSink
from tests.faults.common import SITE, mixed_load, new_token, query, site, stored_numbers, wait_until
from tests.faults.conftest import record
from tests.faults.harness import LoadPublisher, PgCluster, VigieProcess, write_config

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

RATE = 200.0
WEBHOOK_SECRET = "outage-webhook-secret-0123456789"


def _at(seconds: float) -> datetime:
    """A device timestamp, to the millisecond (what RFC 3339 payloads carry)."""
    t = datetime.now(UTC) + timedelta(seconds=seconds)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def test_an_intrusion_during_an_outage_is_raised_at_once_and_stored_once(
    pg_cluster: PgCluster, cluster_dsn: str, broker: Mosquitto, data_dir: Path,
    tmp_path: Path,
) -> None:
    sink = WebhookSink()
    config = write_config(
        tmp_path / "vigie.yaml", dsn=cluster_dsn, mqtt_url=broker.url, data_dir=data_dir,
        sites=[site()],
        notifiers=[{"name": "csu", "type": "webhook", "url": sink.url,
                    "secret": WEBHOOK_SECRET, "actions": ["opened", "resolved"]}])
    vigie = VigieProcess(config, tmp_path / "vigie.log")
    load = LoadPublisher(broker.url, mixed_load(), rate=RATE)
    feed: FeedClient | None = None
    resumed: FeedClient | None = None
    try:
        vigie.start()
        token = new_token(cluster_dsn)
        assert vigie.get("/api/v1/alerts", token)[0] == 200  # the operator is logged in
        feed = FeedClient(vigie.api, token).start()
        load.start()
        wait_until(lambda: stored_numbers(cluster_dsn), 30, "the load stored")

        pg_cluster.stop("fast")
        stopped_at = datetime.now(UTC)
        wait_until(lambda: vigie.get("/readyz")[0] == 503, 15, "readyz not ready")
        wait_until(lambda: vigie.metrics().get("vigie_spool_messages", 0) > 0, 30,
                   "the load spooled")

        first, second, third = _at(0), _at(1), _at(2)
        published = time.monotonic()
        for n, ts in enumerate((first, second, third), 1):
            load.client.publish(f"vigie/{SITE}/centrale/event", json.dumps(
                {"id": f"outage-intrusion-{n}", "ts": ts.isoformat(),
                 "state": "alarm"}).encode(), qos=1)
            if n == 1:
                # Shown from memory, and pushed to the live client, while the database is
                # still away.
                [shown] = wait_until(lambda: [
                    a for a in vigie.get("/api/v1/alerts?state=open", token)[1]["items"]
                    if a["source"] == "centrale"], 10, "the intrusion in the open alerts")
                to_api = time.monotonic() - published
                pushed = wait_until(lambda: [
                    m for m in feed.of_type("alert.opened")  # type: ignore[union-attr]
                    if m["alert"]["source"] == "centrale"], 10, "the intrusion on the feed")
                to_feed = time.monotonic() - published
                # A console reconnecting meanwhile resumes where it was (nothing was stored
                # since): it needs no database for that, and gets what comes next.
                last = max(m["seq"] or 0 for m in feed.messages  # type: ignore[union-attr]
                           if "seq" in m)
                resumed = FeedClient(vigie.api, token, since=last).start()
        intrusion = shown["id"]
        assert [m["provisional"] for m in pushed] == [True] and pushed[0]["seq"] is None
        assert pushed[0]["alert"]["id"] == intrusion
        assert shown["opened_at"] == first.isoformat() and shown["severity"] == "critical"
        body = wait_until(lambda: (r := vigie.get("/api/v1/alerts?state=open", token)[1])
                          and any(a["id"] == intrusion and a["count"] == 3
                                  for a in r["items"]) and r, 10, "its repeats counted")
        assert body["from_memory"] is True
        assert max(m["alert"]["count"] for m in feed.about(intrusion)) == 3
        assert wait_until(lambda: [m for m in resumed.about(intrusion)
                                   if m["provisional"] and m["alert"]["count"] == 3], 10,
                          "the repeats on the resumed console")
        # An operator's action cannot be done without the database, but it is audited.
        status, refused = vigie.get(f"/api/v1/alerts/{intrusion}/ack", token, method="POST")
        assert status == 503 and refused["error"]["code"] == "database_unavailable"
        assert vigie.get("/readyz")[0] == 503  # all of it with the database still away
        restarted_at = datetime.now(UTC)
        pg_cluster.start()

        wait_until(lambda: vigie.metrics().get("vigie_spool_messages", 1) == 0, 120,
                   "spool replayed", interval=0.1)
        wait_until(vigie.ready, 30, "ready again")
        # A change made after the replay: once the live client has it, it has had (or been
        # spared) every stored change before it, the intrusion's included.
        load.client.publish(f"vigie/{SITE}/tech-0/event", json.dumps(
            {"id": "after-outage-fault", "state": "fault"}).encode(), qos=1)
        wait_until(lambda: [m for m in feed.of_type("alert.opened")  # type: ignore[union-attr]
                            if m["alert"]["source"] == "tech-0" and m["seq"] is not None],
                   60, "a stored change after the replay on the live feed")
        notified = wait_until(lambda: sink.about(intrusion), 60, "the intrusion notified")
    except BaseException:  # nothing left running behind a failure
        load.close()
        vigie.stop()
        sink.close()
        raise
    finally:
        load.stop()
        for client in (feed, resumed):
            if client is not None:
                client.close()
    try:
        load.wait_acked(60)
        acked = set(load.acked)
        numbers = wait_until(lambda: (s := stored_numbers(cluster_dsn)) and
                             len(s) >= len(acked) and s, 120, "every event stored")
        rows = query(cluster_dsn, "SELECT id, opened_at, last_seen_at, count, state "
                                  "FROM alerts WHERE fingerprint = $1",
                     f"{SITE}/centrale/intrusion")
        history = query(cluster_dsn, "SELECT at, action FROM alert_history h JOIN alerts a "
                                     "ON a.id = h.alert_id WHERE a.fingerprint = $1",
                        f"{SITE}/centrale/intrusion")
        feed_rows = query(cluster_dsn, "SELECT type FROM feed WHERE payload->'alert'->>'id' = $1",
                          intrusion)
        audited = wait_until(lambda: query(
            cluster_dsn, "SELECT at, outcome, actor FROM audit_log WHERE target = $1",
            f"/api/v1/alerts/{intrusion}/ack"), 30, "the refused action audited")
        time.sleep(2)  # a second notification would come now, if one were due
        notified = sink.about(intrusion)
    finally:
        load.close()
        vigie.stop()
        sink.close()

    # Stored once, as it was shown: same id, the event's time, every repeat counted.
    assert len(rows) == 1, rows
    [row] = rows
    assert str(row["id"]) == intrusion
    assert row["opened_at"] == first and row["last_seen_at"] == third
    assert stopped_at < row["opened_at"] < restarted_at
    assert row["count"] == 3 and row["state"] == "open"
    assert [h["action"] for h in history] == ["opened"] and history[0]["at"] == first
    # Announced once everywhere: one stored opening in the feed (other nodes, notifiers),
    # one webhook call, and this node's client was not told it again.
    assert Counter(r["type"] for r in feed_rows)["alert.opened"] == 1
    assert notified.count("alert.opened") == 1, notified
    client_openings = Counter(m["alert"]["id"] for m in feed.of_type("alert.opened"))
    assert client_openings[intrusion] == 1
    twice = {a: n for a, n in client_openings.items() if n > 1}
    assert not twice, f"alerts told opened more than once on the live feed: {twice}"
    # The refused action, audited with the time it was made.
    assert [(a["outcome"], a["actor"]) for a in audited] == [("503", "operator-faults")]
    assert stopped_at < audited[0]["at"] < restarted_at
    # And the load around it: nothing lost, nothing twice.
    missing = acked - set(numbers)
    duplicated = {n: c for n, c in numbers.items() if c > 1}
    assert not missing and not duplicated, (len(missing), len(duplicated))
    provisional = sum(1 for m in feed.messages if m.get("provisional"))
    record("outage_alerts", rate=RATE, published=load.attempted, acknowledged=len(acked),
           stored=len(numbers), lost=len(missing), duplicated=len(duplicated),
           intrusion_in_api_s=round(to_api, 2), intrusion_on_feed_s=round(to_feed, 2),
           provisional_messages=provisional, intrusion_count=row["count"])
