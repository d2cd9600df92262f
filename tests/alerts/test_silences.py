"""Silences on a real PostgreSQL, with an injected clock: which alerts a silence matches
(exact values, wildcards, source types), alerts raised during one, silences starting and
ending over open alerts, and two nodes sweeping at once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.alerts import test_escalation
from tests.alerts.test_escalation import FakeClock, Node, row
from vigie.alerts import Raise
from vigie.errors import Conflict, NotFound
from vigie.store import Store
from vigie.store._alerts import Escalation, list_alerts
from vigie.store._silences import Matchers, list_silences

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def occ(source: str = "centrale", **kwargs: Any) -> Any:
    """An occurrence at T0 (this module's), unless told otherwise."""
    return test_escalation.occ(source, **{"at": T0, **kwargs})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def node(store: Store, clock: FakeClock) -> Node:
    return Node(store, clock)


async def silence(node: Node, matchers: Matchers, starts: datetime = T0,
                  ends: datetime = T0 + HOUR) -> uuid.UUID:
    created, _ = await node.alerts.create_silence(matchers, starts, ends, "maintenance",
                                                  "tech-paul")
    return created.id


async def raised_silenced(node: Node, **kwargs: Any) -> bool:
    """Whether the alert is silenced as stored, having checked that the node judges it the
    same in memory (decided while the database is away, with the silences it last read)."""
    [shown] = node.alerts.announce([Raise(occ(**kwargs))])
    [change] = await node.alerts.raise_now([Raise(occ(**kwargs))])
    assert change.action == "opened"
    assert shown.alert.silenced is change.alert.silenced, (shown.alert, change.alert)
    return change.alert.silenced


# --- matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("matchers", "alert", "silenced"), [
    (Matchers(site="clg-pasteur"), {}, True),
    (Matchers(site="clg-jean-moulin"), {}, False),
    (Matchers(site="clg-*"), {}, True),
    (Matchers(site="*-pasteur", kind="intrusion"), {}, True),
    (Matchers(source="centrale"), {}, True),
    (Matchers(source="centrale"), {"source": "centrale-b"}, False),
    (Matchers(source="centrale*"), {"source": "centrale-b"}, True),
    (Matchers(kind="device_*"), {"kind": "device_offline"}, True),
    (Matchers(kind="device_*"), {"kind": "door"}, False),
    # '_' and '%' are literal, not LIKE wildcards
    (Matchers(source="a_b"), {"source": "axb"}, False),
    (Matchers(source="a_b"), {"source": "a_b"}, True),
    (Matchers(source="a%"), {"source": "abc"}, False),
    (Matchers(site="clg-pasteur", source_type="camera"), {}, False),
    (Matchers(site="clg-pasteur", source_type="camera"), {"source_type": "camera"}, True),
    (Matchers(site="clg-pasteur", source_type="sensor"), {}, True),
])
async def test_what_a_silence_matches(node: Node, matchers: Matchers, alert: dict[str, str],
                                      silenced: bool) -> None:
    await silence(node, matchers)
    assert await raised_silenced(node, **alert) is silenced


async def test_only_an_active_silence_silences(node: Node) -> None:
    await silence(node, Matchers(source="before"), T0 - 2 * HOUR, T0 - HOUR)
    await silence(node, Matchers(source="after"), T0 + HOUR, T0 + 2 * HOUR)
    await silence(node, Matchers(source="ends-now"), T0 - HOUR, T0)
    await silence(node, Matchers(source="starts-now"), T0, T0 + HOUR)
    for source, expected in (("before", False), ("after", False), ("ends-now", False),
                             ("starts-now", True)):
        assert await raised_silenced(node, source=source) is expected, source


