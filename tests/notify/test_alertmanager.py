"""The Alertmanager notifier against Debian's prometheus-alertmanager, started on a free port
and queried through its own API v2; its own notifications (firing, resolved) go to a local
receiver, so what it would page people with is checked too."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.conftest import eventually
from tests.notify.conftest import Alertmanager, Receiver, Rig, notifier_config
from vigie.config import Config

JM, PASTEUR = "clg-jean-moulin", "clg-pasteur"


def am_config(rig: Rig, am: Alertmanager, **fields: Any) -> Config:
    return notifier_config(rig.dsn, {"type": "alertmanager", "name": "am", "url": am.url,
                                     "resend_every": "1h", **fields})


async def firing(am: Alertmanager, source: str | None = None) -> list[dict[str, Any]]:
    """Alerts Alertmanager holds as active, optionally of one source."""
    return [a for a in await am.alerts() if source is None or a["labels"]["source"] == source]


def notified(receiver: Receiver, status: str, **labels: str) -> list[dict[str, Any]]:
    """Alerts of Alertmanager's own notifications with this status and these labels."""
    return [a for n in receiver.am_notifications for a in n["alerts"]
            if a["status"] == status and all(a["labels"].get(k) == v for k, v in labels.items())]


def same_instant(a: str, b: str) -> bool:
    return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(b)


async def test_an_alert_fires_then_resolves_in_alertmanager(
        rig: Rig, alertmanager: Alertmanager, receiver: Receiver) -> None:
    await rig.start(rig.channel(am_config(rig, alertmanager)))
    alert = await rig.open()
    [held] = await eventually(lambda: firing(alertmanager))

    assert held["labels"] == {
        "alertname": "VigieIntrusion", "site": JM, "source": "centrale-a",
        "source_type": "sensor", "kind": "intrusion", "severity": "critical",
        "escalation_level": "0"}
    url = f"https://vigie.test/api/v1/alerts/{alert.id}"
    assert held["generatorURL"] == url
    assert held["annotations"]["url"] == url
    assert held["annotations"]["title"] == "intrusion centrale-a"
    assert held["annotations"]["state"] == "open"
    assert same_instant(held["startsAt"], alert.opened_at.isoformat())
    assert held["status"]["state"] == "active"
    await eventually(lambda: _some(notified(receiver, "firing", source="centrale-a")))

    resolved = await rig.resolve(alert)
    await eventually(lambda: _none(firing(alertmanager)))
    [told] = await eventually(lambda: _some(notified(receiver, "resolved", source="centrale-a")))
    assert resolved.resolved_at is not None
    assert same_instant(told["endsAt"], resolved.resolved_at.isoformat())
    assert rig.sample("vigie_notifications_sent_total", "am") == 2


async def _some(items: list[Any]) -> list[Any]:
    return items


async def _none(coro: Any) -> bool:
    return not await coro


async def test_an_escalation_is_a_new_alert_and_ends_the_previous_level(
        rig: Rig, alertmanager: Alertmanager, receiver: Receiver) -> None:
    await rig.start(rig.channel(am_config(rig, alertmanager)))
    alert = await rig.open()
    await eventually(lambda: _some(notified(receiver, "firing", escalation_level="0")))
    await rig.change("escalated", alert, escalation_level=1)

    async def level_one() -> bool:
        return [a["labels"]["escalation_level"] for a in await firing(alertmanager)] == ["1"]

    await eventually(level_one)
    # Alertmanager pages again for the escalated alert, and closes the level below.
    await eventually(lambda: _some(notified(receiver, "firing", escalation_level="1")))
    await eventually(lambda: _some(notified(receiver, "resolved", escalation_level="0")))


async def test_a_graver_repeat_replaces_the_milder_alert(
        rig: Rig, alertmanager: Alertmanager) -> None:
    await rig.start(rig.channel(am_config(rig, alertmanager)))
    door = await rig.open(source="porte-hall", kind="door", severity="info")
    await eventually(lambda: firing(alertmanager))
    await rig.change("repeated", door, severity="critical")  # the same door, now at night

    async def critical_only() -> bool:
        return [a["labels"]["severity"] for a in await firing(alertmanager)] == ["critical"]

    await eventually(critical_only)


