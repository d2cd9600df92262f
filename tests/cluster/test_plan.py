"""The lease arithmetic alone, on an injected clock: how long a node trusts its leases, its
fair share, what it claims and what it hands over."""

from __future__ import annotations

import uuid

import pytest

from vigie.cluster import Census, LeaseClock, Member, claim_count, handovers

A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_lease_is_trusted_from_when_the_renewal_was_sent_not_when_it_came_back() -> None:
    clock = Clock()
    lease = LeaseClock(15.0, clock)
    assert not lease.valid  # nothing renewed yet: nothing to prove
    sent = lease.now()
    clock.t += 4.0  # a slow answer: the database set expires_at at least `sent` + 15
    lease.renewed(sent)
    assert lease.remaining() == pytest.approx(15.0 - lease.guard - 4.0)
    clock.t = sent + 15.0 - lease.guard - 0.01
    assert lease.valid
    clock.t = sent + 15.0 - lease.guard
    # Stops judging strictly before any other node may claim (database now() > sent + 15).
    assert not lease.valid


def test_three_renewals_fit_in_a_lease_and_the_guard_grows_with_it() -> None:
    for seconds in (2.0, 15.0, 60.0):
        lease = LeaseClock(seconds, Clock())
        assert 3 * lease.renew_every == pytest.approx(seconds)
        # Two renewals may fail before the node lets go of its cameras.
        assert 2 * lease.renew_every < seconds - lease.guard
    assert LeaseClock(2.0, Clock()).guard == 0.5 and LeaseClock(60.0, Clock()).guard == 6.0


def test_an_older_renewal_answering_late_does_not_shorten_the_lease() -> None:
    clock = Clock()
    lease = LeaseClock(10.0, clock)
    lease.renewed(clock.t + 5)
    lease.renewed(clock.t)
    assert lease.remaining() == pytest.approx(15.0 - lease.guard)
    lease.lapse()
    assert not lease.valid


def census(*members: Member, free: int = 0, total: int | None = None, me: uuid.UUID = A
           ) -> Census:
    held = sum(m.held for m in members)
    return Census(me, members, free, total if total is not None else held + free)


def test_fair_share_is_within_one_camera() -> None:
    assert census(Member(A, "a", 0), Member(B, "b", 0), total=60).share() == (30, 30)
    assert census(Member(A, "a", 0), Member(B, "b", 0), Member(C, "c", 0),
                  total=61).share() == (20, 21)
    assert census(total=5).share() == (5, 5)  # nobody live counted: as if alone


def test_a_lone_node_claims_every_camera() -> None:
    assert claim_count(census(Member(A, "a", 0), free=60), margin=2) == 60


def test_claims_stop_at_the_fair_share_plus_the_margin() -> None:
    # Three nodes starting together: each takes at most 20 + 2, whatever it sees free.
    c = census(Member(A, "a", 0), Member(B, "b", 0), Member(C, "c", 0), free=60)
    assert claim_count(c, margin=2) == 22
    # A node that holds its share takes no more than the margin of what a dead node left.
    c = census(Member(A, "a", 20), Member(B, "b", 20), free=20, total=60)
    assert claim_count(c, margin=2) == 12  # share is 30 of 60 with two live nodes
    c = census(Member(A, "a", 30), Member(B, "b", 28), free=2, total=60)
    assert claim_count(c, margin=0) == 0


def test_cameras_on_their_way_in_count_against_the_claim() -> None:
    c = census(Member(A, "a", 10, incoming=10), Member(B, "b", 30, outgoing=10), free=20,
               total=60)
    assert claim_count(c, margin=0) == 10


def test_a_node_cut_off_from_the_others_claims_nothing() -> None:
    # Not among the live members: its own row expired, the others may be taking its cameras.
    assert claim_count(census(Member(B, "b", 0), free=60), margin=2) == 0
    assert handovers(census(Member(B, "b", 0), free=0, total=60), step=10) == []


def test_a_joining_node_gets_its_share_a_step_at_a_time() -> None:
    c = census(Member(A, "a", 60), Member(B, "b", 0))
    assert handovers(c, step=10) == [(B, 10)]
    # With those ten under way, nothing more until they land.
    c = census(Member(A, "a", 60, outgoing=10), Member(B, "b", 0, incoming=10))
    assert handovers(c, step=10) == []
    c = census(Member(A, "a", 50), Member(B, "b", 10))
    assert handovers(c, step=10) == [(B, 10)]
    c = census(Member(A, "a", 32), Member(B, "b", 28))
    assert handovers(c, step=10) == [(B, 2)]
    assert handovers(census(Member(A, "a", 30), Member(B, "b", 30)), step=10) == []


def test_handovers_go_to_the_least_loaded_and_never_push_a_taker_past_its_share() -> None:
    c = census(Member(A, "a", 40), Member(B, "b", 15), Member(C, "c", 5))
    assert handovers(c, step=30) == [(C, 15), (B, 5)]
    # Within one camera of the share, nobody moves: no camera goes back and forth.
    c = census(Member(A, "a", 21), Member(B, "b", 20), Member(C, "c", 20), total=61)
    assert handovers(c, step=10) == []
    c = census(Member(B, "b", 21), Member(A, "a", 20), Member(C, "c", 19), total=60, me=B)
    assert handovers(c, step=10) == [(C, 1)]


def test_only_a_node_above_its_share_gives() -> None:
    c = census(Member(A, "a", 19), Member(B, "b", 22), Member(C, "c", 19))
    assert handovers(c, step=10) == []
    c = census(Member(A, "a", 19), Member(B, "b", 22), Member(C, "c", 19), me=B)
    assert sorted(handovers(c, step=10)) == [(A, 1), (C, 1)]


def test_cluster_settings_that_cannot_work_are_refused_by_path() -> None:
    from vigie.config import parse_config
    from vigie.errors import ConfigError

    dsn = {"dsn": "postgresql://vigie@db/vigie"}
    with pytest.raises(ConfigError, match=r"set database\.dsn"):
        parse_config({"cluster": {"enabled": True}})
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_config({"database": dsn, "cluster": {"enabled": True, "mqtt": "elected"},
                      "mqtt": {"shared_group": "vigie"}})
    with pytest.raises(ConfigError, match=r"mqtt\.shared_group"):
        parse_config({"database": dsn, "mqtt": {"shared_group": "a/b"}})
    with pytest.raises(ConfigError, match=r"cluster\.lease_seconds"):
        parse_config({"database": dsn, "cluster": {"enabled": True, "lease_seconds": "0.5s"}})
    config = parse_config({"database": dsn, "cluster": {"enabled": True}})
    assert (config.cluster.lease_seconds, config.cluster.interval) == (15.0, 1.0)