async def test_a_silence_covers_what_happens_and_what_is_raised_during_it(
    node: Node, clock: FakeClock
) -> None:
    await silence(node, Matchers(site="clg-pasteur"), T0, T0 + HOUR)
    # A device whose clock is behind: its event says 09:58, it arrives during the window.
    clock.now = T0 + MIN
    assert await raised_silenced(node, source="late-clock", at=T0 - 2 * MIN) is True
    # An event of the window replayed after it (a spool, a broker backlog): silenced as it
    # is stored, then surfaced by the next sweep, since it is still open after the window.
    clock.now = T0 + 2 * HOUR
    assert await raised_silenced(node, source="replayed", at=T0 + 30 * MIN) is True
    assert [(c.action, c.alert.source) for c in await node.timers.tick()] == [
        ("unsilenced", "late-clock"), ("unsilenced", "replayed")]
    # Neither then nor now: not silenced.
    assert await raised_silenced(node, source="after", at=T0 + 2 * HOUR) is False


async def test_an_alert_raised_in_a_silence_is_stored_and_told_as_silenced(
    node: Node
) -> None:
    await silence(node, Matchers(site="clg-pasteur", kind="intrusion"))
    changes = await node.alerts.raise_now([Raise(occ())])
    assert [(c.action, c.alert.silenced) for c in changes] == [("opened", True)]
    stored = await row(node.store, changes[0].alert.id)
    assert stored["silenced"] and stored["state"] == "open"
    assert stored["history"][0]["details"] == {"severity": "critical", "silenced": True}


# --- silences starting and ending over open alerts ---------------------------------------------


async def test_a_window_silences_open_alerts_when_it_starts_and_surfaces_them_when_it_ends(
    node: Node
) -> None:
    [alert] = await node.open(occ("entree", kind="offline", source_type="camera",
                                  escalation=Escalation(after=10 * MIN)))
    window = await silence(node, Matchers(site="clg-pasteur", source_type="camera"),
                           T0 + HOUR, T0 + 3 * HOUR)
    assert [c.action for c in await node.at(T0 + 10 * MIN)] == ["escalated"]

    started = await node.at(T0 + HOUR)
    assert [(c.action, c.actor, c.alert.id, c.alert.silenced) for c in started] == [
        ("silenced", "vigie", alert, True)]
    assert await node.at(T0 + 2 * HOUR) == []  # nothing escalates or changes meanwhile

    ended = await node.at(T0 + 3 * HOUR)
    assert [(c.action, c.alert.id, c.alert.silenced) for c in ended] == [
        ("unsilenced", alert, False)]
    history = (await row(node.store, alert))["history"]
    assert [(h["at"], h["action"], h["details"]) for h in history[-2:]] == [
        (T0 + HOUR, "silenced", {"silences": [str(window)]}),
        (T0 + 3 * HOUR, "unsilenced", {"reason": "no active silence matches"})]


async def test_ending_a_silence_early_surfaces_its_alerts_at_once(
    node: Node, clock: FakeClock
) -> None:
    window = await silence(node, Matchers(site="clg-pasteur"))
    [alert] = await node.open(occ())
    clock.now = T0 + 10 * MIN
    ended, changes = await node.alerts.end_silence(window, "op-marie")
    assert (ended.ends_at, ended.ended_by, ended.ended_at) == (
        T0 + 10 * MIN, "op-marie", T0 + 10 * MIN)
    assert [(c.action, c.actor, c.alert.id) for c in changes] == [
        ("unsilenced", "op-marie", alert)]


async def test_an_alert_stays_silenced_while_another_silence_covers_it(
    node: Node, clock: FakeClock
) -> None:
    short = await silence(node, Matchers(site="clg-pasteur"), T0, T0 + HOUR)
    await silence(node, Matchers(kind="intrusion"), T0, T0 + 2 * HOUR)
    [alert] = await node.open(occ())
    clock.now = T0 + 5 * MIN
    _, changes = await node.alerts.end_silence(short, "op-marie")
    assert changes == []
    assert await node.at(T0 + HOUR) == []
    assert [c.action for c in await node.at(T0 + 2 * HOUR)] == ["unsilenced"]
    assert not (await row(node.store, alert))["silenced"]


