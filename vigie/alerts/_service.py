"""Alert lifecycle: apply rule decisions, operator actions, and tell listeners.

Decisions from events are applied inside the caller's transaction (the one that stores the
events), so an event and the alert it raised are committed together or not at all.

While the database is away, the events go to the spool; the decisions they make are applied
in memory at once (`announce`): the open alerts the API serves and this node's live clients
know of an intrusion within the second. Nothing of it is stored: the spool's replay makes
the same decisions again, in the database, with the events' own timestamps and the same
alert ids (`occurrence_id`); those stored changes are the ones notifiers send, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vigie.alerts._memory import raise_in_memory, resolve_in_memory
from vigie.alerts._rules import Decision, Raise, Resolve
from vigie.alerts._storms import StormGuard
from vigie.metrics import Metrics
from vigie.store import Store, _escalations, _silences
from vigie.store import _alerts as q

__all__ = ["CHANGES", "AlertChange", "AlertService", "Clock"]

log = logging.getLogger("vigie.alerts")

REFRESH = 5.0  # seconds between reloads of the unresolved alerts (other nodes change them too)
REFRESH_CHUNK = 500  # alerts read and converted at a time

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AlertChange:
    """What happened to an alert: `action` is one of CHANGES. Notifiers leave out changes
    of silenced alerts (`alert.silenced`), notify again on `escalated`, and treat
    `unsilenced` as news (the alert outlived its maintenance window)."""

    action: str
    alert: q.Alert
    actor: str = "vigie"

    def to_json(self) -> dict[str, Any]:
        return {"type": f"alert.{self.action}", "actor": self.actor, "alert": self.alert.to_json()}


Listener = Callable[[AlertChange], None]

# Every AlertChange.action; the feed sends them as `alert.<action>`.
CHANGES = ("opened", "repeated", "acknowledged", "unacknowledged", "assigned", "commented",
           "escalated", "silenced", "unsilenced", "resolved",
           "correlated")  # snapshots attached or alerts linked (vigie.alerts._correlation)


class AlertService:
    def __init__(self, store: Store, metrics: Metrics, clock: Clock = utc_now,
                 escalation: Mapping[str, q.Escalation] | None = None) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        # By severity, for alerts whose rule gives no escalation (camera, device alerts).
        self._escalation = dict(escalation or {})
        self._listeners: list[Listener] = []
        # Fingerprints with an unresolved alert: a Resolve for any other one needs no query.
        # Refreshed from the database, so alerts opened by another node are known too.
        self._unresolved: set[str] = set()
        self._added_since_refresh: set[str] = set()
        # xmin of the last refresh's snapshot: the next one reads the alerts written by
        # transactions from there on. None: the next refresh reads every unresolved alert.
        self._xmin: int | None = None
        # The unresolved alerts themselves, by fingerprint: what the API serves while the
        # database is away. Refreshed from it, and moved on by every committed change.
        self.open_alerts: dict[str, q.Alert] = {}
        self._changed_since_refresh: dict[str, q.Alert] = {}
        # Site-level grouping of unreachable devices (alert storms); None: off.
        self.storms: StormGuard | None = None
        # Alerts as changed in memory while the database is away (`announce`), by
        # fingerprint, until a stored change of theirs comes: newer than the database.
        self.provisional: dict[str, q.Alert] = {}
        # Silences active or pending, as of the last refresh: those `announce` applies.
        self.silences: list[_silences.Silence] = []
        self._announcers: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def subscribe_provisional(self, listener: Listener) -> None:
        """Hear the changes made in memory while the database is away (`announce`)."""
        self._announcers.append(listener)

    def publish(self, changes: Sequence[AlertChange]) -> None:
        """Tell listeners, after the changes are committed."""
        for change in changes:
            self._remember(change.alert)
            self.provisional.pop(change.alert.fingerprint, None)  # stored: no longer ahead
            if change.action == "opened":
                a = change.alert
                self._metrics.alerts_total.labels(a.site, a.kind, a.severity).inc()
            elif change.action == "resolved":
                self._unresolved.discard(change.alert.fingerprint)
            elif change.action == "escalated":
                a = change.alert
                self._metrics.alerts_escalated.labels(a.site, a.severity).inc()
            if change.action != "repeated":  # repeats are counted, not logged one by one
                a = change.alert
                log.info("alert %s %s by %s", a.fingerprint, change.action, change.actor,
                         extra={"alert_id": str(a.id), "alert_action": change.action,
                                "severity": a.severity})
            for listener in self._listeners:
                try:
                    listener(change)
                except Exception:  # one broken listener must not silence the others
                    log.exception("alert listener failed")

    def announce(self, decisions: Sequence[Decision]) -> list[AlertChange]:
        """Apply decisions in memory only (their events are in the spool: the database is
        away) and tell the provisional listeners. See the module docstring."""
        now = self._clock()
        changes: list[AlertChange] = []
        for round_ in _rounds(decisions):
            for d in round_:
                done = (raise_in_memory(self.open_alerts, self._with_escalation(d.occurrence),
                                        now, self.silences)
                        if isinstance(d, Raise) else resolve_in_memory(self.open_alerts, d))
                if done is not None:
                    action, alert = done
                    self._remember(alert)
                    self.provisional[alert.fingerprint] = alert
                    changes.append(AlertChange(action, alert))
        for change in changes:
            a = change.alert
            if change.action != "repeated":
                log.info("alert %s %s in memory (database away; stored when it is back)",
                         a.fingerprint, change.action,
                         extra={"alert_id": str(a.id), "alert_action": change.action,
                                "severity": a.severity})
            for listener in self._announcers:
                try:
                    listener(change)
                except Exception:
                    log.exception("alert listener failed")
        return changes

    def forget_provisional(self, cameras: bool) -> None:
        """Everything one path (the sensors' spool, or the cameras' waiting decisions)
        announced from memory has been stored: what the database says of those alerts is
        the truth again, whatever the replay made of them. The other path's may still wait."""
        for fingerprint, alert in list(self.provisional.items()):
            if (alert.source_type == "camera") != cameras:
                continue
            del self.provisional[fingerprint]
            if self.open_alerts.get(fingerprint) is alert:
                del self.open_alerts[fingerprint]

    def _remember(self, alert: q.Alert) -> None:
        self._changed_since_refresh[alert.fingerprint] = alert
        _put(self.open_alerts, alert)

    def open_counts(self) -> dict[tuple[str, str], int]:
        """Unresolved alerts by (site, severity), from memory."""
        counts: dict[tuple[str, str], int] = {}
        for a in self.open_alerts.values():
            counts[(a.site, a.severity)] = counts.get((a.site, a.severity), 0) + 1
        return counts

    async def refresh(self) -> int:
        """Bring the unresolved alerts and the open-alert gauges up to date with the database
        (other nodes change them too): all of them the first time, then only the alerts
        written since the last look. Returns how many rows were read.

        Reloading every unresolved alert each time cost, with ten thousand of them, a few ms
        of conversion per chunk for a tenth of a second every 5 s: the worst of the API's
        latency (p99 17-30 ms, against 2-4 ms without it)."""
        # A fingerprint added while the query runs may be missing from its snapshot: keep
        # those. A stale extra costs one no-op UPDATE; a missing one would lose a resolve.
        before, self._added_since_refresh = self._added_since_refresh, set()
        self._changed_since_refresh = {}
        since, self._xmin = self._xmin, None  # a failed look makes the next one full
        known = self.open_alerts
        async with self._store.transaction() as conn:
            # Taken before the rows are read, so no later than their snapshot's: every
            # change that snapshot misses was made by a transaction at or above it.
            xmin = await conn.fetchval(q.SNAPSHOT_XMIN)
            self.silences = await _silences.current_silences(conn, self._clock())
            # Full: the first look, after a failed one, or the database went back in time
            # (restored from a dump: its transaction ids start again).
            full = since is None or xmin < since
            sql, args = (q.UNRESOLVED, ()) if full else (q.CHANGED_SINCE, (str(since),))
            read = await self._read(conn, sql, args, known)
        if full:
            fresh = {a.fingerprint: a for a in read}
        else:
            fresh = dict(known)
            # The resolved first: a fingerprint's new alert outlives its old one's resolve
            # (and a resolved alert written again, a late snapshot, removes nothing: ids).
            for alert in sorted(read, key=lambda a: a.state != "resolved"):
                _put(fresh, alert)
        self._unresolved = set(fresh) | before | self._added_since_refresh
        # Changes committed while the query ran are newer than its snapshot; those decided
        # in memory, not stored yet (the spool is being replayed), are ahead of it.
        for alert in (*self._changed_since_refresh.values(), *self.provisional.values()):
            _put(fresh, alert)
        self.open_alerts = fresh
        self._xmin = xmin
        self._metrics.alerts_open.clear()
        for (site, severity), n in self.open_counts().items():
            self._metrics.alerts_open.labels(site, severity).set(n)
        return len(read)

    @staticmethod
    async def _read(conn: Any, sql: str, args: tuple[Any, ...],
                    known: Mapping[str, q.Alert]) -> list[q.Alert]:
        """Alerts read and converted in chunks, the event loop running in between; one that
        did not change keeps its object (long-lived fresh copies of thousands of alerts
        brought on full collections of 70-90 ms)."""
        alerts: list[q.Alert] = []
        cursor = await conn.cursor(sql, *args)
        while rows := await cursor.fetch(REFRESH_CHUNK):
            for row in rows:
                alert = q.Alert.from_row(row)
                same = known.get(alert.fingerprint)
                alerts.append(same if same == alert else alert)
        return alerts

    async def refresh_forever(self, interval: float = REFRESH) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the database may be away; try again later
                log.warning("cannot refresh open alerts: %s", exc)
            await asyncio.sleep(interval)

    async def apply(self, conn: Any, decisions: Sequence[Decision]) -> list[AlertChange]:
        """Apply decisions inside the caller's transaction, in a few statements.

        Decisions are grouped by fingerprint, keeping each fingerprint's order; round k
        applies the k-th decision of every fingerprint: its raises in one upsert, its
        resolves in one update. Consecutive raises of a fingerprint fold into one.
        """
        changes: list[AlertChange] = []
        # This transaction's view of what is unresolved. A resolve leaves the shared set only
        # once committed (`publish`): a rolled-back, retried batch must resolve again.
        resolved_here: set[str] = set()
        for round_ in _rounds(decisions):
            raises = [d for d in round_ if isinstance(d, Raise)]
            resolves = [(d.fingerprint, d.at, d.comment) for d in round_
                        if isinstance(d, Resolve) and d.fingerprint in self._unresolved
                        and d.fingerprint not in resolved_here]
            occurrences = [self._with_escalation(r.occurrence) for r in raises]
            for (alert, opened), d in zip(
                await q.upsert_alerts(conn, occurrences, self._clock()), raises, strict=True
            ):
                # Added at once: a stale extra costs one no-op UPDATE, a missing one a resolve.
                self._unresolved.add(alert.fingerprint)
                self._added_since_refresh.add(alert.fingerprint)
                resolved_here.discard(alert.fingerprint)
                changes.append(AlertChange("opened" if opened else "repeated", alert))
                if d.received_at is not None:
                    latency = (self._clock() - d.received_at).total_seconds()
                    self._metrics.event_to_alert.observe(max(latency, 0.0))
            resolved_here.update(fingerprint for fingerprint, _, _ in resolves)
            changes.extend(AlertChange("resolved", a)
                           for a in await q.resolve_fingerprints(conn, resolves))
        if self.storms is not None and changes:
            changes = await self._group_storms(conn, changes)
        return changes

    async def _group_storms(self, conn: Any, changes: list[AlertChange]
                            ) -> list[AlertChange]:
        """Site-level grouping (`StormGuard`). An alert grouped in the transaction that
        opened it is told as opened, already silenced: no listener ever sees it unsilenced."""
        assert self.storms is not None
        grouping = await self.storms.review(conn, changes, self.open_alerts.values())
        grouped = {alert.id: alert for action, alert in grouping if action == "silenced"}
        told: set[uuid.UUID] = set()
        out: list[AlertChange] = []
        for c in changes:
            if c.action in ("opened", "repeated") and c.alert.id in grouped:
                told.add(c.alert.id)
                out.append(AlertChange(c.action, grouped[c.alert.id], c.actor))
            else:
                out.append(c)
        for action, alert in grouping:
            if action == "opened":
                self._unresolved.add(alert.fingerprint)
                self._added_since_refresh.add(alert.fingerprint)
            if action != "silenced" or alert.id not in told:
                out.append(AlertChange(action, alert))
        return out

    def _with_escalation(self, occ: q.AlertOccurrence) -> q.AlertOccurrence:
        if occ.escalation is not None or occ.severity not in self._escalation:
            return occ
        return dataclasses.replace(occ, escalation=self._escalation[occ.severity])

    async def raise_now(self, decisions: Sequence[Decision], *, hold: bool = True
                        ) -> list[AlertChange]:
        """Apply decisions in a transaction of their own (heartbeat, camera health). Camera
        offline raises may be held a moment first (`StormGuard`): they are not returned."""
        if self.storms is not None and hold:
            decisions = self.storms.hold(decisions, self._unresolved)
            if not decisions:
                return []
        async with self._store.transaction() as conn:
            changes = await self.apply(conn, decisions)
        self.publish(changes)
        return changes

    async def _operator_action(
        self, action: str, alert_id: uuid.UUID, actor: str, sites: frozenset[str] | None,
        change: Callable[[Any, datetime], Any],
    ) -> q.Alert:
        now = self._clock()
        async with self._store.transaction() as conn:
            await q.get_alert(conn, alert_id, sites)  # 404 for what the caller may not see
            alert: q.Alert = await change(conn, now)
        self.publish([AlertChange(action, alert, actor)])
        return alert

    async def acknowledge(self, alert_id: uuid.UUID, actor: str, comment: str | None,
                          sites: frozenset[str] | None = None) -> q.Alert:
        return await self._operator_action(
            "acknowledged", alert_id, actor, sites,
            lambda conn, now: q.acknowledge(conn, alert_id, actor, now, comment))

    async def unacknowledge(self, alert_id: uuid.UUID, actor: str, comment: str | None,
                            sites: frozenset[str] | None = None) -> q.Alert:
        return await self._operator_action(
            "unacknowledged", alert_id, actor, sites,
            lambda conn, now: q.unacknowledge(conn, alert_id, actor, now, comment))

    async def resolve(self, alert_id: uuid.UUID, actor: str, comment: str | None,
                      sites: frozenset[str] | None = None, resolution: str | None = None
                      ) -> q.Alert:
        return await self._operator_action(
            "resolved", alert_id, actor, sites,
            lambda conn, now: q.resolve(conn, alert_id, actor, now, comment, resolution))

    async def assign(self, alert_id: uuid.UUID, actor: str, assignee: str | None,
                     comment: str | None, sites: frozenset[str] | None = None) -> q.Alert:
        return await self._operator_action(
            "assigned", alert_id, actor, sites,
            lambda conn, now: q.assign(conn, alert_id, actor, now, assignee, comment))

    async def comment(self, alert_id: uuid.UUID, actor: str, comment: str,
                      sites: frozenset[str] | None = None) -> q.Alert:
        return await self._operator_action(
            "commented", alert_id, actor, sites,
            lambda conn, now: q.add_comment(conn, alert_id, actor, now, comment))

    # --- time-driven: escalations and silences (AlertTimers calls these) ----------------

    async def escalate_due(self, limit: int = 500) -> list[AlertChange]:
        """Escalate what is due now; another node ticking at the same time escalates
        other alerts, never the same step twice."""
        async with self._store.transaction() as conn:
            alerts = await _escalations.escalate_due(conn, self._clock(), limit)
        changes = [AlertChange("escalated", a) for a in alerts]
        self.publish(changes)
        return changes

    async def sweep_silences(self, actor: str = "vigie") -> list[AlertChange]:
        """Silence what an active silence matches, un-silence what none matches any more."""
        async with self._store.transaction() as conn:
            done = await _silences.sweep(conn, self._clock(), actor)
        changes = [AlertChange(action, alert, actor) for action, alert in done]
        self.publish(changes)
        return changes

    async def create_silence(self, matchers: _silences.Matchers, starts_at: datetime,
                             ends_at: datetime, comment: str, actor: str
                             ) -> tuple[_silences.Silence, list[AlertChange]]:
        """A new silence; open alerts it matches are silenced at once if it is active."""
        async with self._store.transaction() as conn:
            silence = await _silences.create_silence(
                conn, matchers, starts_at, ends_at, comment, actor, self._clock())
            done = await _silences.sweep(conn, self._clock(), actor)
            self.silences = await _silences.current_silences(conn, self._clock())
        changes = [AlertChange(action, alert, actor) for action, alert in done]
        self.publish(changes)
        return silence, changes

    async def end_silence(self, silence_id: uuid.UUID, actor: str,
                          sites: frozenset[str] | None = None,
                          check: Callable[[_silences.Silence], None] | None = None,
                          ) -> tuple[_silences.Silence, list[AlertChange]]:
        """End a silence now; the open alerts no other silence covers surface again.
        `check` may refuse (raise) once the silence is read, before anything changes."""
        async with self._store.transaction() as conn:
            if check is not None:
                check(await _silences.get_silence(conn, silence_id, sites, lock=True))
            silence = await _silences.end_silence(conn, silence_id, sites, actor,
                                                  self._clock())
            done = await _silences.sweep(conn, self._clock(), actor)
            self.silences = await _silences.current_silences(conn, self._clock())
        changes = [AlertChange(action, alert, actor) for action, alert in done]
        self.publish(changes)
        return silence, changes


