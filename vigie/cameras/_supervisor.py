"""The node's side of camera watching: worker processes, health, alerts, history.

Workers report samples every second; the supervisor turns them into health (with
hysteresis), alerts (raised and resolved through the alert service), stored transitions and
low-rate samples. A camera whose worker stops reporting, or whose stream stopped delivering
packets for `offline_after`, is offline: that judgement is made here, on the node's clock,
so no hung stream or worker can hide it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from vigie.alerts import AlertService, Decision, Raise, Resolve
from vigie.cameras._health import CameraHealth, HealthChange
from vigie.cameras._stream import CameraSpec
from vigie.cameras._worker import Sample, worker_main
from vigie.config import CAMERA_REASONS, CameraChecks, CameraConfig, Config, SiteConfig
from vigie.errors import StoreUnavailable
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store import _alerts as alerts_q
from vigie.store import _cameras as cameras_q
from vigie.store._alerts import AlertOccurrence

__all__ = ["CameraState", "CameraSupervisor"]

log = logging.getLogger("vigie.cameras")

REPORT_EVERY = 1.0
SAMPLE_EVERY = 60.0  # stored samples, for history and availability
_TITLES = {
    "offline": "Camera offline", "low_fps": "Camera frame rate too low",
    "frozen": "Camera picture frozen", "black": "Camera picture black",
    "too_dark": "Camera picture too dark", "too_bright": "Camera picture too bright",
    "blurred": "Camera picture blurred", "covered": "Camera covered (possible tampering)",
    "moved": "Camera moved (possible tampering)",
}


@dataclass
class CameraState:
    """What the node knows of one camera right now (served by the API from memory)."""

    site: SiteConfig
    camera: CameraConfig
    checks: CameraChecks
    health: CameraHealth
    worker: int
    sample: Sample | None = None
    last_stored: float = 0.0
    reconnects_counted: int = 0
    snapshot_recorded: float | None = None

    @property
    def key(self) -> str:
        return f"{self.site.id}/{self.camera.id}"


@dataclass
class _Worker:
    process: Any
    conn: Connection
    cameras: set[str] = field(default_factory=set)


class CameraSupervisor:
    def __init__(self, config: Config, store: Store, alerts: AlertService, metrics: Metrics,
                 clock: Callable[[], datetime], workers: int | None = None) -> None:
        self._config = config
        self._store = store
        self._alerts = alerts
        self._metrics = metrics
        self._clock = clock
        self._n_workers = workers or max(1, min(os.cpu_count() or 1, 8))
        self._workers: list[_Worker] = []
        self.cameras: dict[str, CameraState] = {}
        self._pending: asyncio.Queue[Callable[[], Any]] = asyncio.Queue(maxsize=10_000)
        self._snapshots = config.node.data_dir / "snapshots"
        self._started = time.time()
        # Told of every change of a camera's state or reasons (the live feed):
        # (site, camera, state, reasons, at). Must not block.
        self.on_state: Callable[[str, str, str, frozenset[str], datetime], None] | None = None
        # Several nodes: the cameras this node judges (None: every camera, a lone node), and
        # when each began to be watched here (see `assign`).
        self._judging: set[str] | None = None
        self._watched_since: dict[str, float] = {}
        for site in config.sites:
            for cam in site.cameras:
                checks = config.camera_checks(cam)
                state = CameraState(site, cam, checks, CameraHealth(
                    bad_samples=checks.bad_samples, good_samples=checks.good_samples), worker=0)
                self.cameras[state.key] = state

    # lifecycle ---------------------------------------------------------------------------

    async def start(self, *, watch_all: bool = True) -> None:
        """Start the workers and watch every camera; with `watch_all=False` (several nodes),
        watch none until `assign` says which."""
        if not self.cameras:
            return
        self._judging = None if watch_all else set()
        async with self._store.connection() as conn:
            references = await cameras_q.load_references(conn)
        self._snapshots.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for index in range(min(self._n_workers, len(self.cameras))):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(child, REPORT_EVERY),
                                  name=f"vigie-camera-worker-{index}", daemon=True)
            process.start()
            child.close()
            self._workers.append(_Worker(process, parent))
            loop.add_reader(parent.fileno(), self._readable, index)
        if not watch_all:
            return
        # Alerts this node (or its previous run) left open: health resumes from them, so
        # they resolve when the camera is seen healthy instead of staying open for ever.
        async with self._store.connection() as conn:
            left_open = await alerts_q.open_camera_reasons(conn, list(self.cameras),
                                                           CAMERA_REASONS)
        for i, state in enumerate(self.cameras.values()):
            self._resume(state, left_open.get(state.key, ()))
            state.worker = i % len(self._workers)
            self._workers[state.worker].cameras.add(state.key)
            self._send(state.worker, "add", self._spec(state, references))
        self._metrics.cameras_watched.set(len(self.cameras))
        log.info("watching %d camera(s) with %d worker process(es)", len(self.cameras),
                 len(self._workers))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self._workers:
            loop.remove_reader(w.conn.fileno())
            with contextlib.suppress(OSError):
                w.conn.send(("stop", None))
        for w in self._workers:
            await asyncio.to_thread(w.process.join, 5)
            if w.process.is_alive():
                w.process.kill()
            w.conn.close()
        self._workers.clear()
        await self.flush()

    def _spec(self, state: CameraState, references: dict[tuple[str, str], bytes]) -> CameraSpec:
        return CameraSpec(
            key=state.key, url=state.camera.url.reveal(), transport=state.camera.transport,
            checks=state.checks, snapshot_path=self._snapshots / state.site.id /
            f"{state.camera.id}.jpg",
            reference=references.get((state.site.id, state.camera.id)),
        )

    def _send(self, worker: int, kind: str, arg: Any) -> None:
        try:
            self._workers[worker].conn.send((kind, arg))
        except OSError as exc:
            log.error("camera worker %d unreachable: %s", worker, exc)

    def relearn(self, key: str) -> None:
        """Forget a camera's reference and learn a new one (after a planned change)."""
        state = self.cameras[key]
        self._send(state.worker, "relearn", key)
        self._later(self._reference_writer(state.site.id, state.camera.id, None))

    def watching(self, key: str) -> bool:
        """Whether this node watches the camera now (its frames are on this node's disk)."""
        return key in self.cameras and bool(self._workers) and self._watches(key)

    def request_snapshot(self, key: str) -> bool:
        """Have a camera's next analysed keyframe written as its snapshot (within about
        `analyse_every`), whatever the snapshot period; False if it is not watched here."""
        if not self.watching(key):
            return False
        self._send(self.cameras[key].worker, "snapshot", key)
        return True

    def snapshot_path(self, site: str, camera: str) -> Path:
        """Where a camera's latest snapshot is (replaced atomically by its worker)."""
        return self._snapshots / site / f"{camera}.jpg"

    # from the workers -------------------------------------------------------------------

    def _readable(self, index: int) -> None:
        conn = self._workers[index].conn
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "samples":
                    for sample in message[1]:
                        self._observe(sample)
                elif message[0] == "reference":
                    _, key, data = message
                    state = self.cameras.get(key)
                    if state is not None:
                        self._later(self._reference_writer(state.site.id, state.camera.id,
                                                           data))
        except (EOFError, OSError):
            log.error("camera worker %d died; its cameras will show offline", index)
            asyncio.get_running_loop().remove_reader(conn.fileno())

    def _observe(self, sample: Sample) -> None:
        state = self.cameras.get(sample.key)
        if state is None or not self._watches(sample.key):
            return
        state.sample = sample
        self._metrics.camera_fps.labels(state.site.id, state.camera.id).set(sample.fps)
        if sample.reconnects > state.reconnects_counted:
            self._metrics.camera_reconnects.labels(state.site.id, state.camera.id).inc(
                sample.reconnects - state.reconnects_counted)
            state.reconnects_counted = sample.reconnects
        if sample.check_seconds is not None:
            self._metrics.camera_check_seconds.observe(sample.check_seconds)

    def tick(self) -> None:
        """Judge every camera on the node's clock (called every second)."""
        now = time.time()
        at = self._clock()
        for state in self.cameras.values():
            if self._judging is not None and state.key not in self._judging:
                continue  # watched by another node, or only warming up here
            seen = self._reasons(state, now)
            if seen is None:
                continue  # nothing known yet: the camera stays unknown
            change = state.health.observe(seen, at)
            self._export(state)
            if change.activated or change.repeated or change.cleared or change.state_changed:
                self._on_change(state, change, at)
            if state.sample is not None and now - state.last_stored >= SAMPLE_EVERY:
                state.last_stored = now
                self._later(self._sample_writer(state, at))
            self._note_snapshot(state)

    def _reasons(self, state: CameraState, now: float) -> frozenset[str] | None:
        """What the camera shows now; None while there is nothing to judge it on."""
        s = state.sample
        offline_after = state.checks.offline_after
        if s is None or s.last_packet_at is None:
            # Never a packet: offline once the first connection has had its chance.
            waited = now - max(self._started, self._watched_since.get(state.key, 0.0))
            return frozenset({"offline"}) if waited > offline_after + 5 else None
        stale = now - s.at > offline_after + REPORT_EVERY  # the worker itself is silent
        if stale or now - s.last_packet_at > offline_after:
            return frozenset({"offline"})
        return s.reasons

    def _export(self, state: CameraState) -> None:
        site, cam = state.site.id, state.camera.id
        self._metrics.camera_up.labels(site, cam).set(0 if state.health.state == "offline"
                                                      else 1)
        for name in ("ok", "degraded", "offline", "unknown"):
            self._metrics.camera_state.labels(site, cam, name).set(
                1 if state.health.state == name else 0)

    # alerts and history ------------------------------------------------------------------

    def _on_change(self, state: CameraState, change: HealthChange, at: datetime) -> None:
        site, cam = state.site.id, state.camera.id
        decisions: list[Decision] = []
        for reason in sorted(change.activated | change.repeated):
            decisions.append(Raise(AlertOccurrence(
                site=site, source=cam, source_type="camera", kind=reason,
                severity=self._severity(reason),
                title=f"{_TITLES.get(reason, reason)}: {state.camera.name or cam} "
                      f"({state.site.name})",
                at=at, details=self._details(state),
            )))
        for reason in sorted(change.cleared):
            decisions.append(Resolve(f"{site}/{cam}/{reason}", at, "camera recovered"))
        if change.state_changed or change.activated or change.cleared:
            log.info("camera %s/%s: %s %s", site, cam, change.state,
                     ",".join(sorted(change.reasons)) or "")
            if self.on_state is not None:
                self.on_state(site, cam, change.state, change.reasons, at)
            transition = cameras_q.Transition(site, cam, at, change.state,
                                              tuple(sorted(change.reasons)), None,
                                              self._details(state))
            self._later(self._transition_writer(transition))
        if decisions:
            snapshot = self._snapshot_file(state)
            self._later(lambda: self._raise(decisions, state, snapshot))

    def _severity(self, reason: str) -> str:
        for name, severity in self._config.alerts.camera.items():
            if name == reason:
                return severity
        return "minor"

    def _details(self, state: CameraState) -> dict[str, Any]:
        s = state.sample
        if s is None:
            return {}
        return {"fps": s.fps, "bitrate": s.bitrate, "width": s.width, "height": s.height,
                "codec": s.codec, "reconnects": s.reconnects, "measures": s.measures or {},
                **({"error": s.error} if s.error else {})}

    async def _raise(self, decisions: list[Decision], state: CameraState,
                     snapshot: Path | None) -> None:
        if self._judging is not None and state.key not in self._judging:
            return  # handed over or lease lost since: its new holder judges it (no split brain)
        changes = await self._alerts.raise_now(decisions)
        opened = [c.alert for c in changes if c.action == "opened"]
        if opened and snapshot is not None:
            await self._attach(opened, state, snapshot)

    async def _attach(self, alerts: list[alerts_q.Alert], state: CameraState,
                      snapshot: Path) -> None:
        """Keep a copy of the camera's latest frame and attach it to the new alerts."""
        taken, kept, size = await asyncio.to_thread(_keep_copy, snapshot, state.camera.id)
        relative = str(kept.relative_to(self._config.node.data_dir))
        async with self._store.transaction() as conn:
            snapshot_id = await cameras_q.keep_snapshot(
                conn, state.site.id, state.camera.id, taken, relative, size)
            ref = {"id": snapshot_id, "camera": state.camera.id, "taken_at": taken.isoformat(),
                   "url": f"/api/v1/snapshots/{snapshot_id}"}
            for alert in alerts:
                await alerts_q.attach_snapshot(conn, alert.id, ref)

    def _snapshot_file(self, state: CameraState) -> Path | None:
        path = self._snapshots / state.site.id / f"{state.camera.id}.jpg"
        return path if path.exists() else None

    def _note_snapshot(self, state: CameraState) -> None:
        s = state.sample
        if s is None or s.snapshot_at is None or s.snapshot_at == state.snapshot_recorded:
            return
        state.snapshot_recorded = s.snapshot_at
        path = self._snapshots / state.site.id / f"{state.camera.id}.jpg"
        relative = str(path.relative_to(self._config.node.data_dir))
        row = (state.site.id, state.camera.id, datetime.fromtimestamp(s.snapshot_at, UTC),
               relative, path.stat().st_size if path.exists() else 0)

        async def write() -> None:
            async with self._store.connection() as conn:
                await cameras_q.record_latest_snapshots(conn, [row])

        self._later(write)

    def _transition_writer(self, t: cameras_q.Transition) -> Callable[[], Any]:
        async def write() -> None:
            async with self._store.connection() as conn:
                await cameras_q.insert_transitions(conn, [t])
        return write

    def _sample_writer(self, state: CameraState, at: datetime) -> Callable[[], Any]:
        s = state.sample
        assert s is not None
        row = (state.site.id, state.camera.id, at, state.health.state,
               sorted(state.health.reasons), s.fps, s.bitrate, s.measures)

        async def write() -> None:
            async with self._store.connection() as conn:
                await cameras_q.insert_samples(conn, [row])
        return write

    def _reference_writer(self, site: str, camera: str, data: bytes | None
                          ) -> Callable[[], Any]:
        return lambda: self._save_reference(site, camera, data)

    async def _save_reference(self, site: str, camera: str, data: bytes | None) -> None:
        async with self._store.connection() as conn:
            await cameras_q.save_reference(conn, site, camera, self._clock(), data)

    def backlog(self) -> int:
        """Database writes waiting (history, alerts): measured, bounded by `backlog_limit`."""
        return self._pending.qsize()

    @property
    def backlog_limit(self) -> int:
        return self._pending.maxsize

    def _later(self, work: Callable[[], Any]) -> None:
        """Database work, done in order by `run`, off the judging path."""
        try:
            self._pending.put_nowait(work)
        except asyncio.QueueFull:
            self._metrics.db_errors.labels("camera_backlog").inc()
            log.warning("camera history backlog full: dropping one write")

    async def flush(self) -> None:
        while not self._pending.empty():
            await self._do(self._pending.get_nowait())

    async def _do(self, work: Callable[[], Any]) -> None:
        delay = 0.2
        attempts = 0
        while attempts < 5:
            try:
                await work()
                return
            except StoreUnavailable:
                # The database is away: wait for it (the store says when to try again),
                # in order, so transitions and alerts keep their original timestamps.
                await asyncio.sleep(0.5)
            except Exception as exc:
                attempts += 1
                log.warning("camera history write failed, retrying: %s", exc)
                await asyncio.sleep(delay)
                delay *= 2
        log.error("camera history write given up after retries")

    async def run(self) -> None:
        """Judge every second; write history in the background, in order."""
        async def judge() -> None:
            while True:
                await asyncio.sleep(REPORT_EVERY)
                self.tick()

        judge_task = asyncio.create_task(judge(), name="vigie:camera-judge")
        try:
            while True:
                await self._do(await self._pending.get())
        finally:
            judge_task.cancel()
            await asyncio.gather(judge_task, return_exceptions=True)

    # several nodes -----------------------------------------------------------------------
    # vigie.cluster decides which cameras this node holds (leases in PostgreSQL) and calls
    # `assign`; a lone node never does, and judges every camera from `start`.

    def _watches(self, key: str) -> bool:
        return self._judging is None or any(key in w.cameras for w in self._workers)

    def assign(self, watch: AbstractSet[str], judge: AbstractSet[str], *,
               references: Mapping[str, bytes] | None = None,
               open_reasons: Mapping[str, Collection[str]] | None = None) -> None:
        """Watch exactly the cameras `watch` (their streams read by the workers) and judge
        `judge`, a subset (health, history and alerts; the others only warm up before a
        handover). Unknown keys are ignored.

        `references`: the learned references of cameras not watched yet, as their last
        holder left them. `open_reasons`: the reasons with an unresolved alert of cameras
        judged from now on, so that their health resumes there: those alerts resolve when
        the camera recovers and are not raised again.
        """
        if self._judging is None or not self._workers:
            return
        watch = {k for k in watch if k in self.cameras}
        judge = {k for k in judge if k in watch}
        now = time.time()
        watched = {k for w in self._workers for k in w.cameras}
        for key in watched - watch:
            state = self.cameras[key]
            self._workers[state.worker].cameras.discard(key)
            self._send(state.worker, "remove", key)
            self._watched_since.pop(key, None)
        for key in watch - watched:
            state = self.cameras[key]
            state.worker = min(range(len(self._workers)),
                               key=lambda i: len(self._workers[i].cameras))
            self._workers[state.worker].cameras.add(key)
            self._watched_since[key] = now
            reference = (references or {}).get(key)
            self._send(state.worker, "add", self._spec(state, {} if reference is None else {
                (state.site.id, state.camera.id): reference}))
        for key in self._judging - judge:
            self._forget(self.cameras[key])
        for key in judge - self._judging:
            self._resume(self.cameras[key], (open_reasons or {}).get(key, ()))
        self._judging = judge
        self._metrics.cameras_watched.set(len(judge))

    def receiving(self, key: str) -> bool:
        """Whether packets of this camera's stream arrive here (a handover may complete)."""
        state = self.cameras.get(key)
        return (state is not None and state.sample is not None
                and state.sample.last_packet_at is not None and self._watches(key))

    def _forget(self, state: CameraState) -> None:
        """Another node judges this camera now: start from nothing if it comes back, and
        leave its per-camera series to the node that holds it."""
        state.health = CameraHealth(bad_samples=state.checks.bad_samples,
                                    good_samples=state.checks.good_samples)
        state.sample = None
        state.reconnects_counted = 0
        site, cam = state.site.id, state.camera.id
        for gauge in (self._metrics.camera_up, self._metrics.camera_fps):
            with contextlib.suppress(KeyError):
                gauge.remove(site, cam)
        for name in ("ok", "degraded", "offline", "unknown"):
            with contextlib.suppress(KeyError):
                self._metrics.camera_state.remove(site, cam, name)

    def _resume(self, state: CameraState, reasons: Collection[str]) -> None:
        """Judge a camera from the alerts its last holder left open: they count as active
        reasons, seen `bad_samples` times already (no new occurrence), and clear as usual
        (the first observation clears picture reasons an `offline` hides)."""
        health = CameraHealth(bad_samples=state.checks.bad_samples,
                              good_samples=state.checks.good_samples)
        active = set(reasons)
        if active:
            health.active = active
            health._bad = {r: state.checks.bad_samples for r in active}
            health.state = "offline" if "offline" in active else "degraded"
            health.since = self._clock()
        state.health = health

    # for the API --------------------------------------------------------------------------

    def view(self, state: CameraState) -> dict[str, Any]:
        from vigie.secrets import redact_url

        s = state.sample
        h = state.health

        def iso(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, UTC).isoformat() if t else None

        return {
            "id": state.camera.id, "site": state.site.id, "name": state.camera.name,
            "zone": state.camera.zone, "url": redact_url(state.camera.url.reveal()),
            "state": h.state, "reasons": sorted(h.reasons),
            "since": h.since.isoformat() if h.since else None,
            "last_frame_at": iso(s.last_packet_at) if s else None,
            "last_analysed_at": iso(s.analysed_at) if s else None,
            "fps": s.fps if s else None, "width": s.width if s else None,
            "height": s.height if s else None, "codec": s.codec if s else None,
            "bitrate": s.bitrate if s else None, "reconnects": s.reconnects if s else 0,
            "error": s.error if s else None,
        }



def _keep_copy(snapshot: Path, camera: str) -> tuple[datetime, Path, int]:
    """Copy the latest frame beside it, named by its time; (taken_at, copy, size)."""
    taken = datetime.fromtimestamp(snapshot.stat().st_mtime, UTC)
    kept = snapshot.parent / camera / f"{taken:%Y%m%dT%H%M%S.%f}.jpg"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(snapshot, kept)
    return taken, kept, kept.stat().st_size
