"""Alerts decided in memory while the database is away, and their stored copies.

AlertService.announce applies decisions to the open alerts the node holds (what the API
serves during an outage) and tells its provisional listeners (the live feed); the replay
later stores the same decisions, with the same alert id, and the stored change takes over.
A live-feed client told the provisional `alert.opened` is not told the stored one again.
On a real PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from vigie.alerts import AlertChange, AlertService, Raise, Resolve
from vigie.alerts._feed import Feed, FeedMessage
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store._alerts import AlertOccurrence, occurrence_id

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
A = "clg-pasteur/centrale/intrusion"


def intrusion(n: int) -> Raise:
    site, source, kind = A.split("/")
    return Raise(AlertOccurrence(
        site=site, source=source, source_type="sensor", kind=kind, severity="critical",
        title="Intrusion", at=T0 + timedelta(seconds=n), id=occurrence_id(A, f"event-{n}")))


async def stored(service: AlertService, store: Store, *decisions: Raise | Resolve
                 ) -> list[AlertChange]:
    """What the replay does: the decisions in a transaction, then told."""
    async with store.transaction() as conn:
        changes = await service.apply(conn, decisions)
    service.publish(changes)
    return changes


async def test_an_alert_decided_in_memory_is_stored_later_as_it_was_shown(store: Store) -> None:
    service = AlertService(store, Metrics("test"))
    heard: list[AlertChange] = []
    service.subscribe_provisional(heard.append)

    service.announce([intrusion(1)])
    service.announce([intrusion(2), intrusion(3)])
    assert [(c.action, c.alert.count) for c in heard] == [("opened", 1), ("repeated", 3)]
    shown = service.open_alerts[A]
    assert shown.id == occurrence_id(A, "event-1") and shown.opened_at == T0 + timedelta(seconds=1)
    assert shown.last_seen_at == T0 + timedelta(seconds=3) and shown.count == 3
    # The database answers but has not got it yet (the spool is being replayed): a refresh
    # does not make it vanish.
    await service.refresh()
    assert service.open_alerts[A] == shown

    [change] = await stored(service, store, intrusion(1), intrusion(2), intrusion(3))
    assert change.action == "opened"
    assert (change.alert.id, change.alert.opened_at, change.alert.last_seen_at,
            change.alert.count) == (shown.id, shown.opened_at, shown.last_seen_at, 3)
    assert service.provisional == {} and service.open_alerts[A] == change.alert


async def test_memory_gives_way_to_the_database_once_the_spool_is_replayed(
    store: Store,
) -> None:
    service = AlertService(store, Metrics("test"))
    service.announce([intrusion(1)])  # say its event was found stored already: no change
    service.forget_provisional(cameras=False)
    assert A not in service.open_alerts
    await service.refresh()
    assert A not in service.open_alerts


async def test_each_path_gives_way_for_its_own_alerts_only(store: Store) -> None:
    """The sensors' spool replayed does not make a camera alert still waiting vanish (the
    camera history writes it a little later), and the other way round."""
    service = AlertService(store, Metrics("test"))
    offline = Raise(AlertOccurrence(
        site="clg-pasteur", source="entree", source_type="camera", kind="offline",
        severity="major", title="Offline", at=T0))
    service.announce([intrusion(1), offline])
    service.forget_provisional(cameras=False)
    assert A not in service.open_alerts
    assert offline.occurrence.fingerprint in service.open_alerts
    await service.refresh()
    assert offline.occurrence.fingerprint in service.open_alerts
    service.forget_provisional(cameras=True)
    assert service.provisional == {} and service.open_alerts == {}


async def test_a_resolve_in_memory_holds_until_stored(store: Store) -> None:
    service = AlertService(store, Metrics("test"))
    [opened] = await stored(service, store, intrusion(1))
    [change] = service.announce([Resolve(A, T0 + timedelta(seconds=5), "normal")])
    assert change.action == "resolved" and change.alert.id == opened.alert.id
    assert A not in service.open_alerts
    await service.refresh()  # still open in the database: memory is ahead
    assert A not in service.open_alerts
    assert service.announce([Resolve(A, T0, "again")]) == []  # nothing open to resolve


def _stored_copy(seq: int, change: AlertChange) -> FeedMessage:
    """The message the follower makes of the stored row."""
    body = {"seq": seq, "type": f"alert.{change.action}", "at": T0.isoformat(),
            "site": change.alert.site, "actor": "vigie", "alert": change.alert.to_json()}
    return FeedMessage(seq, body["type"], change.alert.site, orjson.dumps(body).decode())


async def test_a_live_client_is_told_an_opening_once(store: Store) -> None:
    metrics = Metrics("test")
    service = AlertService(store, metrics)
    feed = Feed(store, metrics, dsn="")
    service.subscribe_provisional(feed.announce)
    client = feed.subscribe(None, provisional=True)
    correlator = feed.subscribe(None)  # works on stored alerts only

    [opened] = service.announce([intrusion(1)])
    [repeated] = service.announce([intrusion(2)])
    told = [await client.get(), await client.get()]
    assert [(m.provisional, m.type) for m in told] == [(True, "alert.opened"),
                                                       (True, "alert.repeated")]
    assert orjson.loads(told[0].wire)["seq"] is None

    # Stored: the opening is not news to the client any more, the later changes are; the
    # correlator gets every stored change and no provisional one.
    for seq, change in enumerate((opened, repeated, AlertChange("acknowledged", opened.alert)),
                                 start=7):
        client.offer(_stored_copy(seq, change))
        correlator.offer(_stored_copy(seq, change))
    assert [(m.seq, m.type) for m in [await client.get(), await client.get()]] == [
        (8, "alert.repeated"), (9, "alert.acknowledged")]
    assert [(m.seq, m.provisional) for m in [await correlator.get() for _ in range(3)]] == [
        (7, False), (8, False), (9, False)]
    # A second stored opening of that alert (another node's, after a resolve) is news.
    client.offer(_stored_copy(10, opened))
    assert (await client.get()).seq == 10