async def test_a_resolved_alert_keeps_its_flag_for_the_record(
    node: Node, clock: FakeClock
) -> None:
    await silence(node, Matchers(site="clg-pasteur"))
    [alert] = await node.open(occ())
    clock.now = T0 + MIN
    await node.alerts.resolve(alert, "op-marie", "test de la centrale", resolution="test")
    assert await node.at(T0 + 2 * HOUR) == []
    assert (await row(node.store, alert))["silenced"] is True


async def test_ending_a_silence_twice_is_a_conflict(node: Node, clock: FakeClock) -> None:
    window = await silence(node, Matchers(site="clg-pasteur"))
    clock.now = T0 + MIN
    await node.alerts.end_silence(window, "op-marie")
    with pytest.raises(Conflict):
        await node.alerts.end_silence(window, "op-marie")
    with pytest.raises(NotFound):
        await node.alerts.end_silence(uuid.uuid4(), "op-marie")


async def test_two_nodes_sweeping_at_once_change_each_alert_once(
    fresh_dsn: str, clock: FakeClock
) -> None:
    stores = [await Store.open(fresh_dsn, size=4) for _ in range(2)]
    try:
        await stores[0].migrate()
        nodes = [Node(s, clock) for s in stores]
        ids = await nodes[0].open(*(occ(f"capteur-{i}") for i in range(50)))
        await silence(nodes[0], Matchers(site="clg-pasteur"), T0 + HOUR, T0 + 2 * HOUR)
        for when, action in ((T0 + HOUR, "silenced"), (T0 + 2 * HOUR, "unsilenced")):
            clock.now = when
            await asyncio.gather(*(n.timers.tick() for _ in range(4) for n in nodes))
            seen = Counter(c.alert.id for n in nodes for c in n.published if c.action == action)
            assert set(seen) == set(ids) and set(seen.values()) == {1}, action
    finally:
        for s in stores:
            await s.close()


# --- lists ---------------------------------------------------------------------------------------


async def test_silenced_alerts_are_listed_on_request(node: Node) -> None:
    [loud] = await node.open(occ("a"))
    await silence(node, Matchers(source="b"))
    [quiet] = await node.open(occ("b"))

    async def listed(silenced: bool | None) -> set[str]:
        async with node.store.connection() as conn:
            items, _ = await list_alerts(conn, states=None, site=None, severity=None,
                                         sites=None, limit=10, cursor=None, silenced=silenced)
        return {a["id"] for a in json.loads(items)}

    assert await listed(False) == {str(loud)}
    assert await listed(True) == {str(quiet)}
    assert await listed(None) == {str(loud), str(quiet)}


async def test_silences_are_listed_by_state_site_and_scope(node: Node) -> None:
    created = []
    for matchers, starts, ends in (
        (Matchers(site="clg-pasteur"), T0 - 2 * HOUR, T0 - HOUR),
        (Matchers(site="clg-pasteur", kind="door"), T0, T0 + HOUR),
        (Matchers(site="clg-*"), T0 + HOUR, T0 + 2 * HOUR),
        (Matchers(site="clg-jean-moulin"), T0, T0 + HOUR),
    ):
        node.clock.now += MIN  # created one after the other: the list is newest first
        created.append(await silence(node, matchers, starts, ends))
    past, now, later, other = created

    async def listed(states: tuple[str, ...], site: str | None = None,
                     sites: frozenset[str] | None = None) -> list[uuid.UUID]:
        async with node.store.connection() as conn:
            items, _ = await list_silences(conn, now=T0, states=states, site=site,
                                           sites=sites, limit=50, cursor=None)
        return [s.id for s in items]

    assert await listed(("active", "pending")) == [other, later, now]  # newest first
    assert await listed(("expired",)) == [past]
    assert await listed(("active",), site="clg-pasteur") == [now]
    # A token limited to a site sees what can match it, wildcards included.
    assert await listed(("active", "pending", "expired"), sites=frozenset({"clg-pasteur"})
                        ) == [later, now, past]