def _put(unresolved: dict[str, q.Alert], alert: q.Alert) -> None:
    """Tell a map of unresolved alerts by fingerprint what became of `alert`."""
    if alert.state != "resolved":
        unresolved[alert.fingerprint] = alert
    elif (known := unresolved.get(alert.fingerprint)) and known.id == alert.id:
        del unresolved[alert.fingerprint]


def _rounds(decisions: Sequence[Decision]) -> list[list[Decision]]:
    """Group by fingerprint (order kept within each), fold consecutive raises (count summed,
    gravest severity kept), and return round k = the k-th decision of every fingerprint."""
    per_fingerprint: dict[str, list[Decision]] = {}
    for d in decisions:
        fp = d.occurrence.fingerprint if isinstance(d, Raise) else d.fingerprint
        ops = per_fingerprint.setdefault(fp, [])
        prev = ops[-1] if ops else None
        if isinstance(d, Raise) and isinstance(prev, Raise):
            first, occ = prev.occurrence, d.occurrence
            merged = q.AlertOccurrence(
                site=first.site, source=first.source, source_type=first.source_type,
                kind=first.kind,
                severity=min(first.severity, occ.severity, key=q.SEVERITY_RANK.__getitem__),
                title=first.title, at=min(first.at, occ.at), details=first.details,
                count=first.count + occ.count, event_id=first.event_id,
                last_at=max(first.last_at or first.at, occ.last_at or occ.at),
                escalation=first.escalation or occ.escalation, id=first.id,
            )
            ops[-1] = Raise(merged, prev.received_at)
        else:
            ops.append(d)
    depth = max((len(ops) for ops in per_fingerprint.values()), default=0)
    return [[ops[k] for ops in per_fingerprint.values() if k < len(ops)] for k in range(depth)]
