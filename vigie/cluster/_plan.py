"""The arithmetic of camera leases, without a database: how long this node may trust its
leases, its fair share, what to claim and what to hand over. Fed by `_leases.py` with what
the database said this round; tested alone with an injected clock.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Census", "LeaseClock", "Member", "claim_count", "handovers"]


class LeaseClock:
    """Until when this node can prove it holds its leases, on its own monotonic clock.

    A renewal sets `expires_at = now() + lease` in the database, where now() is read after
    the request was sent: the lease lasts at least `lease` from the moment it was sent,
    whatever the network or the database's clock. The node trusts it until `sent + lease -
    guard`; the other nodes may take the camera only once the database's now() passes
    `expires_at`, later still. So a node cut from the database stops judging its cameras
    before anyone else may start: two nodes never judge the same camera.
    """

    def __init__(self, lease_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_seconds = lease_seconds
        # Margin for what happens between the deadline and the camera really stopping: an
        # alert write already under way, a clock drifting against the database's.
        self.guard = max(0.5, lease_seconds / 10)
        self._clock = clock
        self._valid_until = -math.inf

    @property
    def renew_every(self) -> float:
        """Three attempts fit in a lease: one failure or slow answer costs nothing."""
        return self.lease_seconds / 3

    def now(self) -> float:
        return self._clock()

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at `sent_at` (a `now()` reading) succeeded."""
        self._valid_until = max(self._valid_until, sent_at + self.lease_seconds - self.guard)

    def lapse(self) -> None:
        self._valid_until = -math.inf

    def remaining(self) -> float:
        return self._valid_until - self._clock()

    @property
    def valid(self) -> bool:
        return self.remaining() > 0


@dataclass(frozen=True, slots=True)
class Member:
    """A live node of the cluster, as the database sees it this round."""

    incarnation: uuid.UUID
    name: str
    held: int  # leases it holds
    incoming: int = 0  # cameras being handed over to it
    outgoing: int = 0  # of its own, being handed over to others

    @property
    def load(self) -> int:
        """What it will hold once the handovers under way are done."""
        return self.held + self.incoming - self.outgoing


@dataclass(frozen=True, slots=True)
class Census:
    """One round's view of the cluster: its live members, the free cameras, the total."""

    me: uuid.UUID
    members: tuple[Member, ...]
    free: int
    total: int

    @property
    def mine(self) -> Member | None:
        """This node, if the others count it as live (they do not while it is cut off)."""
        return next((m for m in self.members if m.incarnation == self.me), None)

    def share(self) -> tuple[int, int]:
        """The fair share: every node ends within [low, high] (they differ by one when the
        cameras do not divide evenly)."""
        n = max(1, len(self.members))
        return self.total // n, -(-self.total // n)


def claim_count(census: Census, margin: int) -> int:
    """Free cameras to claim now: up to the fair share plus `margin`. Several nodes claim at
    once after a death; the margin lets them take everything in one round even when their
    counts are a round old, and handovers even the spread out after."""
    me = census.mine
    if me is None or census.free <= 0:
        return 0
    _, high = census.share()
    return max(0, min(census.free, high + margin - me.load))


def handovers(census: Census, step: int) -> list[tuple[uuid.UUID, int]]:
    """Handovers to offer now: (receiving node, how many cameras).

    Only a node above the high share gives, only to nodes below it, never more than brings
    either past it, and at most `step` cameras in flight at once: a node that joins gets
    its share gradually, a few streams at a time, and no camera ever goes back and forth.
    """
    me = census.mine
    if me is None:
        return []
    _, high = census.share()
    excess = min(me.load - high, step - me.outgoing)
    offers: list[tuple[uuid.UUID, int]] = []
    # Least loaded first; among equals, an order of this node's own, so that two givers in
    # the same round do not both fill the same taker past its share.
    takers = sorted((m for m in census.members if m.incarnation != census.me),
                    key=lambda m: (m.load, hash((census.me, m.incarnation))))
    for taker in takers:
        if excess <= 0:
            break
        room = high - taker.load
        if room <= 0:
            break
        n = min(room, excess)
        offers.append((taker.incarnation, n))
        excess -= n
    return offers
