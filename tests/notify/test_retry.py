"""Dead letters sent again on request, on a real PostgreSQL and real receivers: the node
holding the notifier's lock sends each queued letter once, through the channel's delivery
and retry policy; delivered, the letter is gone; failed again, it stays with its attempts
added up. A webhook gets the original change flagged `redelivered` with the alert as it is
now; Alertmanager gets the alert's current state, never a stale "firing"."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import eventually
from tests.notify.conftest import SECRET, Alertmanager, Receiver, Rig, notifier_config
from vigie.config import Config
from vigie.store import _notify as q


def webhook(receiver: Receiver, **fields: Any) -> dict[str, Any]:
    return {"type": "webhook", "name": "csu", "url": receiver.url + "/hook", "secret": SECRET,
            "max_attempts": 1, **fields}


async def letters(rig: Rig, notifier: str = "csu") -> list[dict[str, Any]]:
    async with rig.store.connection() as conn:
        return await q.list_dead_letters(conn, notifier, None, 100, None)


async def one_letter(rig: Rig, notifier: str = "csu") -> dict[str, Any]:
    [letter] = await eventually(lambda: letters(rig, notifier))
    return letter


async def queue(rig: Rig, letter: dict[str, Any]) -> None:
    """What the API does: queue the letter, and wake whichever node sends."""
    async with rig.store.connection() as conn:
        assert await q.queue_retry(conn, letter["id"], "admin-test") is not None


async def gone(rig: Rig, notifier: str = "csu") -> bool:
    return not await letters(rig, notifier)


async def resent_and_failed(rig: Rig) -> dict[str, Any] | None:
    [letter] = await letters(rig)
    return letter if letter["retries"] else None


async def test_a_resend_delivers_the_change_with_the_alert_as_it_is_now(
        rig: Rig, receiver: Receiver) -> None:
    await rig.start(rig.channel(notifier_config(rig.dsn, webhook(receiver))))
    receiver.fail = [500]
    alert = await rig.open()
    letter = await one_letter(rig)
    await rig.resolve(alert)  # the receiver is back: the resolution goes through live
    await eventually(lambda: _at_least(receiver.accepted, 1))

    await queue(rig, letter)
    await eventually(lambda: gone(rig))
    resolved, resent = (r.json for r in receiver.accepted)
    assert resolved["type"] == "alert.resolved"
    # The change it was for, so that the receiver de-duplicates it and sees it is older...
    assert (resent["id"], resent["type"], resent["seq"]) == (
        f"csu:{letter['seq']}", "alert.opened", letter["seq"])
    assert resent["seq"] < resolved["seq"] and resent["redelivered"] is True
    # ... with the alert as it is now: not set back to open.
    assert resent["alert"]["state"] == "resolved"
    assert resent["alert"] == resolved["alert"]  # as the API shows it, like a live change
    assert receiver.accepted[1].signature_ok
    assert rig.sample("vigie_notifications_redelivered_total", "csu") == 1


async def test_a_resend_that_fails_again_stays_a_dead_letter(rig: Rig,
                                                             receiver: Receiver) -> None:
    await rig.start(rig.channel(notifier_config(rig.dsn, webhook(receiver))))
    receiver.fail = [500]
    await rig.open()
    letter = await one_letter(rig)
    assert (letter["attempts"], letter["retries"]) == (1, 0)

    receiver.fail = [503]
    await queue(rig, letter)
    again = await eventually(lambda: resent_and_failed(rig))
    assert again["id"] == letter["id"]
    assert (again["attempts"], again["retries"], again["error"]) == (2, 1, "HTTP 503")
    assert again["retry_requested_at"] is None and again["failed_at"] > letter["failed_at"]
    assert again["payload"]["redelivered"] is True  # the body of the last attempt
    assert receiver.accepted == [] and len(receiver.hooks) == 2
    assert rig.sample("vigie_notifications_redelivered_total", "csu") == 0


async def three_dead_letters(rig: Rig, receiver: Receiver) -> None:
    """A webhook notifier whose receiver refused three alerts: three dead letters."""
    await rig.start(rig.channel(notifier_config(rig.dsn, webhook(receiver))))
    receiver.fail = [500, 500, 500]
    for source, kind in (("centrale-a", "intrusion"), ("panique-accueil", "panic"),
                         ("autoprot-baie", "tamper")):
        await rig.open(source=source, kind=kind)
    await eventually(lambda: _count(letters(rig), 3))


async def test_queued_resends_go_out_in_feed_order_between_live_changes(
        rig: Rig, receiver: Receiver) -> None:
    await three_dead_letters(rig, receiver)
    async with rig.store.connection() as conn:
        assert await q.queue_retries_of(conn, "csu", None, None, "admin-test") == (3, 0)
    await eventually(lambda: gone(rig))
    assert [r.json["alert"]["source"] for r in receiver.accepted] == [
        "centrale-a", "panique-accueil", "autoprot-baie"]


async def test_one_node_sends_a_resend_once(rig: Rig, receiver: Receiver) -> None:
    config = notifier_config(rig.dsn, webhook(receiver))
    a = await rig.start(rig.channel(config))
    b = await rig.start(rig.channel(config), wait=False)
    receiver.fail = [500]
    await rig.open()
    letter = await one_letter(rig)
    await queue(rig, letter)
    await eventually(lambda: gone(rig))
    await asyncio.sleep(0.5)  # time for a second sender to show itself, if there were one
    assert len(receiver.accepted) == 1 and len(receiver.hooks) == 2
    assert not (a.sending and b.sending)


async def test_alertmanager_is_sent_the_current_state_not_a_stale_firing(
        rig: Rig, alertmanager: Alertmanager) -> None:
    config = am_config(rig, alertmanager)
    await alertmanager.stop()
    await rig.start(rig.channel(config))
    alert = await rig.open()
    letter = await one_letter(rig, "am")
    assert letter["payload"][0]["labels"]["source"] == "centrale-a"
    assert "endsAt" not in letter["payload"][0]  # it was to fire

    await alertmanager.start()
    await rig.resolve(alert)
    await eventually(lambda: _sent(rig, "am", 1))
    await queue(rig, letter)
    await eventually(lambda: gone(rig, "am"))
    assert await alertmanager.alerts() == [], "a resolved alert must not fire again"
    assert rig.sample("vigie_notifications_redelivered_total", "am") == 1


async def test_alertmanager_is_sent_an_alert_still_open(rig: Rig,
                                                        alertmanager: Alertmanager) -> None:
    config = am_config(rig, alertmanager)
    await alertmanager.stop()
    await rig.start(rig.channel(config))
    await rig.open()
    letter = await one_letter(rig, "am")
    await alertmanager.start()
    await queue(rig, letter)
    await eventually(lambda: gone(rig, "am"))
    [held] = await alertmanager.alerts()
    assert held["labels"]["source"] == "centrale-a" and held["status"]["state"] == "active"


def am_config(rig: Rig, am: Alertmanager) -> Config:
    # resend_every long: only the resend can have posted what Alertmanager holds.
    return notifier_config(rig.dsn, {"type": "alertmanager", "name": "am", "url": am.url,
                                     "resend_every": "1h", "max_attempts": 1})


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _count(found: Any, n: int) -> bool:
    return len(await found) == n


async def _sent(rig: Rig, notifier: str, n: int) -> bool:
    return rig.sample("vigie_notifications_sent_total", notifier) >= n


async def queued_and_failed(rig: Rig, n: int) -> list[dict[str, Any]] | None:
    """The dead letters once `n` of them were sent again and failed, oldest first."""
    found = sorted(await letters(rig), key=lambda d: d["seq"])
    return found if sum(d["retries"] for d in found) == n else None


async def test_a_receiver_still_failing_stops_the_queued_resends(
        rig: Rig, receiver: Receiver) -> None:
    await three_dead_letters(rig, receiver)
    receiver.fail = [503]
    async with rig.store.connection() as conn:
        assert await q.queue_retries_of(conn, "csu", None, None, "admin-test") == (3, 0)
    first, *others = await eventually(lambda: queued_and_failed(rig, 1))
    assert (first["retries"], first["error"]) == (1, "HTTP 503")
    # Each of the others would spend the retry policy on a receiver still down.
    assert [d["retry_requested_at"] for d in others] == [None, None]
    assert len(receiver.hooks) == 4 and receiver.accepted == []


async def test_a_letter_refused_for_good_does_not_stop_the_others(
        rig: Rig, receiver: Receiver) -> None:
    await rig.start(rig.channel(notifier_config(rig.dsn, webhook(receiver))))
    receiver.fail = [500, 500]
    await rig.open()
    await rig.open(source="panique-accueil", kind="panic")
    await eventually(lambda: _count(letters(rig), 2))
    receiver.fail = [422]  # that one body, not the receiver
    async with rig.store.connection() as conn:
        assert await q.queue_retries_of(conn, "csu", None, None, "admin-test") == (2, 0)

    async def one_left() -> list[dict[str, Any]] | None:
        found = await letters(rig)
        return found if len(found) == 1 and found[0]["retries"] == 1 else None

    [refused] = await eventually(one_left)
    assert refused["error"] == "HTTP 422" and refused["payload"]["alert"]["source"] == "centrale-a"
    assert [r.json["alert"]["source"] for r in receiver.accepted] == ["panique-accueil"]
