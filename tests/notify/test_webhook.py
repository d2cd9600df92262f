"""The webhook notifier on a real PostgreSQL and a real HTTP receiver: signed bodies in feed
order, retries with backoff and jitter, dead letters, filters, restarts, one sender across
nodes, and secrets that stay secret."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.conftest import eventually, free_port
from tests.notify.conftest import (
    SECRET,
    URL_PASSWORD,
    FakeSleep,
    Receiver,
    Rig,
    later,
    notifier_config,
)
from vigie.store import _notify as q

JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"


def webhook(receiver: Receiver, **fields: Any) -> dict[str, Any]:
    return {"type": "webhook", "name": "csu", "url": receiver.url + "/hook", "secret": SECRET,
            **fields}


async def cursor(rig: Rig, name: str = "csu") -> int | None:
    async with rig.store.connection() as conn:
        value = await conn.fetchval("SELECT seq FROM notify_cursors WHERE notifier = $1", name)
    return int(value) if value is not None else None


async def feed_head(rig: Rig) -> int:
    async with rig.store.connection() as conn:
        return int(await conn.fetchval("SELECT max(seq) FROM feed"))


async def accepted(receiver: Receiver, n: int) -> None:
    await eventually(lambda: _at_least(receiver.accepted, n))


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_each_change_is_posted_once_signed_and_in_order(rig: Rig, receiver: Receiver
                                                              ) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    await rig.start(rig.channel(config))
    alert = await rig.open()
    await rig.alerts.acknowledge(alert.id, "operator-1", "vu")
    await rig.alerts.comment(alert.id, "operator-1", "rondier envoyé")  # not wanted
    await rig.resolve(alert)
    await rig.written()
    await accepted(receiver, 3)

    assert receiver.events() == [("alert.opened", "centrale-a"),
                                 ("alert.acknowledged", "centrale-a"),
                                 ("alert.resolved", "centrale-a")]
    assert all(r.signature_ok for r in receiver.hooks)
    first = receiver.accepted[0]
    body = first.json
    assert body["id"] == f"csu:{body['seq']}"
    assert first.headers["X-Vigie-Delivery"] == body["id"]
    assert first.headers["X-Vigie-Event"] == "alert.opened"
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"].startswith("vigie/")
    assert body["url"] == f"https://vigie.test/api/v1/alerts/{alert.id}"
    assert body["alert"]["id"] == str(alert.id) and body["alert"]["severity"] == "critical"
    assert receiver.accepted[2].json["alert"]["state"] == "resolved"
    assert receiver.accepted[2].json["actor"] == "operator-1"
    seqs = [r.json["seq"] for r in receiver.accepted]
    assert seqs == sorted(seqs)
    await eventually(lambda: _equal(cursor(rig), feed_head(rig)))
    assert rig.sample("vigie_notifications_sent_total", "csu") == 3
    assert rig.sample("vigie_notifier_active", "csu") == 1
    assert len(receiver.hooks) == 3  # nothing sent twice, the comment not at all


async def _true(value: bool) -> bool:
    return value


async def _equal(a: Any, b: Any) -> bool:
    return bool(await a == await b)


async def test_failures_are_retried_with_growing_jittered_delays(rig: Rig, receiver: Receiver
                                                                 ) -> None:
    config = notifier_config(rig.dsn, webhook(receiver, max_attempts=5, retry_first="1s",
                                              retry_max="3s"))
    sleep = FakeSleep()
    await rig.start(rig.channel(config, sleep=sleep))
    receiver.fail = [503, 500, 502]
    await rig.open()
    await accepted(receiver, 1)

    assert len(receiver.hooks) == 4
    assert len({r.headers["X-Vigie-Delivery"] for r in receiver.hooks}) == 1  # one delivery
    assert all(r.signature_ok for r in receiver.hooks)
    d1, d2, d3 = sleep.delays
    assert 0.5 <= d1 <= 1.0 and 1.0 <= d2 <= 2.0 and 1.5 <= d3 <= 3.0  # doubling, capped
    assert len(set(sleep.delays)) == 3
    assert rig.sample("vigie_notifications_failed_total", "csu") == 3
    assert rig.sample("vigie_notifications_sent_total", "csu") == 1
    assert rig.sample("vigie_notifications_dead_lettered_total", "csu") == 0


@pytest.mark.parametrize(("retry_after", "expected"), [("120", 120.0), ("9000", 300.0)])
async def test_retry_after_is_waited_for_within_the_cap(rig: Rig, receiver: Receiver,
                                                       retry_after: str, expected: float
                                                       ) -> None:
    config = notifier_config(rig.dsn, webhook(receiver, retry_max="5m"))
    sleep = FakeSleep()
    await rig.start(rig.channel(config, sleep=sleep))
    receiver.fail, receiver.retry_after = [429], retry_after
    await rig.open()
    await accepted(receiver, 1)
    assert sleep.delays == [expected]


async def test_given_up_changes_go_to_dead_letters_and_the_next_ones_go_on(
        rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver, max_attempts=3))
    sleep = FakeSleep()
    await rig.start(rig.channel(config, sleep=sleep))
    receiver.fail = [500, 500, 500]
    lost = await rig.open()
    kept = await rig.open(source="panique-accueil", kind="panic")
    await accepted(receiver, 1)

    assert receiver.events() == [("alert.opened", "panique-accueil")]
    async with rig.store.connection() as conn:
        [dead] = await q.dead_letters(conn, "csu")
    assert dead["type"] == "alert.opened" and dead["alert_id"] == lost.id
    assert dead["attempts"] == 3 and dead["error"] == "HTTP 500"
    assert dead["site"] == JM
    assert dead["payload"]["alert"]["id"] == str(lost.id)  # the body, to send by hand
    assert rig.sample("vigie_notifications_dead_lettered_total", "csu") == 1
    assert rig.sample("vigie_notifications_failed_total", "csu") == 3
    assert len(sleep.delays) == 2
    assert receiver.accepted[0].json["alert"]["id"] == str(kept.id)


async def test_a_refusal_for_good_is_not_retried(rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    sleep = FakeSleep()
    await rig.start(rig.channel(config, sleep=sleep))
    receiver.fail = [400]
    await rig.open()
    await rig.open(source="panique-accueil", kind="panic")
    await accepted(receiver, 1)
    async with rig.store.connection() as conn:
        [dead] = await q.dead_letters(conn, "csu")
    assert (dead["attempts"], dead["error"]) == (1, "HTTP 400")
    assert sleep.delays == []


async def test_secrets_never_reach_logs_errors_or_metrics(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    closed = free_port()
    url = f"http://vigie:{URL_PASSWORD}@127.0.0.1:{closed}/hook?token={URL_PASSWORD}"
    config = notifier_config(rig.dsn, {"type": "webhook", "name": "csu", "url": url,
                                       "secret": SECRET, "max_attempts": 2})
    caplog.set_level(logging.DEBUG)
    await rig.start(rig.channel(config))
    await rig.open()

    async def dead() -> list[dict[str, Any]]:
        async with rig.store.connection() as conn:
            return await q.dead_letters(conn, "csu")

    [letter] = await eventually(dead)
    assert letter["error"] == "cannot connect (Connection refused)"
    shown = "\n".join([caplog.text, repr(letter), rig.metrics.exposition().decode(),
                       repr(config), config.model_dump_json()])
    assert "cannot connect" in caplog.text
    assert URL_PASSWORD not in shown and SECRET not in shown


async def test_filters_by_severity_site_and_silence(rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver, severities=["critical"], sites=[JM]))
    await rig.start(rig.channel(config))
    await rig.open(source="autoprot-baie", kind="tamper", severity="major")
    await rig.open(source="centrale", site=PASTEUR)
    silenced = await rig.open(source="panique-accueil", kind="panic", silenced=True)
    await rig.change("escalated", silenced, escalation_level=1)
    await rig.open()
    await accepted(receiver, 1)
    await rig.open(source="porte-hall", kind="door")
    await accepted(receiver, 2)
    assert receiver.events() == [("alert.opened", "centrale-a"), ("alert.opened", "porte-hall")]
    assert len(receiver.hooks) == 2


async def test_escalation_is_notified_again(rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    await rig.start(rig.channel(config))
    alert = await rig.open()
    await rig.change("escalated", alert, escalation_level=1)
    await accepted(receiver, 2)
    assert receiver.events() == [("alert.opened", "centrale-a"),
                                 ("alert.escalated", "centrale-a")]
    assert receiver.accepted[1].json["alert"]["escalation_level"] == 1


async def test_a_restart_sends_what_is_pending_and_nothing_again(rig: Rig, receiver: Receiver
                                                                 ) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    loop = await rig.start(rig.channel(config))
    await rig.open()
    await accepted(receiver, 1)
    await rig.stop(loop)
    assert rig.sample("vigie_notifier_active", "csu") == 0
    await rig.open(source="panique-accueil", kind="panic")  # while no node sends
    await rig.open(source="autoprot-baie", kind="tamper")
    await rig.start(rig.channel(config))
    await accepted(receiver, 3)
    assert receiver.events() == [("alert.opened", "centrale-a"),
                                 ("alert.opened", "panique-accueil"),
                                 ("alert.opened", "autoprot-baie")]
    await rig.open(source="porte-hall", kind="door")
    await accepted(receiver, 4)
    assert len(receiver.hooks) == 4


async def test_a_new_notifier_is_not_sent_the_history(rig: Rig, receiver: Receiver) -> None:
    await rig.open()
    config = notifier_config(rig.dsn, webhook(receiver))
    await rig.start(rig.channel(config))
    await rig.open(source="panique-accueil", kind="panic")
    await accepted(receiver, 1)
    assert receiver.events() == [("alert.opened", "panique-accueil")]


async def test_one_sender_across_nodes_and_another_takes_over(rig: Rig, receiver: Receiver
                                                              ) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    a = await rig.start(rig.channel(config))
    b = await rig.start(rig.channel(config), wait=False)
    await eventually(lambda: _true(a.sending or b.sending))
    for source, kind in (("centrale-a", "intrusion"), ("panique-accueil", "panic")):
        await rig.open(source=source, kind=kind)
    await accepted(receiver, 2)
    assert not (a.sending and b.sending)
    # The sender's connection is killed on the server's side: the lock goes with it.
    async with rig.store.connection() as conn:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity s "
            "USING (pid) WHERE l.locktype = 'advisory' AND l.granted "
            "AND s.application_name = 'vigie-notify-csu' AND s.datname = current_database()")
    assert len(killed) == 1
    await rig.open(source="autoprot-baie", kind="tamper")
    await rig.open(source="porte-hall", kind="door")
    await accepted(receiver, 4)
    assert [s for _, s in receiver.events()] == [
        "centrale-a", "panique-accueil", "autoprot-baie", "porte-hall"]
    assert len(receiver.hooks) == 4
    assert len({r.json["id"] for r in receiver.accepted}) == 4


async def test_messages_trimmed_before_they_were_sent_are_a_counted_gap(
        rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    loop = await rig.start(rig.channel(config))
    await rig.open()
    await accepted(receiver, 1)
    await rig.stop(loop)
    await rig.open(source="panique-accueil", kind="panic")
    rig.feed.keep_rows = 0
    assert await rig.feed.trim() > 0
    await rig.start(rig.channel(config))
    await rig.open(source="autoprot-baie", kind="tamper")
    await accepted(receiver, 2)
    assert receiver.events() == [("alert.opened", "centrale-a"),
                                 ("alert.opened", "autoprot-baie")]
    assert rig.sample("vigie_notifier_gaps_total", "csu") == 1


async def test_a_bug_in_a_channel_costs_one_dead_letter_not_the_notifier(
        rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    channel = rig.channel(config)
    deliver = channel.deliver

    async def buggy(n: Any) -> Any:
        if n.alert["source"] == "centrale-a":
            raise KeyError("a bug")
        return await deliver(n)

    channel.deliver = buggy
    await rig.start(channel)
    await rig.open()
    await rig.open(source="panique-accueil", kind="panic")
    await accepted(receiver, 1)
    async with rig.store.connection() as conn:
        [dead] = await q.dead_letters(conn, "csu")
    assert dead["error"] == "internal error: KeyError" and dead["payload"]["source"] == "centrale-a"
    assert receiver.events() == [("alert.opened", "panique-accueil")]


async def test_an_alert_out_of_its_silence_is_news(rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    await rig.start(rig.channel(config))
    alert = await rig.open(silenced=True)
    await rig.change("unsilenced", alert, silenced=False)
    await accepted(receiver, 1)
    await rig.open(source="panique-accueil", kind="panic")
    await accepted(receiver, 2)
    assert receiver.events() == [("alert.unsilenced", "centrale-a"),
                                 ("alert.opened", "panique-accueil")]


async def test_the_cursor_passes_camera_changes_too(rig: Rig, receiver: Receiver) -> None:
    """The cursor follows the feed's head, so vigie_notifier_seq against vigie_feed_seq
    says how far behind a notifier is, and a quiet day of alerts is no gap."""
    config = notifier_config(rig.dsn, webhook(receiver))
    await rig.start(rig.channel(config))
    await rig.open()
    await accepted(receiver, 1)
    for state in ("offline", "ok"):
        rig.feed.camera_state(JM, "entree", state, [state] if state != "ok" else [], later(1))
    await rig.written()
    await eventually(lambda: _equal(cursor(rig), feed_head(rig)))
    assert rig.sample("vigie_notifier_seq", "csu") == await feed_head(rig)
    assert len(receiver.hooks) == 1


async def test_a_receiver_that_does_not_answer_times_out(rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver, timeout="100ms", max_attempts=2))
    await rig.start(rig.channel(config))
    receiver.hang = 1.0
    await rig.open()

    async def dead() -> list[dict[str, Any]]:
        async with rig.store.connection() as conn:
            return await q.dead_letters(conn, "csu")

    [letter] = await eventually(dead)
    assert (letter["attempts"], letter["error"]) == (2, "no answer within 0.1s")
    assert len(receiver.hooks) == 2 and receiver.accepted == []
