"""Escalation on a real PostgreSQL, with an injected clock: when an unacknowledged alert
escalates, what stops and restarts it, restarts of the node, and two nodes on one database
escalating each step exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import make_config
from vigie.alerts import (
    AlertChange,
    AlertService,
    AlertTimers,
    Raise,
    Resolve,
    RuleBook,
    escalation_by_severity,
)
from vigie.errors import ConfigError
from vigie.events import SensorEvent
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store._alerts import AlertOccurrence, Escalation
from vigie.store._silences import Matchers

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
POLICY = Escalation(after=5 * MIN, repeat=10 * MIN, max=3)


class FakeClock:
    """Time moves only when a test says so."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def occ(source: str = "centrale", *, severity: str = "critical", at: datetime = T0,
        escalation: Escalation | None = POLICY, kind: str = "intrusion",
        source_type: str = "sensor") -> AlertOccurrence:
    return AlertOccurrence(site="clg-pasteur", source=source, source_type=source_type,
                           kind=kind, severity=severity, title=f"{kind}: {source}", at=at,
                           escalation=escalation)


class Node:
    """What one vigie node runs for escalation: its service (with a pool of its own) and
    timers, and the changes its listeners were told about."""

    def __init__(self, store: Store, clock: FakeClock,
                 by_severity: dict[str, Escalation] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.alerts = AlertService(store, Metrics("test"), clock, by_severity)
        self.timers = AlertTimers(self.alerts)
        self.published: list[AlertChange] = []
        self.alerts.subscribe(self.published.append)

    def escalations(self) -> list[tuple[uuid.UUID, int]]:
        return [(c.alert.id, c.alert.escalation_level) for c in self.published
                if c.action == "escalated"]

    async def open(self, *occurrences: AlertOccurrence) -> list[uuid.UUID]:
        changes = await self.alerts.raise_now([Raise(o) for o in occurrences])
        return [c.alert.id for c in changes]

    async def at(self, when: datetime) -> list[AlertChange]:
        """Move the clock to `when` and tick once."""
        self.clock.now = when
        return await self.timers.tick()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def node(store: Store, clock: FakeClock) -> Node:
    return Node(store, clock)


async def row(store: Store, alert_id: uuid.UUID) -> dict[str, Any]:
    async with store.connection() as conn:
        found = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
        history = await conn.fetch(
            "SELECT at, actor, action, details FROM alert_history WHERE alert_id = $1 "
            "ORDER BY at, id", alert_id)
    return {**dict(found), "history": [dict(h) for h in history]}


# --- the steps -------------------------------------------------------------------------------


async def test_an_unacknowledged_alert_escalates_at_each_step_up_to_the_maximum(
    node: Node
) -> None:
    [alert] = await node.open(occ())
    assert (await row(node.store, alert))["next_escalation_at"] == T0 + 5 * MIN

    assert await node.at(T0 + 5 * MIN - timedelta(seconds=1)) == []
    [first] = await node.at(T0 + 5 * MIN)
    assert (first.action, first.actor, first.alert.escalation_level) == ("escalated", "vigie", 1)
    assert first.alert.escalated_at == T0 + 5 * MIN
    assert first.alert.next_escalation_at == T0 + 15 * MIN
    assert await node.at(T0 + 5 * MIN) == []  # the same step, again: nothing
    assert await node.at(T0 + 14 * MIN) == []
    [second] = await node.at(T0 + 15 * MIN)
    [third] = await node.at(T0 + 25 * MIN)
    assert (second.alert.escalation_level, third.alert.escalation_level) == (2, 3)
    assert third.alert.next_escalation_at is None  # max reached
    assert await node.at(T0 + 10 * 60 * MIN) == []

    stored = await row(node.store, alert)
    assert stored["escalation_level"] == 3
    assert [(h["at"], h["actor"], h["action"], h["details"]) for h in stored["history"]] == [
        (T0, "vigie", "opened", {"severity": "critical"}),
        (T0 + 5 * MIN, "vigie", "escalated", {"level": 1}),
        (T0 + 15 * MIN, "vigie", "escalated", {"level": 2}),
        (T0 + 25 * MIN, "vigie", "escalated", {"level": 3}),
    ]
    assert node.escalations() == [(alert, 1), (alert, 2), (alert, 3)]


async def test_without_repeat_an_alert_escalates_once(node: Node) -> None:
    [alert] = await node.open(occ(escalation=Escalation(after=2 * MIN)))
    assert [c.alert.escalation_level for c in await node.at(T0 + 2 * MIN)] == [1]
    assert await node.at(T0 + 24 * 60 * MIN) == []
    assert (await row(node.store, alert))["next_escalation_at"] is None


async def test_an_alert_without_policy_never_escalates(node: Node) -> None:
    [alert] = await node.open(occ(escalation=None))
    assert await node.at(T0 + 365 * 24 * 60 * MIN) == []
    assert (await row(node.store, alert))["escalation_level"] == 0


async def test_acknowledging_stops_escalation_and_unacknowledging_restarts_it(
    node: Node, clock: FakeClock
) -> None:
    [alert] = await node.open(occ())
    await node.at(T0 + 5 * MIN)  # level 1
    clock.now = T0 + 6 * MIN
    acked = await node.alerts.acknowledge(alert, "op-marie", "rondier envoyé")
    assert acked.next_escalation_at is None
    assert await node.at(T0 + 120 * MIN) == []

    clock.now = T0 + 130 * MIN
    released = await node.alerts.unacknowledge(alert, "op-marie", "fausse piste")
    assert (released.state, released.acknowledged_by) == ("open", None)
    # Nobody has it any more: the escalation starts again, from now, with all its steps.
    assert released.next_escalation_at == T0 + 135 * MIN
    assert await node.at(T0 + 134 * MIN) == []
    levels = [c.alert.escalation_level for t in (135, 145, 155, 165)
              for c in await node.at(T0 + t * MIN)]
    assert levels == [2, 3, 4]


async def test_resolving_stops_escalation(node: Node, clock: FakeClock) -> None:
    first, second = await node.open(occ("a"), occ("b", kind="door"))
    clock.now = T0 + MIN
    await node.alerts.resolve(first, "op-marie", None, resolution="false_alarm")
    async with node.store.transaction() as conn:  # b recovers by itself
        changes = await node.alerts.apply(conn, [Resolve("clg-pasteur/b/door", T0 + MIN, "ok")])
    assert [c.alert.resolution for c in changes] == ["auto"]
    assert await node.at(T0 + 60 * MIN) == []
    for alert in (first, second):
        assert (await row(node.store, alert))["next_escalation_at"] is None


async def test_after_a_long_stop_a_missed_step_escalates_once_and_counts_on_from_now(
    node: Node
) -> None:
    """Every node was down for hours: no burst of escalations to catch up."""
    [alert] = await node.open(occ())
    [change] = await node.at(T0 + 3 * 60 * MIN)
    assert change.alert.escalation_level == 1
    assert change.alert.next_escalation_at == T0 + 3 * 60 * MIN + 10 * MIN
    assert await node.at(T0 + 3 * 60 * MIN + 9 * MIN) == []
    assert len(await node.at(T0 + 3 * 60 * MIN + 10 * MIN)) == 1
    assert (await row(node.store, alert))["escalation_level"] == 2


async def test_the_delay_counts_from_when_the_alert_is_raised(node: Node, clock: FakeClock
                                                           ) -> None:
    """An event of an hour ago, stored only now (replayed after an outage): the operators
    get the whole delay to acknowledge it, from now."""
    clock.now = T0 + 60 * MIN
    [alert] = await node.open(occ(at=T0))
    assert (await row(node.store, alert))["next_escalation_at"] == T0 + 65 * MIN
    assert await node.at(T0 + 64 * MIN) == []
    assert len(await node.at(T0 + 65 * MIN)) == 1


async def test_a_repeat_does_not_move_the_escalation(node: Node) -> None:
    [alert] = await node.open(occ())
    await node.open(occ(at=T0 + 4 * MIN))
    [change] = await node.at(T0 + 5 * MIN)
    assert change.alert.id == alert and change.alert.count == 2


async def test_an_alert_without_policy_takes_the_policy_of_a_graver_repeat(node: Node) -> None:
    """A door open by day (info, no escalation), still open at night (critical): from the
    night-time repeat on, it escalates."""
    [alert] = await node.open(occ("porte", kind="door", severity="info", escalation=None))
    await node.open(occ("porte", kind="door", at=T0 + 60 * MIN,
                        escalation=Escalation(after=5 * MIN)))
    assert (await row(node.store, alert))["next_escalation_at"] == T0 + 65 * MIN
    [change] = await node.at(T0 + 65 * MIN)
    assert (change.alert.id, change.alert.severity) == (alert, "critical")


async def test_escalation_by_severity_for_alerts_no_rule_covers(
    store: Store, clock: FakeClock
) -> None:
    node = Node(store, clock, {"major": Escalation(after=3 * MIN)})
    offline, dark = await node.open(
        occ("entree", kind="offline", severity="major", escalation=None, source_type="camera"),
        occ("cour", kind="too_dark", severity="minor", escalation=None, source_type="camera"))
    changes = await node.at(T0 + 60 * MIN)
    assert [(c.alert.id, c.alert.escalation_level) for c in changes] == [(offline, 1)]
    assert (await row(store, dark))["escalation_level"] == 0


async def test_a_silenced_alert_does_not_escalate(node: Node, clock: FakeClock) -> None:
    [alert] = await node.open(occ())
    await node.alerts.create_silence(Matchers(site="clg-pasteur"), T0, T0 + 60 * MIN,
                                     "travaux", "op-marie")
    assert [c.action for c in await node.at(T0 + 30 * MIN)] == []
    # The silence ends with the alert still open: it surfaces, and its escalation starts
    # again from then (the operators were never told while it was silenced).
    changes = await node.at(T0 + 60 * MIN)
    assert [(c.action, c.alert.id) for c in changes] == [("unsilenced", alert)]
    assert changes[0].alert.next_escalation_at == T0 + 65 * MIN
    assert [c.action for c in await node.at(T0 + 65 * MIN)] == ["escalated"]


# --- across restarts and nodes -----------------------------------------------------------------


async def test_escalation_survives_a_restart(fresh_dsn: str, clock: FakeClock) -> None:
    """The due time is in the database: a node started after the alert was opened (by a
    node since stopped) escalates it on time."""
    before = await Store.open(fresh_dsn, size=2)
    try:
        await before.migrate()
        [alert] = await Node(before, clock).open(occ())
    finally:
        await before.close()

    after = await Store.open(fresh_dsn, size=2)
    try:
        node = Node(after, clock)
        assert await node.at(T0 + 4 * MIN) == []
        [change] = await node.at(T0 + 5 * MIN)
        assert (change.alert.id, change.alert.escalation_level) == (alert, 1)
    finally:
        await after.close()


@pytest.fixture
async def two_stores(fresh_dsn: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two nodes' pools on one database."""
    a = await Store.open(fresh_dsn, size=4)
    b = await Store.open(fresh_dsn, size=4)
    try:
        await a.migrate()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_two_nodes_escalate_each_step_exactly_once(
    two_stores: tuple[Store, Store], clock: FakeClock
) -> None:
    nodes = [Node(two_stores[0], clock), Node(two_stores[1], clock)]
    ids = await nodes[0].open(*(occ(f"capteur-{i}") for i in range(60)))
    assert len(ids) == 60

    async def tick_both_many_times() -> None:
        # Small batches and several passes per node, all at once: the nodes interleave
        # on the same rows instead of one of them taking everything in a single query.
        await asyncio.gather(*(n.alerts.escalate_due(limit=7)
                               for _ in range(6) for n in nodes))
        await asyncio.gather(*(n.timers.tick() for n in nodes))

    for step, minutes in enumerate((5, 15, 25, 35), start=1):
        clock.now = T0 + minutes * MIN
        await tick_both_many_times()
        seen = Counter(e for n in nodes for e in n.escalations())
        # Each alert escalated exactly once to each level so far, by one node or the other.
        expected = {(i, level) for i in ids for level in range(1, min(step, 3) + 1)}
        assert set(seen) == expected
        assert set(seen.values()) == {1}

    assert all(n.escalations() for n in nodes), "one node did all the work: no contention"
    async with two_stores[0].connection() as conn:
        levels = await conn.fetch("SELECT escalation_level, count(*) FROM alerts GROUP BY 1")
        entries = await conn.fetchval(
            "SELECT count(*) FROM alert_history WHERE action = 'escalated'")
    assert [tuple(r) for r in levels] == [(3, 60)]
    assert entries == 60 * 3


# --- configuration -----------------------------------------------------------------------------


def _config(**alerts: Any) -> Any:
    return make_config("postgresql://nowhere/x", "mqtt://127.0.0.1:1", alerts=alerts)


def test_rules_and_severities_give_escalation_policies() -> None:
    config = _config(
        rules=[{"kind": "intrusion", "states": "alarm", "severity": "critical",
                "escalate_after": "5m", "escalate_repeat": "10m", "escalate_max": 4},
               {"kind": "door", "states": "open", "severity": "info"}],
        escalation={"major": {"after": "15m"}})
    rules = RuleBook(config, lambda site, at: False)

    def escalation_of(sensor: str, kind: str, state: str) -> Escalation | None:
        event = SensorEvent(site="clg-pasteur", sensor=sensor, kind=kind, state=state, ts=T0,
                            received_at=T0, dedup_key=sensor, zone="z")
        [decision] = rules.for_event(event, None)
        assert isinstance(decision, Raise)
        return decision.occurrence.escalation

    assert escalation_of("centrale", "intrusion", "alarm") == Escalation(5 * MIN, 10 * MIN, 4)
    assert escalation_of("porte-gymnase", "door", "open") is None
    by_severity = escalation_by_severity(config)
    assert by_severity == {"major": Escalation(15 * MIN, None, 3)}
    assert by_severity["major"].steps == 1  # without repeat, the maximum does not matter


@pytest.mark.parametrize(("rule", "message"), [
    ({"escalate_repeat": "10m"}, "escalate_repeat needs escalate_after"),
    ({"escalate_after": "soon"}, "duration"),
    ({"escalate_after": "0s"}, "positive"),
    ({"escalate_after": "5m", "escalate_max": 0}, "escalate_max"),
])
def test_bad_escalation_settings_are_reported_by_path(rule: dict[str, Any], message: str
                                                      ) -> None:
    with pytest.raises(ConfigError) as err:
        _config(rules=[{"kind": "intrusion", "states": "alarm", "severity": "critical", **rule}])
    assert message in str(err.value) and "alerts.rules[0]" in str(err.value)


@pytest.mark.parametrize(("escalation", "path"), [
    ({"urgent": {"after": "5m"}}, "alerts.escalation.urgent"),
    ({"critical": {}}, "alerts.escalation.critical.after"),
    ({"critical": {"after": "5m", "every": "1m"}}, "alerts.escalation.critical.every"),
    ({"critical": {"after": "5m", "max": 0}}, "alerts.escalation.critical.max"),
])
def test_bad_escalation_by_severity_is_reported_by_path(escalation: dict[str, Any], path: str
                                                        ) -> None:
    with pytest.raises(ConfigError) as err:
        _config(escalation=escalation)
    assert path in str(err.value), str(err.value)