async def test_silenced_and_filtered_alerts_are_not_posted(
        rig: Rig, alertmanager: Alertmanager) -> None:
    config = am_config(rig, alertmanager, severities=["critical", "major"], sites=[JM])
    await rig.start(rig.channel(config))
    await rig.open(source="centrale", site=PASTEUR)
    await rig.open(source="porte-hall", kind="door", severity="info")
    await rig.open(source="panique-accueil", kind="panic", silenced=True)
    await rig.open(source="autoprot-baie", kind="tamper", severity="major")
    await eventually(lambda: firing(alertmanager))
    await rig.open()

    async def sources() -> list[str]:
        return sorted(a["labels"]["source"] for a in await firing(alertmanager))

    assert await eventually(lambda: _when(sources(), 2)) == ["autoprot-baie", "centrale-a"]


async def _when(coro: Any, n: int) -> Any:
    items = await coro
    return items if len(items) == n else None


async def test_the_resend_round_restores_a_forgetful_alertmanager(
        rig: Rig, alertmanager: Alertmanager) -> None:
    config = am_config(rig, alertmanager)
    loop = await rig.start(rig.channel(config))
    await rig.open()
    await rig.open(source="centrale", site=PASTEUR, severity="major")
    gone = await rig.open(source="autoprot-baie", kind="tamper", severity="major")
    await rig.resolve(gone)
    await eventually(lambda: _when(firing(alertmanager), 2))

    await alertmanager.stop()  # a restart without its storage: it forgets every alert
    await alertmanager.start()
    assert await firing(alertmanager) == []
    async with rig.store.connection() as conn:
        await loop.channel.tick(conn)
    held = await firing(alertmanager)
    assert sorted(a["labels"]["source"] for a in held) == ["centrale", "centrale-a"]
    assert rig.sample("vigie_notifications_resent_total", "am") == 2


async def test_a_node_taking_over_posts_every_active_alert_at_once(
        rig: Rig, alertmanager: Alertmanager) -> None:
    config = am_config(rig, alertmanager)
    loop = await rig.start(rig.channel(config))
    await rig.open()
    await eventually(lambda: firing(alertmanager))
    await rig.stop(loop)
    await alertmanager.stop()
    await alertmanager.start()
    await rig.start(rig.channel(config))  # the next sender's first round, not in an hour
    [held] = await eventually(lambda: firing(alertmanager))
    assert held["labels"]["source"] == "centrale-a"


async def test_an_alert_silenced_after_it_was_posted_is_ended(
        rig: Rig, alertmanager: Alertmanager) -> None:
    loop = await rig.start(rig.channel(am_config(rig, alertmanager)))
    alert = await rig.open()
    await eventually(lambda: firing(alertmanager))
    async with rig.store.connection() as conn:
        await conn.execute("UPDATE alerts SET silenced = true WHERE id = $1", alert.id)
        await loop.channel.tick(conn)
    assert await firing(alertmanager) == []


async def test_an_unreachable_alertmanager_is_retried_then_dead_lettered(
        rig: Rig, alertmanager: Alertmanager) -> None:
    config = am_config(rig, alertmanager, max_attempts=2)
    await alertmanager.stop()
    await rig.start(rig.channel(config))
    await rig.open()

    async def dead() -> int:
        return int(rig.sample("vigie_notifications_dead_lettered_total", "am"))

    await eventually(dead)
    assert rig.sample("vigie_notifications_failed_total", "am") == 2


@pytest.mark.parametrize(("resend_every", "warned"), [("1m", False), ("5m", True)])
async def test_a_resend_interval_not_below_resolve_timeout_is_warned(
        rig: Rig, alertmanager: Alertmanager, caplog: pytest.LogCaptureFixture,
        resend_every: str, warned: bool) -> None:
    loop = await rig.start(rig.channel(am_config(rig, alertmanager,
                                                 resend_every=resend_every)))
    await eventually(lambda: _true(loop.channel._checked))
    warning = "is not below Alertmanager's resolve_timeout (300s)"
    assert (warning in caplog.text) is warned


async def _true(value: bool) -> bool:
    return value


async def test_silencing_and_unsilencing_follow_in_alertmanager(
        rig: Rig, alertmanager: Alertmanager) -> None:
    await rig.start(rig.channel(am_config(rig, alertmanager)))
    alert = await rig.open()
    await eventually(lambda: firing(alertmanager))
    alert = await rig.change("silenced", alert, silenced=True)  # a silence created later
    await eventually(lambda: _none(firing(alertmanager)))
    await rig.change("unsilenced", alert, silenced=False)
    [held] = await eventually(lambda: firing(alertmanager))
    assert held["labels"]["source"] == "centrale-a"
