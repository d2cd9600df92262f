"""AlertService.refresh on a real database: the first look reads every unresolved alert,
the next ones only the alerts written since, changes of other nodes included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from tests.alerts.test_service_rounds import T0, A, B, alerts, apply, down, up
from vigie.alerts import AlertService
from vigie.metrics import Metrics
from vigie.store import Store


def node(store: Store, name: str) -> AlertService:
    return AlertService(store, Metrics(name), clock=lambda: T0 + timedelta(minutes=5))


def doors(n: int) -> list[str]:
    return [f"clg-pasteur/porte-{i:02d}/door" for i in range(n)]


async def test_the_first_refresh_reads_every_unresolved_alert(store: Store) -> None:
    other = node(store, "other")
    await apply(store, other, [up(f, severity="info") for f in doors(5)] + [up(A), down(A)])
    here = node(store, "here")
    assert await here.refresh() == 5  # the resolved intrusion is not read
    assert sorted(here.open_alerts) == doors(5)


async def test_later_refreshes_read_only_what_changed(store: Store) -> None:
    here, other = node(store, "here"), node(store, "other")
    await here.refresh()
    await apply(store, other, [up(f, severity="info") for f in doors(20)])
    assert await here.refresh() == 20
    assert sorted(here.open_alerts) == doors(20)

    first = doors(20)[0]
    await other.acknowledge(other.open_alerts[first].id, "operateur-1", None, None)
    read = await here.refresh()
    # Only the acknowledged one (a transaction running elsewhere in the cluster since
    # before it may hold the horizon back a little: never to before the twenty were opened).
    assert 1 <= read < 20
    assert here.open_alerts[first].state == "acknowledged"
    assert here.open_alerts[first].acknowledged_by == "operateur-1"


async def test_an_alert_resolved_elsewhere_leaves_memory(store: Store) -> None:
    here, other = node(store, "here"), node(store, "other")
    await here.refresh()
    await apply(store, other, [up(A), up(B, severity="info")])
    await here.refresh()
    await apply(store, other, [down(A)])
    await here.refresh()
    assert sorted(here.open_alerts) == [B]
    # And reopened elsewhere: a new alert of the same fingerprint is known again.
    await apply(store, other, [up(A, at=T0 + timedelta(minutes=1))])
    await here.refresh()
    assert sorted(here.open_alerts) == [A, B]
    assert here.open_alerts[A].id == other.open_alerts[A].id


async def test_a_change_committed_after_a_refresh_by_an_older_transaction_is_not_missed(
    store: Store, fresh_dsn: str
) -> None:
    """Transactions commit out of order: one that began before a refresh and commits after
    it, while younger ones committed in between, must still be read by the next refresh."""
    here, other = node(store, "here"), node(store, "other")
    await apply(store, other, [up(A)])
    await here.refresh()
    slow = await asyncpg.connect(fresh_dsn)
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_by = 'operateur-2', "
            "acknowledged_at = $1 WHERE fingerprint = $2", datetime.now(UTC), A)
        await apply(store, other, [up(B, severity="info")])  # younger, committed first
        await here.refresh()
        assert sorted(here.open_alerts) == [A, B]
        assert here.open_alerts[A].state == "open"  # not committed yet
        await tx.commit()
    finally:
        await slow.close()
    await here.refresh()
    assert here.open_alerts[A].state == "acknowledged"


async def test_a_database_gone_back_in_time_is_read_in_full(store: Store) -> None:
    """Restored from a dump, its transaction ids start again below the last look's: only a
    full reload can be trusted."""
    here, other = node(store, "here"), node(store, "other")
    await apply(store, other, [up(f, severity="info") for f in doors(3)])
    await here.refresh()
    assert await here.refresh() < 3
    here._xmin = 2**62  # as if the last look was at a transaction id the server never had
    assert await here.refresh() == 3
    assert sorted(here.open_alerts) == doors(3)


async def test_a_resolved_alert_written_again_does_not_hide_its_successor(
    store: Store
) -> None:
    """A snapshot attached late to a resolved alert writes its row again; the fingerprint's
    new alert must stay known, or this node would skip resolving it."""
    here, other = node(store, "here"), node(store, "other")
    await apply(store, other, [up(A), down(A)])
    [old] = [a for a in await alerts(store) if a["state"] == "resolved"]
    await apply(store, other, [up(A, at=T0 + timedelta(minutes=1))])
    await here.refresh()
    async with store.connection() as conn:
        await conn.execute("UPDATE alerts SET snapshots = snapshots || '[{\"at\": 1}]'::jsonb "
                           "WHERE id = $1", old["id"])
    assert await here.refresh() >= 1
    assert A in here.open_alerts
    [change] = await apply(store, here, [down(A, at=T0 + timedelta(minutes=2))])
    assert change.action == "resolved"
