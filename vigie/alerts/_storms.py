"""Alert storms: a site whose network drops is one page, not two hundred.

When a collège's link goes down, every camera of the site goes offline at once (and its
sensors fall offline or silent, a little later: when the broker gives up on them). Each of
those alerts is still stored: a technician needs to know which devices were cut off and for
how long. But they are grouped under one `site_unreachable` alert for the site:

- Grouped alerts are flagged `silenced` (recorded, not notified: the meaning the design
  gives the flag) and carry `details.grouped_by`, the id of the site alert; their history
  says `grouped`. The site alert's details count the devices cut off.
- A site is unreachable when, among its cameras or among its sensors, at least `fraction`
  of them (and at least `min_sources`) are unreachable at once: camera `offline`, sensor
  `device_offline` or `device_silent`. It is reachable again below half that share.
- When the site is back (below half that share), the site alert resolves. Its devices
  come back over the next seconds (a camera reconnects, a device says it is online) and
  their alerts resolve, still grouped. Those still down `release_after` (60 s) later are
  released: un-silenced (history: `ungrouped`), published again, so notified, since they
  are down on their own.
- The cameras of a site are judged together, every second, before their alerts are
  applied one by one: the site alert opens with the first of them, and each is grouped as
  it is stored; none is paged on its own. A link that drops is not seen by all its
  cameras in the same second, though (each notices when its own last frame is
  `offline_after` old, and a loaded node judges them a tick or two apart), so a camera
  offline on a site with enough cameras to make a storm waits up to `window` seconds
  (Alertmanager's `group_wait`): raised together with the site alert if the rest follow,
  on its own when the window is over otherwise. The camera's state is live meanwhile; only
  its page waits. Sensor alerts are never held (they come with broker messages,
  acknowledged with their transaction): the first ones of a site whose cameras are fine
  may be paged before the site alert opens; those after it are grouped at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from vigie.alerts._rules import Decision, Raise, Resolve
from vigie.config import Config, StormConfig
from vigie.metrics import Metrics
from vigie.store import _alerts as q

if TYPE_CHECKING:
    from vigie.alerts._service import AlertChange

# (action, alert): the service makes them AlertChanges. Grouping is told in the workflow's
# words: `silenced` (grouped), `unsilenced` (released); the history says grouped/ungrouped.
Change = tuple[str, q.Alert]
__all__ = ["UNREACHABLE", "StormGuard"]

log = logging.getLogger("vigie.alerts")

# Alert kinds that say "this device cannot be reached", by category of device.
UNREACHABLE = {"offline": "camera", "device_offline": "sensor", "device_silent": "sensor"}
KIND, SOURCE = "site_unreachable", "network"

# Grouped: silenced (notifiers leave silenced alerts out) and not escalated meanwhile.
_GROUP = f"""
UPDATE alerts SET silenced = true, next_escalation_at = NULL,
                  details = details || jsonb_build_object('grouped_by', $2::text)
WHERE site = $1 AND state <> 'resolved' AND kind = ANY($3::text[])
  -- not silenced, or grouped under an earlier site alert of the site (not yet released)
  AND (NOT silenced OR details->>'grouped_by' IS DISTINCT FROM NULL)
  AND details->>'grouped_by' IS DISTINCT FROM $2
RETURNING {q.COLUMNS}
"""
# Released: out of the group, and out of silence unless a maintenance window covers it;
# like an alert out of its silence, it is news again and its escalation starts over.
_UNGROUP = f"""
WITH due AS (
    SELECT a.id, s.id AS site_alert FROM alerts a JOIN alerts s
        ON s.id::text = a.details->>'grouped_by'
    WHERE a.silenced AND a.state <> 'resolved' AND a.details ? 'grouped_by'
      AND s.state = 'resolved' AND s.resolved_at <= $1
    FOR UPDATE OF a SKIP LOCKED)
UPDATE alerts a SET details = a.details - 'grouped_by',
    silenced = {q.silence_matches("a", "$2")},
    escalations_left = CASE WHEN {q.silence_matches("a", "$2")} THEN a.escalations_left
                            ELSE a.escalate_max END,
    next_escalation_at = CASE WHEN {q.silence_matches("a", "$2")} THEN NULL
                              WHEN a.state = 'open' AND a.escalate_after IS NOT NULL
                                   AND a.escalate_max > 0
                              THEN $2 + a.escalate_after END
