"""Correlation: what an alarm gathers around it, after its commit, off the ingest path.

- A sensor alarm (intrusion, panic, tamper, a door at night: sensor alerts at least as grave
  as `alerts.correlation.min_severity`) gets the snapshots of the cameras of its zone: one
  taken at the alarm (the cameras are asked for a fresh frame: their next analysed
  keyframe), one `snapshot_after` later.
- A camera alert on a site whose intrusion alarm is open is linked to it, and an intrusion
  alarm to the camera alerts of its site opened in the `link_window` before it: both ways,
  in each alert's `related`.

Each addition is published as an `alert.correlated` change (live feed). A camera's frames
are on the disk of the node that watches it: with several nodes, each node follows the live
feed's `alert.opened` messages and attaches the frames of the cameras it watches, whichever
node raised the alarm. Links are made once, by the node that raised the alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson
from prometheus_client import Counter

from vigie.alerts._feed import SHUTDOWN, Feed
from vigie.alerts._service import AlertChange, AlertService, Clock, utc_now
from vigie.config import SENSOR_KINDS, Config
from vigie.errors import VigieError
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store import _alerts as alerts_q
from vigie.store import _cameras as cameras_q
from vigie.store import _correlation as q

__all__ = ["Alarm", "Correlator", "SnapshotSource", "WatchedCameras"]

log = logging.getLogger("vigie.correlation")

Sleep = Callable[[float], Awaitable[None]]
Work = Callable[[], Awaitable[None]]


class SnapshotSource(Protocol):
    """The cameras whose frames this node has."""

    def cameras_in_zone(self, site: str, zone: str) -> list[str]:
        """The cameras of a zone whose frames this node has (those it watches)."""

    def request(self, site: str, camera: str) -> None:
        """Ask for a fresh frame; it replaces `latest` within a few seconds."""

    def latest(self, site: str, camera: str) -> Path: ...


class WatchedCameras:
    """The camera supervisor as a snapshot source (duck-typed: vigie.cameras imports
    vigie.alerts, not the other way round)."""

    def __init__(self, supervisor: Any) -> None:
        self._supervisor = supervisor

    def cameras_in_zone(self, site: str, zone: str) -> list[str]:
        return [s.camera.id for s in self._supervisor.cameras.values()
                if s.site.id == site and s.camera.zone == zone
                and self._supervisor.watching(s.key)]

    def request(self, site: str, camera: str) -> None:
        self._supervisor.request_snapshot(f"{site}/{camera}")

    def latest(self, site: str, camera: str) -> Path:
        path: Path = self._supervisor.snapshot_path(site, camera)
        return path


@dataclass(frozen=True, slots=True)
class Alarm:
    """What snapshots need of a sensor alert, from the alert service or the live feed."""

    id: uuid.UUID
    site: str
    source: str
    kind: str
    severity: str
    opened_at: datetime
    zone: str  # the event's, when the sensor's config has none

    @classmethod
    def of(cls, alert: alerts_q.Alert) -> Alarm:
        return cls(alert.id, alert.site, alert.source, alert.kind, alert.severity,
                   alert.opened_at, str(alert.details.get("zone") or ""))

    @classmethod
    def from_json(cls, alert: dict[str, Any]) -> Alarm:
        return cls(uuid.UUID(alert["id"]), alert["site"], alert["source"], alert["kind"],
                   alert["severity"], datetime.fromisoformat(alert["opened_at"]),
                   str((alert.get("details") or {}).get("zone") or ""))


@dataclass(frozen=True, slots=True)
class _Kept:
    camera: str
    taken_at: datetime
    path: Path
    size: int


class Correlator:
    def __init__(self, config: Config, store: Store, alerts: AlertService, metrics: Metrics,
                 snapshots: SnapshotSource | None, *, feed: Feed | None = None,
                 clock: Clock = utc_now,
                 sleep: Sleep = asyncio.sleep, fresh_within: float = 3.0, poll: float = 0.1,
                 pending: int = 1000) -> None:
        self._config = config
        self._settings = config.alerts.correlation
        self._store = store
        self._alerts = alerts
        self._snapshots = snapshots
        # With a feed, alarms are taken from it (every node's, for this node's cameras);
        # without one (a lone process), from this node's alert service.
        self._feed = feed
        self._clock = clock
        self._sleep = sleep
        self.fresh_within = fresh_within  # how long a camera may take to send a new frame
        self._poll = poll
        self._queue: asyncio.Queue[Work] = asyncio.Queue(maxsize=pending)
        self._slots = asyncio.Semaphore(pending)
        self._busy = 0  # handed over and not finished
        self._idle = asyncio.Event()
        self._idle.set()
        self._rank = {s: i for i, s in enumerate(("critical", "major", "minor", "info"))}
        r = metrics.registry
        self._attached = Counter("vigie_correlation_snapshots",
                                 "Camera snapshots attached to sensor alarms", ["moment"],
                                 registry=r)
        self._linked = Counter("vigie_correlation_links",
                               "Alerts linked to an intrusion alarm of their site",
                               registry=r)
        self._dropped = Counter("vigie_correlation_dropped",
                                "Correlations not done (backlog full, database error)",
                                registry=r)

    # the AlertService listener: on the event loop, never waits -----------------------------

    def alert_changed(self, change: AlertChange) -> None:
        if change.action != "opened":
            return
        alert = change.alert
        if alert.source_type == "sensor":
            if self._feed is None:
                self._alarm(Alarm.of(alert))
            if alert.kind == "intrusion":
                self._later(lambda: self._link_intrusion(alert))
        elif alert.source_type == "camera":
            self._later(lambda: self._link_camera(alert))

    def _alarm(self, alarm: Alarm) -> None:
        if (self._snapshots is not None and alarm.kind in SENSOR_KINDS
                and self._rank.get(alarm.severity, 99)
                <= self._rank[self._settings.min_severity]):
            self._later(lambda: self._gather(alarm))

    def _later(self, work: Work) -> None:
        try:
            self._queue.put_nowait(work)
        except asyncio.QueueFull:
            self._dropped.inc()
            log.warning("correlation backlog full: one alert left uncorrelated")
            return
        self._busy += 1
        self._idle.clear()

    async def idle(self) -> None:
        """Until everything handed over is done (tests; a drain at shutdown)."""
        await self._idle.wait()

    # the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self._feed is not None and self._snapshots is not None:
                tg.create_task(self._follow(self._feed), name="vigie:correlation-feed")
            while True:
                work = await self._queue.get()
                await self._slots.acquire()
                tg.create_task(self._safely(work))

    async def _follow(self, feed: Feed) -> None:
        """Sensor alarms opened on any node, from the live feed."""
        while True:
            subscription = feed.subscribe(None)
            try:
                while (message := await subscription.get()) is not None:
                    if message.type != "alert.opened":
                        continue
                    try:
                        alert = orjson.loads(message.wire)["alert"]
                        if alert.get("source_type") == "sensor":
                            self._alarm(Alarm.from_json(alert))
                    except (KeyError, TypeError, ValueError) as exc:  # not fatal to the rest
                        log.warning("correlation: unreadable feed message %d: %r",
                                    message.seq, exc)
            finally:
                feed.unsubscribe(subscription)
            if subscription.closed_because == SHUTDOWN:
                return
            # Dropped for falling behind (an alert storm): the alarms meanwhile go without.
            self._dropped.inc()
            log.warning("correlation: fell behind the live feed (%s); following again",
                        subscription.closed_because)

    async def _safely(self, work: Work) -> None:
        try:
            await work()
        except (VigieError, OSError) as exc:
            self._dropped.inc()
            log.warning("correlation failed: %s", exc)
        finally:
            self._slots.release()
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    # snapshots -----------------------------------------------------------------------------

    def _zone(self, alert: Alarm) -> str:
        site = self._config.site(alert.site)
        sensor = site.sensor(alert.source) if site is not None else None
        if sensor is not None and sensor.zone:
            return sensor.zone
        return alert.zone

    async def _gather(self, alert: Alarm) -> None:
        assert self._snapshots is not None
        zone = self._zone(alert)
        cameras = self._snapshots.cameras_in_zone(alert.site, zone) if zone else []
        if not cameras:
            return
        late = (self._clock() - alert.opened_at).total_seconds()
        if late > self._settings.max_delay:
            # A backlog replayed after an outage: today's picture is not the alarm's.
            log.info("alert %s handled %.0fs after it was raised: no snapshot", alert.id, late)
            return
        first = await self._shoot(alert, cameras, "alarm", {})
        after = self._settings.snapshot_after
        if after is not None:
            await self._sleep(after)
            await self._shoot(alert, cameras, "after", first)

    async def _shoot(self, alert: Alarm, cameras: list[str], moment: str,
                     before: dict[str, float]) -> dict[str, float]:
        """Ask the cameras for a frame, wait for them a little, attach what came; return
        each camera's frame time (the file's mtime)."""
        assert self._snapshots is not None
        source, site = self._snapshots, alert.site
        asked = self._clock().timestamp()
        for camera in cameras:
            source.request(site, camera)
        fresh: dict[str, float] = {}
        for _ in range(max(1, math.ceil(self.fresh_within / self._poll))):
            for camera in cameras:
                taken = _mtime(source.latest(site, camera))
                if camera not in fresh and taken is not None and taken >= asked:
                    fresh[camera] = taken
            if len(fresh) == len(cameras):
                break
            await self._sleep(self._poll)
        if moment == "alarm":  # a camera that sends nothing: its last picture, however old
            for camera in cameras:
                taken = _mtime(source.latest(site, camera))
                if camera not in fresh and taken is not None:
                    fresh[camera] = taken
        wanted = [c for c in cameras if c in fresh and fresh[c] != before.get(c)]
        if not wanted:
            return fresh
        kept = await asyncio.to_thread(self._keep, site, wanted)
        await self._attach(alert, kept, moment)
        return {**fresh, **{k.camera: k.taken_at.timestamp() for k in kept}}

    def _keep(self, site: str, cameras: list[str]) -> list[_Kept]:
        """Copy each camera's latest frame beside it (the copy is what the alert keeps)."""
        assert self._snapshots is not None
        kept = []
        for camera in cameras:
            latest = self._snapshots.latest(site, camera)
            try:
                # One open file: the bytes and their time belong to the same frame even if
                # the worker replaces the file meanwhile.
                with latest.open("rb") as f:
                    taken = datetime.fromtimestamp(os.fstat(f.fileno()).st_mtime, UTC)
                    data = f.read()
            except FileNotFoundError:
                continue
            copy = latest.parent / camera / f"{taken:%Y%m%dT%H%M%S.%f}-{uuid.uuid4().hex[:8]}.jpg"
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
            kept.append(_Kept(camera, taken, copy, len(data)))
        return kept

    async def _attach(self, alert: Alarm, kept: list[_Kept], moment: str) -> None:
        data_dir = self._config.node.data_dir
        async with self._store.transaction() as conn:
            for k in kept:
                snapshot_id = await cameras_q.keep_snapshot(
                    conn, site=alert.site, camera=k.camera, at=k.taken_at,
                    path=str(k.path.relative_to(data_dir)), size=k.size)
                await alerts_q.attach_snapshot(conn, alert.id, {
                    "id": snapshot_id, "camera": k.camera, "taken_at": k.taken_at.isoformat(),
                    "url": f"/api/v1/snapshots/{snapshot_id}", "moment": moment})
            updated = await alerts_q.get_alert(conn, alert.id, None)
        self._attached.labels(moment).inc(len(kept))
        self._alerts.publish([AlertChange("correlated", updated)])

    # links ---------------------------------------------------------------------------------

    async def _link_camera(self, alert: alerts_q.Alert) -> None:
        async with self._store.transaction() as conn:
            changed = await q.link_alerts(conn, alert.id, await q.open_intrusions(conn, alert.site))
        self._linked_publish(changed)

    async def _link_intrusion(self, alert: alerts_q.Alert) -> None:
        since = self._clock() - timedelta(seconds=self._settings.link_window)
        async with self._store.transaction() as conn:
            cameras = await q.recent_camera_alerts(conn, alert.site, since)
            changed = await q.link_alerts(conn, alert.id, cameras)
        self._linked_publish(changed)

    def _linked_publish(self, changed: list[alerts_q.Alert]) -> None:
        if changed:
            self._linked.inc(len(changed) - 1)
            self._alerts.publish([AlertChange("correlated", a) for a in changed])


def _mtime(path: Path) -> float | None:
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_mtime
    return None
