"""Notifiers and the operator workflow on a real node: an escalation (due on the node's
injected clock, no waiting) is notified again to the webhook and re-pages Alertmanager; a
silence ends the alert in Alertmanager and tells the webhook nothing; its end is news."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import eventually, make_config
from tests.notify.conftest import SECRET, Alertmanager, Receiver
from vigie.alerts import Raise
from vigie.alerts._timers import AlertTimers
from vigie.app import Node, running_node
from vigie.store._alerts import AlertOccurrence
from vigie.store._silences import Matchers

JM = "clg-jean-moulin"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def node(fresh_dsn: str, receiver: Receiver, alertmanager: Alertmanager,
               clock: Clock) -> AsyncIterator[Node]:
    config = make_config(fresh_dsn, "mqtt://127.0.0.1:1", notifiers=[
        {"type": "webhook", "name": "csu", "url": receiver.url + "/hook", "secret": SECRET,
         "actions": ["opened", "escalated", "silenced", "unsilenced", "resolved"]},
        {"type": "alertmanager", "name": "am", "url": alertmanager.url, "resend_every": "1h"},
    ], alerts={"escalation": {"critical": {"after": "5m"}}},
       sites=[{k: v for k, v in s.items() if k != "cameras"} for s in _sites()])
    async with running_node(config, clock=clock, with_mqtt=False) as node:
        assert node.notifiers is not None
        await eventually(lambda: _sending(node))
        yield node


def _sites() -> list[dict[str, Any]]:
    from tests.conftest import SITES

    return SITES


async def _sending(node: Node) -> bool:
    assert node.notifiers is not None
    return len(node.notifiers.loops) == 2 and all(lp.sending for lp in node.notifiers.loops)


async def firing(am: Alertmanager) -> list[str]:
    return sorted(a["labels"]["escalation_level"] for a in await am.alerts())


def notified(receiver: Receiver, status: str, level: str) -> list[Any]:
    return [a for n in receiver.am_notifications for a in n["alerts"]
            if a["status"] == status and a["labels"]["escalation_level"] == level]


async def _some(items: list[Any]) -> list[Any]:
    return items


async def test_an_escalation_is_notified_again(node: Node, clock: Clock, receiver: Receiver,
                                               alertmanager: Alertmanager) -> None:
    await node.alerts.raise_now([Raise(AlertOccurrence(
        site=JM, source="centrale-a", source_type="sensor", kind="intrusion",
        severity="critical", title="Intrusion", at=clock.now))])
    await eventually(lambda: _events(receiver, ["alert.opened"]))
    assert await eventually(lambda: firing(alertmanager)) == ["0"]

    clock.now += timedelta(minutes=6)  # not acknowledged in 5 minutes
    await AlertTimers(node.alerts).tick()
    await eventually(lambda: _events(receiver, ["alert.opened", "alert.escalated"]))
    assert receiver.accepted[1].json["alert"]["escalation_level"] == 1

    async def level_one() -> bool:
        return await firing(alertmanager) == ["1"]

    await eventually(level_one)
    await eventually(lambda: _some(notified(receiver, "firing", "1")))  # paged again
    await eventually(lambda: _some(notified(receiver, "resolved", "0")))


async def test_a_silence_hides_the_alert_and_its_end_is_news(
        node: Node, clock: Clock, receiver: Receiver, alertmanager: Alertmanager) -> None:
    await node.alerts.raise_now([Raise(AlertOccurrence(
        site=JM, source="autoprot-baie", source_type="sensor", kind="tamper",
        severity="major", title="Tamper", at=clock.now))])
    await eventually(lambda: firing(alertmanager))
    silence, changes = await node.alerts.create_silence(
        Matchers(site=JM, source="autoprot-*"), clock.now, clock.now + timedelta(hours=2),
        f"maintenance {uuid.uuid4().hex[:4]}", "tech-paul")
    assert [c.action for c in changes] == ["silenced"]

    async def none_firing() -> bool:
        return await firing(alertmanager) == []

    await eventually(none_firing)
    await node.alerts.end_silence(silence.id, "tech-paul")
    await eventually(lambda: firing(alertmanager))
    # The webhook was told of the opening and of the end of the silence, not of the silence.
    await eventually(lambda: _events(receiver, ["alert.opened", "alert.unsilenced"]))


async def _events(receiver: Receiver, types: list[str]) -> bool:
    return [r.json["type"] for r in receiver.accepted] == types