FROM due WHERE a.id = due.id
RETURNING {", ".join("a." + c for c in q.Alert.__slots__)}, due.site_alert
"""
_HISTORY_EACH = """
INSERT INTO alert_history (alert_id, at, actor, action, details)
SELECT u.id, $2, 'vigie', $3, jsonb_build_object('site_alert', u.site_alert)
FROM unnest($1::uuid[], $4::text[]) AS u(id, site_alert)
"""
_HISTORY = """
INSERT INTO alert_history (alert_id, at, actor, action, details)
SELECT unnest($1::uuid[]), $2, 'vigie', $3, jsonb_build_object('site_alert', $4::text)
"""


@dataclass(slots=True)
class _Held:
    raise_: Raise
    until: float  # time.monotonic()


@dataclass(slots=True)
class _Site:
    name: str
    total: dict[str, int]  # devices by category: camera, sensor
    held: dict[str, _Held] = field(default_factory=dict)  # by fingerprint


class StormGuard:
    """Held camera-offline raises, and the site-level grouping (see the module)."""

    def __init__(self, config: Config, metrics: Metrics,
                 clock: Callable[[], Any]) -> None:
        self.config: StormConfig = config.alerts.storm
        self._metrics = metrics
        self._clock = clock
        self._sites = {
            s.id: _Site(s.name, {"camera": len(s.cameras), "sensor": len(s.sensors)})
            for s in config.sites}
        # The site's cameras offline right now, as the camera supervisor judges them (set
        # by the node once its cameras are watched): a site's cameras are all judged in the
        # same second, before their alerts are applied one by one.
        self.cameras_offline: Callable[[str], set[str]] = lambda site: set()

    def _need(self, total: int, fraction: float) -> int:
        return max(self.config.min_sources, math.ceil(fraction * total))

    def _can_storm(self, site: _Site) -> bool:
        return site.total["camera"] >= self.config.min_sources  # not a site with two cameras

    def _storm(self, site_id: str) -> bool:
        """The site's cameras down right now make a storm."""
        down = len(self.cameras_offline(site_id))
        return down >= self._need(self._sites[site_id].total["camera"], self.config.fraction)

    # -- holding camera offline raises --------------------------------------------------

    def hold(self, decisions: Sequence[Decision], unresolved: set[str]) -> list[Decision]:
        """The decisions to apply now. A new camera-offline raise on a site that can make a
        storm waits (up to `window`) for the rest of its cameras: if they follow, they land
        together with the site alert. A resolve of a held raise cancels it (it was never
        raised: a camera back within the window is never paged)."""
        now = time.monotonic()  # config.window is a positive duration: always a hold
        out: list[Decision] = []
        for d in decisions:
            if isinstance(d, Raise):
                o = d.occurrence
                site = self._sites.get(o.site)
                if (site is not None and o.source_type == "camera" and o.kind == "offline"
                        and o.fingerprint not in unresolved and self._can_storm(site)):
                    held = site.held.get(o.fingerprint)
                    site.held[o.fingerprint] = _Held(
                        d, held.until if held else now + self.config.window)
                    continue
            elif isinstance(d, Resolve):
                site_id = d.fingerprint.split("/", 1)[0]
                site = self._sites.get(site_id)
                if site is not None and site.held.pop(d.fingerprint, None) is not None:
                    continue
            out.append(d)
        return out

    def due(self, everything: bool = False) -> list[Decision]:
        """Held raises to apply now, a site's all together: the storm has formed, or the
        window of its first held raise is over."""
        now = time.monotonic()
        out: list[Decision] = []
        for site_id, site in self._sites.items():
            if site.held and (everything or self._storm(site_id)
                              or min(h.until for h in site.held.values()) <= now):
                out += [h.raise_ for h in site.held.values()]
                site.held.clear()
        return out

    def drop(self, site_id: str, camera: str) -> None:
        """This node stops judging the camera (handed over, or its leases let go): its held
        raises are not raised. Its new holder read the open alerts when it took the camera;
        one opened here after that would stay open for good, resolved by nobody. The new
        holder judges the camera itself, and raises what is still there."""
        site = self._sites.get(site_id)
        if site is not None:
            prefix = f"{site_id}/{camera}/"
            for fingerprint in [f for f in site.held if f.startswith(prefix)]:
                del site.held[fingerprint]

    @property
    def holding(self) -> int:
        return sum(len(s.held) for s in self._sites.values())

    async def run(self, raise_: Callable[[list[Decision]], Awaitable[object]],
                  release: Callable[[], Awaitable[object]], every: float = 0.5,
                  release_every: float = 5.0) -> None:
        """Raise held decisions when due (kept, due at once, while they cannot be); release
        the alerts of sites back for `release_after`."""
        released_at = time.monotonic()
        while True:
            await asyncio.sleep(every)
            await self.flush(raise_)
            if time.monotonic() - released_at >= release_every:
                released_at = time.monotonic()
                try:
                    await release()
                except Exception as exc:  # the database may be away: next time
                    log.warning("cannot release grouped alerts yet: %s", exc)

    async def flush(self, raise_: Callable[[list[Decision]], Awaitable[object]],
                    everything: bool = False) -> None:
        due = self.due(everything)
        if not due:
            return
        try:
            await raise_(due)
        except Exception as exc:
            log.warning("cannot raise %d held alert(s) yet: %s", len(due), exc)
            now = time.monotonic()
            for d in due:
                assert isinstance(d, Raise)
                site = self._sites[d.occurrence.site]
                site.held.setdefault(d.occurrence.fingerprint, _Held(d, now))

    # -- grouping, in the transaction that applies alert decisions ------------------------

    async def review(self, conn: Any, changes: Sequence[AlertChange],
                     unresolved: Iterable[q.Alert]) -> list[Change]:
        """Open or resolve site alerts, group or ungroup device alerts, for the sites these
        changes touch. `unresolved` is what the node knew before them."""
        touched = {c.alert.site for c in changes
                   if c.alert.kind in UNREACHABLE or c.alert.kind == KIND}
        if not touched:
            return []
        view = {a.fingerprint: a for a in unresolved if a.site in touched}
        for c in changes:
            if c.alert.site in touched:
                if c.alert.state == "resolved":
                    view.pop(c.alert.fingerprint, None)
                else:
                    view[c.alert.fingerprint] = c.alert
        out: list[Change] = []
        for site_id in sorted(touched):
            site = self._sites.get(site_id)
            if site is None:
                continue
            alerts = [a for a in view.values() if a.site == site_id]
            site_alert = next((a for a in alerts if a.kind == KIND), None)
            down = {cat: {a.source for a in alerts if UNREACHABLE.get(a.kind) == cat}
                    for cat in ("camera", "sensor")}
            down["camera"] |= self.cameras_offline(site_id)  # judged, maybe not yet raised
            if site_alert is None and self._unreachable(site, down, self.config.fraction):
                out += await self._open(conn, site_id, site, down, alerts)
            elif site_alert is not None and not self._unreachable(
                    site, down, self.config.fraction / 2):
                out += await self._close(conn, site_alert)
            elif site_alert is not None:
                out += await self._group(conn, site_alert)
        return out

    def _unreachable(self, site: _Site, down: dict[str, set[str]], fraction: float) -> bool:
        return any(
            site.total[cat] >= self.config.min_sources
            and len(down[cat]) >= self._need(site.total[cat], fraction)
            for cat in ("camera", "sensor"))

    async def _open(self, conn: Any, site_id: str, site: _Site, down: dict[str, set[str]],
                    alerts: list[q.Alert]) -> list[Change]:
        cams, sens = len(down["camera"]), len(down["sensor"])
        parts = [f"{cams} of {site.total['camera']} cameras"] if cams else []
        parts += [f"{sens} of {site.total['sensor']} sensors"] if sens else []
        since = min((a.opened_at for a in alerts if a.kind in UNREACHABLE),
                    default=self._clock())
        occurrence = q.AlertOccurrence(
            site=site_id, source=SOURCE, source_type="site", kind=KIND,
            severity=self.config.severity,
            title=f"Site unreachable: {site.name} ({', '.join(parts)} cut off)", at=since,
            details={"cameras_down": cams, "cameras": site.total["camera"],
                     "sensors_down": sens, "sensors": site.total["sensor"]})
        [(alert, opened)] = await q.upsert_alerts(conn, [occurrence])
        self._metrics.site_unreachable.labels(site_id).set(1)
        return [("opened" if opened else "repeated", alert), *await self._group(conn, alert)]

    async def _group(self, conn: Any, site_alert: q.Alert) -> list[Change]:
        rows = await conn.fetch(_GROUP, site_alert.site, str(site_alert.id),
                                sorted(UNREACHABLE))
        grouped = [q.Alert.from_row(r) for r in rows]
        if grouped:
            await conn.execute(_HISTORY, [a.id for a in grouped], self._clock(), "grouped",
                               str(site_alert.id))
        return [("silenced", a) for a in grouped]

    async def _close(self, conn: Any, site_alert: q.Alert) -> list[Change]:
        """The site is back: its alert resolves. Its devices' alerts stay grouped while
        they recover (a camera reconnects some seconds after its network): `release`
        lets the ones still down go after `release_after`."""
        resolved = await q.resolve_fingerprints(
            conn, [(site_alert.fingerprint, self._clock(), "site reachable again")])
        self._metrics.site_unreachable.labels(site_alert.site).set(0)
        return [("resolved", a) for a in resolved]

    async def release(self, conn: Any) -> list[Change]:
        """Un-group the alerts still unresolved `release_after` their site alert resolved:
        those devices are down on their own (notified now, unless a maintenance window
        covers them: then they stay silenced, and nothing is told)."""
        now = self._clock()
        rows = await conn.fetch(_UNGROUP, now - timedelta(seconds=self.config.release_after),
                                now)
        released = [q.Alert.from_row(r) for r in rows]
        if released:
            await conn.execute(_HISTORY_EACH, [a.id for a in released], now, "ungrouped",
                               [str(r["site_alert"]) for r in rows])
        return [("unsilenced", a) for a in released if not a.silenced]
