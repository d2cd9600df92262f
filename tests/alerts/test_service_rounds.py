"""vigie.alerts._service: decisions grouped in rounds, and applied to a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vigie.alerts import AlertChange, AlertService, Raise, Resolve
from vigie.alerts._service import _rounds
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store._alerts import AlertOccurrence

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
A = "clg-pasteur/centrale/intrusion"
B = "clg-pasteur/porte-gymnase/door"


def occ(fingerprint: str, *, severity: str = "critical", at: datetime = T0, count: int = 1,
        event_id: int | None = None, title: str = "") -> AlertOccurrence:
    site, source, kind = fingerprint.split("/")
    return AlertOccurrence(site=site, source=source, source_type="sensor", kind=kind,
                           severity=severity, title=title or f"{kind} at {site}", at=at,
                           details={"n": event_id}, count=count, event_id=event_id)


def up(fingerprint: str, **kwargs: Any) -> Raise:
    return Raise(occ(fingerprint, **kwargs), kwargs.get("at", T0))


def down(fingerprint: str, at: datetime = T0, comment: str = "back to normal") -> Resolve:
    return Resolve(fingerprint, at, comment)


def raised(decision: Any) -> AlertOccurrence:
    assert isinstance(decision, Raise), decision
    return decision.occurrence


def shape(rounds: list[list[Any]]) -> list[list[tuple[str, str, int]]]:
    """Each decision as (fingerprint, 'raise'|'resolve', count)."""
    return [[(d.occurrence.fingerprint, "raise", d.occurrence.count) if isinstance(d, Raise)
             else (d.fingerprint, "resolve", 0) for d in r] for r in rounds]


# --- _rounds (pure) --------------------------------------------------------------------------


def test_no_decisions_no_rounds() -> None:
    assert _rounds([]) == []


def test_each_fingerprint_keeps_its_order_across_rounds() -> None:
    rounds = _rounds([up(A), down(A), up(B), up(A, event_id=3), down(B)])
    assert shape(rounds) == [
        [(A, "raise", 1), (B, "raise", 1)],
        [(A, "resolve", 0), (B, "resolve", 0)],
        [(A, "raise", 1)],
    ]
    assert raised(rounds[2][0]).event_id == 3


def test_consecutive_raises_fold_into_one() -> None:
    rounds = _rounds([
        up(A, severity="minor", at=T0, event_id=1, title="first"),
        up(B, severity="info"),
        up(A, severity="critical", at=T0 + timedelta(seconds=1), count=2, event_id=2),
        up(A, severity="major", at=T0 + timedelta(seconds=2), event_id=3),
    ])
    assert shape(rounds) == [[(A, "raise", 4), (B, "raise", 1)]]
    folded = raised(rounds[0][0])
    assert folded.severity == "critical"  # the gravest of the three
    assert (folded.title, folded.event_id) == ("first", 1)  # the alert's first event


@pytest.mark.parametrize(("severities", "gravest"), [
    (["info", "minor"], "minor"), (["major", "info"], "major"),
    (["info", "info"], "info"), (["minor", "critical", "info"], "critical"),
])
def test_folding_keeps_the_gravest_severity(severities: list[str], gravest: str) -> None:
    [[only]] = _rounds([up(A, severity=s) for s in severities])
    assert raised(only).severity == gravest
    assert raised(only).count == len(severities)


def test_raises_separated_by_a_resolve_do_not_fold() -> None:
    rounds = _rounds([up(A), up(A), down(A), up(A), up(A), up(A)])
    assert shape(rounds) == [[(A, "raise", 2)], [(A, "resolve", 0)], [(A, "raise", 3)]]


def test_resolves_are_never_folded() -> None:
    assert shape(_rounds([down(A), down(A)])) == [[(A, "resolve", 0)], [(A, "resolve", 0)]]


# --- AlertService.apply on a real database ---------------------------------------------------



@pytest.fixture
async def service(store: Store) -> AlertService:
    svc = AlertService(store, Metrics("test"), clock=lambda: T0 + timedelta(minutes=5))
    await svc.refresh()
    return svc


async def apply(store: Store, service: AlertService, decisions: list[Any]) -> list[AlertChange]:
    async with store.transaction() as conn:
        changes = await service.apply(conn, decisions)
    service.publish(changes)
    return changes


async def alerts(store: Store) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        rows = await conn.fetch("SELECT * FROM alerts ORDER BY opened_at, resolved_at NULLS LAST")
        out = []
        for r in rows:
            history = await conn.fetch(
                "SELECT at, actor, action, comment, details FROM alert_history "
                "WHERE alert_id = $1 ORDER BY at, id", r["id"])
            out.append({**dict(r), "history": [dict(h) for h in history]})
        return out


async def test_raise_resolve_raise_in_one_call_gives_two_alerts(
    store: Store, service: AlertService
) -> None:
    t1, t2 = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    seen: list[AlertChange] = []
    service.subscribe(seen.append)
    changes = await apply(store, service, [
        up(A, at=T0, event_id=1), down(A, at=t1, comment="reset by the panel"),
        up(A, at=t2, event_id=3),
    ])
    assert [(c.action, c.alert.fingerprint) for c in changes] == [
        ("opened", A), ("resolved", A), ("opened", A)]
    assert seen == changes

    first, second = await alerts(store)
    assert first["id"] != second["id"]
    assert first["fingerprint"] == second["fingerprint"] == A
    assert (first["state"], first["opened_at"], first["resolved_at"], first["resolved_by"],
            first["count"], first["event_id"]) == ("resolved", T0, t1, "vigie", 1, 1)
    assert (second["state"], second["opened_at"], second["resolved_at"], second["count"],
            second["event_id"]) == ("open", t2, None, 1, 3)
    assert [(h["at"], h["actor"], h["action"], h["comment"], h["details"])
            for h in first["history"]] == [
        (T0, "vigie", "opened", None, {"severity": "critical", "event_id": 1}),
        (t1, "vigie", "resolved", "reset by the panel", {"auto": True}),
    ]
    assert [(h["at"], h["action"]) for h in second["history"]] == [(t2, "opened")]


async def test_folded_raises_count_and_take_the_latest_time(
    store: Store, service: AlertService
) -> None:
    """Three events of one fingerprint in one batch: one alert, count 3, opened at the first
    and last seen at the last — as if they had come one by one."""
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    await apply(store, service, [up(A, at=T0, severity="minor"), up(A, at=t1),
                                 up(A, at=t2, severity="info")])
    [alert] = await alerts(store)
    assert (alert["count"], alert["severity"], alert["opened_at"]) == (3, "critical", T0)
    assert alert["last_seen_at"] == t2

    # The same three one call at a time give the same alert.
    for d in (up(B, at=T0), up(B, at=t1), up(B, at=t2)):
        await apply(store, service, [d])
    [b] = [a for a in await alerts(store) if a["fingerprint"] == B]
    assert (b["count"], b["opened_at"], b["last_seen_at"]) == (3, T0, t2)


async def test_repeats_fold_into_the_unresolved_alert_across_calls(
    store: Store, service: AlertService
) -> None:
    await apply(store, service, [up(A, severity="major")])
    changes = await apply(store, service, [up(A, severity="critical", count=2), up(B)])
    assert [(c.action, c.alert.fingerprint) for c in changes] == [("repeated", A), ("opened", B)]
    by_fp = {a["fingerprint"]: a for a in await alerts(store)}
    assert (by_fp[A]["count"], by_fp[A]["severity"]) == (3, "critical")
    assert [h["action"] for h in by_fp[A]["history"]] == ["opened"]  # repeats: no history row


async def test_resolve_without_unresolved_alert_is_a_no_op(
    store: Store, service: AlertService
) -> None:
    assert await apply(store, service, [down(A)]) == []
    await apply(store, service, [up(A), down(A)])
    assert await apply(store, service, [down(A)]) == []
    [alert] = await alerts(store)
    assert alert["state"] == "resolved"
    assert [h["action"] for h in alert["history"]] == ["opened", "resolved"]


async def test_an_alert_opened_elsewhere_is_resolved_after_refresh(
    store: Store, service: AlertService
) -> None:
    """Another node opened it: once refreshed, this node resolves it."""
    other = AlertService(store, Metrics("other"))
    await apply(store, other, [up(B)])
    await service.refresh()
    [change] = await apply(store, service, [down(B)])
    assert change.action == "resolved" and change.alert.state == "resolved"


async def test_a_failed_transaction_leaves_nothing(store: Store, service: AlertService) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            await service.apply(conn, [up(A), down(A), up(A)])
            raise RuntimeError("the events of this batch could not be stored")
    assert await alerts(store) == []
    await service.refresh()
    assert await apply(store, service, [down(A)]) == []


async def test_a_resolve_retried_after_a_rollback_still_resolves(
    store: Store, service: AlertService
) -> None:
    """The ingest writer retries a batch whose transaction failed (database gone mid-write).
    The retry must do what the first attempt would have: here, close the door alert."""
    await apply(store, service, [up(B, severity="info")])
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            await service.apply(conn, [down(B, comment="door reported closed")])
            raise RuntimeError("connection lost before commit")
    [alert] = await alerts(store)
    assert alert["state"] == "open"  # rolled back

    changes = await apply(store, service, [down(B, comment="door reported closed")])
    assert [c.action for c in changes] == ["resolved"]
    [alert] = await alerts(store)
    assert alert["state"] == "resolved"
