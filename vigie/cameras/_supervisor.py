"""The node's side of camera watching: worker processes, health, alerts, history.

Workers report samples every second; the supervisor turns them into health (with
hysteresis), alerts (raised and resolved through the alert service), stored transitions and
low-rate samples. Whether a stream stopped delivering packets for `offline_after` is judged
here, on the node's clock, from the time of its last packet.

Timing. Picture reasons and hysteresis are judged once a second (`bad_samples` and
`good_samples` count seconds). Offline deadlines are checked every `SWEEP_EVERY`: judged only
on the one-second tick, a camera was seen offline between `offline_after` and
`offline_after` + 1 s after its last packet, plus the tick's own drift (5.7-6.8 s measured at
300 cameras for a 5 s `offline_after`); now it is 0.2 s at most, plus event-loop lag. A worker
that falls behind (its reports come late: an overloaded machine) reads its streams late too,
so its cameras' deadlines move by its lag rather than raise false offline alerts.

A worker that stops reporting. Its samples say nothing about its cameras any more, so they
are not judged: each keeps its last state, shown as `stale` by the API and counted in
vigie_cameras_stale, while the worker is flagged (log, vigie_camera_worker_up). Judging them
offline instead would raise one false "camera offline" alert per camera — 150 at once for a
worker of a 300-camera node — for what is one fault of the node, which has its own metric and
alert. A late worker is killed after `HUNG_AFTER` and restarted with its cameras, as is one
that died; a camera left without a judgement for `UNKNOWN_AFTER` (its worker cannot be
restarted) becomes `unknown`, so that nothing is shown as fine for long on no evidence. Its
open alerts stay open: they resolve once it is judged again and the fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigie.alerts import AlertService, Decision, Raise, Resolve
from vigie.cameras._health import CameraHealth, HealthChange
from vigie.cameras._history import MAX_SAMPLES, MAX_TRANSITIONS, CameraHistory
from vigie.cameras._learning import ReferenceStatus
from vigie.cameras._stream import CONNECT_TIMEOUT, CameraSpec
from vigie.cameras._worker import Sample
from vigie.cameras._workers import WorkerPool, worker_count
from vigie.config import CAMERA_REASONS, CameraChecks, CameraConfig, Config, SiteConfig
from vigie.errors import StoreUnavailable
from vigie.metrics import Metrics
from vigie.secrets import redact_url
from vigie.store import Store
from vigie.store import _alerts as alerts_q
from vigie.store import _cameras as cameras_q
from vigie.store._alerts import AlertOccurrence, occurrence_id

__all__ = ["CameraState", "CameraSupervisor"]

log = logging.getLogger("vigie.cameras")

REPORT_EVERY = 1.0  # workers report every camera this often
JUDGE_EVERY = 1.0  # hysteresis counts judgements: `bad_samples` 3 means 3 seconds
SWEEP_EVERY = 0.2  # offline deadlines are checked this often
SAMPLE_EVERY = 60.0  # stored samples, for history and availability
FIRST_CONNECTION_GRACE = 5.0  # past offline_after + CONNECT_TIMEOUT, for a camera never received
UNKNOWN_AFTER = 60.0  # a camera not judged this long (its worker is down) becomes unknown
REFERENCES_TIMEOUT = 10.0  # a restarting worker waits this long for its cameras' references
_TITLES = {
    "offline": "Camera offline", "low_fps": "Camera frame rate too low",
    "frozen": "Camera picture frozen", "black": "Camera picture black",
    "too_dark": "Camera picture too dark", "too_bright": "Camera picture too bright",
    "blurred": "Camera picture blurred", "covered": "Camera covered (possible tampering)",
    "moved": "Camera moved (possible tampering)",
}
_STATES = ("ok", "degraded", "offline", "unknown")


@dataclass
class CameraState:
    """What the node knows of one camera right now (served by the API from memory)."""

    site: SiteConfig
    camera: CameraConfig
    checks: CameraChecks
    health: CameraHealth
    worker: int
    sample: Sample | None = None
    watching_since: float = 0.0  # given to its current worker process (wall clock)
    judged_at: float | None = None
    last_stored: float = 0.0
    reconnects_counted: int = 0  # as counted by its current worker process
    reconnects: int = 0  # since the node started, across worker restarts
    snapshot_recorded: float | None = None
    analysed_counted: float | None = None
    gauges: dict[str, Any] = field(default_factory=dict)  # metric children, looked up once
    reference: ReferenceStatus = field(default_factory=ReferenceStatus)

    @property
    def key(self) -> str:
        return f"{self.site.id}/{self.camera.id}"


class CameraSupervisor:
    def __init__(self, config: Config, store: Store, alerts: AlertService, metrics: Metrics,
                 clock: Callable[[], datetime], workers: int | None = None) -> None:
        self._config = config
        self._store = store
        self._alerts = alerts
        self._metrics = metrics
        self._clock = clock
        self.cameras: dict[str, CameraState] = {}
        for site in config.sites:
            for cam in site.cameras:
                checks = config.camera_checks(cam)
                state = CameraState(site, cam, checks, CameraHealth(
                    bad_samples=checks.bad_samples, good_samples=checks.good_samples), worker=0)
                self.cameras[state.key] = state
        self._pool = WorkerPool(worker_count(len(self.cameras), workers), REPORT_EVERY,
                                metrics, self._message)
        self._snapshots = config.node.data_dir / "snapshots"
        self.history = CameraHistory(store, alerts, metrics, config.node.data_dir,
                                     judged=self._judges)
        self._tasks: asyncio.TaskGroup | None = None
        self._started = False
        # Several nodes: the cameras this node judges (None: every camera, a lone node), and
        # those its workers read (judged, or warming up before a handover; see `assign`).
        self._judging: set[str] | None = None
        self._watched: set[str] = set()
        # Told of every change of a camera's state or reasons (the live feed):
        # (site, camera, state, reasons, at). Must not block.
        self.on_state: Callable[[str, str, str, frozenset[str], datetime], None] | None = None

    # lifecycle ---------------------------------------------------------------------------

    async def start(self, *, watch_all: bool = True) -> None:
        """Start the workers and watch every camera; with `watch_all=False` (several nodes),
        watch none until `assign` says which."""
        if not self.cameras:
            return
        self._judging = None if watch_all else set()
        try:
            async with self._store.connection() as conn:
                references = await cameras_q.load_references(conn)
                unresolved = (await alerts_q.open_camera_reasons(conn, list(self.cameras),
                                                                 CAMERA_REASONS)
                              if watch_all else {})
        except StoreUnavailable:
            # Started while the database is away: watch anyway. References are learned
            # afresh; the alerts a previous run left open come later (`carry_open_alerts`).
            log.warning("database away: cameras watched without their learned references")
            references, unresolved = {}, {}
        self._snapshots.mkdir(parents=True, exist_ok=True)
        for index in range(len(self._pool)):
            self._pool.spawn(index)
        self._started = True
        if not watch_all:
            return
        for i, state in enumerate(self.cameras.values()):
            # Alerts a previous run of the node left open: resolved when the camera is seen
            # fine, as if the node had never stopped.
            self._resume(state, unresolved.get(state.key, ()))
            state.reference.known(references.get((state.site.id, state.camera.id)))
            state.worker = i % len(self._pool)
            self._watched.add(state.key)
            self._export_state(state)
        await asyncio.gather(*(self._give_cameras(index, references)
                               for index in range(len(self._pool))))
        self._metrics.cameras_watched.set(len(self.cameras))
        log.info("watching %d camera(s) with %d worker process(es)", len(self.cameras),
                 len(self._pool))

    async def stop(self, budget: float = 10.0) -> None:
        await self._pool.stop()
        await self.history.close(budget)

    async def run(self) -> None:
        """Judge the cameras and write their history until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            tasks.create_task(self.history.run(), name="vigie:camera-history")
            tasks.create_task(self._judge_forever(), name="vigie:camera-judge")

    async def flush(self, budget: float = 10.0) -> bool:
        """Write all the history waiting (tests, shutdown); True when all of it was."""
        return await self.history.flush(budget)

    def _spec(self, state: CameraState, references: dict[tuple[str, str], bytes]) -> CameraSpec:
        return CameraSpec(
            key=state.key, url=state.camera.url.reveal(), transport=state.camera.transport,
            checks=state.checks, snapshot_path=self._snapshot_path(state),
            reference=references.get((state.site.id, state.camera.id)),
        )

    async def _give_cameras(self, index: int,
                            references: dict[tuple[str, str], bytes]) -> None:
        states = [s for s in self.cameras.values()
                  if s.worker == index and s.key in self._watched]
        now = time.time()
        for s in states:
            s.watching_since = now
        await self._pool.send_many(index, [("add", self._spec(s, references)) for s in states])

    async def _restart(self, index: int) -> None:
        self._pool.restarting(index, True)
        try:
            states = [s for s in self.cameras.values()
                      if s.worker == index and s.key in self._watched]
            references = await self._references([(s.site.id, s.camera.id) for s in states])
            self._pool.spawn(index)
            await self._give_cameras(index, references)
            log.warning("camera worker %d restarted with its %d camera(s)", index,
                        len(states))
        except Exception as exc:  # cannot fork, out of memory: try again later
            self._pool.start_failed(index, exc)
        finally:
            self._pool.restarting(index, False)

    async def _references(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """The cameras' references, the ones waiting to be written first. Without the
        database, the cameras learn theirs again (rather than stay unwatched)."""
        stored: dict[tuple[str, str], bytes] = {}
        try:
            async with asyncio.timeout(REFERENCES_TIMEOUT):
                async with self._store.connection() as conn:
                    stored = await cameras_q.load_references(conn, keys)
        except Exception as exc:  # away or slow: the cameras will relearn
            log.error("references not loaded for a restarting camera worker: %s", exc)
        for key in keys:
            waiting, data = self.history.waiting_reference(*key)
            if waiting:
                if data is None:
                    stored.pop(key, None)
                else:
                    stored[key] = data
        return stored

    def worker_pids(self) -> list[int | None]:
        """The process id of each camera worker, None while one is down."""
        return [self._pool.pid(i) for i in range(len(self._pool))]

    def relearn(self, key: str) -> None:
        """Forget a camera's reference and learn a new one (after a planned change)."""
        state = self.cameras[key]
        state.reference.relearn(time.time())
        self._pool.send(state.worker, "relearn", key)
        self.history.reference(state.site.id, state.camera.id, self._clock(), None)

    # from the workers -------------------------------------------------------------------

    def _message(self, message: Any) -> None:
        if message[0] == "samples":
            for sample in message[1]:
                self._observe(sample)
        elif message[0] == "reference":
            _, key, data = message
            state = self.cameras.get(key)
            if state is not None and state.reference.learned(data):
                self.history.reference(state.site.id, state.camera.id, self._clock(), data)

    def _observe(self, sample: Sample) -> None:
        state = self.cameras.get(sample.key)
        if state is None or not self._watches(sample.key):
            return
        state.sample = sample
        gauges = self._gauges(state)
        gauges["fps"].set(sample.fps)
        if sample.reconnects > state.reconnects_counted:
            gauges["reconnects"].inc(sample.reconnects - state.reconnects_counted)
            state.reconnects += sample.reconnects - state.reconnects_counted
        # A restarted worker counts from zero again.
        state.reconnects_counted = sample.reconnects
        if sample.check_seconds is not None and sample.analysed_at != state.analysed_counted:
            state.analysed_counted = sample.analysed_at  # each analysis observed once
            self._metrics.camera_check_seconds.observe(sample.check_seconds)

    # judging -----------------------------------------------------------------------------

    async def _judge_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + JUDGE_EVERY
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            for index in self._pool.check(time.monotonic()):
                if self._tasks is not None:
                    self._tasks.create_task(self._restart(index),
                                            name=f"vigie:camera-worker-{index}")
            if loop.time() >= next_tick:
                # On schedule, not a second after the last tick ended; a late loop skips
                # what it missed rather than judging twice in a row.
                next_tick = max(next_tick + JUDGE_EVERY, loop.time() + JUDGE_EVERY / 2)
                self.tick()
            else:
                self.sweep()

    def sweep(self) -> None:
        """Judge offline at once the cameras whose deadline passed (between two ticks)."""
        now = time.time()
        fresh = self._fresh_workers()
        lag = self._lags()
        at: datetime | None = None
        for state in self.cameras.values():
            if (state.health.state == "offline" or not fresh[state.worker]
                    or not self._judges_key(state.key)):
                continue
            if self._reasons(state, now, lag[state.worker]) == _OFFLINE:
                at = at or self._clock()
                self._judge(state, _OFFLINE, now, at)

    def tick(self) -> None:
        """Judge every camera (called every second)."""
        now = time.time()
        at = self._clock()
        fresh = self._fresh_workers()
        lag = self._lags()
        stale = 0
        for state in self.cameras.values():
            if not self._judges_key(state.key):
                continue  # watched by another node, or only warming up here
            if not fresh[state.worker]:
                stale += 1
                self._unjudged(state, now, at)
                continue
            seen = self._reasons(state, now, lag[state.worker])
            if seen is None:
                continue  # nothing known yet: the camera stays unknown
            self._judge(state, seen, now, at)
            if state.sample is not None and now - state.last_stored >= SAMPLE_EVERY:
                state.last_stored = now
                s = state.sample
                self.history.sample((state.site.id, state.camera.id, at, state.health.state,
                                     sorted(state.health.reasons), s.fps, s.bitrate,
                                     s.measures))
            self._note_snapshot(state)
        self._metrics.cameras_stale.set(stale)
        for index, behind in enumerate(lag):
            self._metrics.camera_worker_lag.labels(str(index)).set(round(behind, 3))

    def _fresh_workers(self) -> list[bool]:
        now = time.monotonic()
        return [self._pool.fresh(i, now) for i in range(len(self._pool))]

    def _lags(self) -> list[float]:
        return [self._pool.lag(i) for i in range(len(self._pool))]

    def _reasons(self, state: CameraState, now: float, lag: float = 0.0
                 ) -> frozenset[str] | None:
        """What the camera shows now; None while there is nothing to judge it on. Only for
        a camera whose worker reports on time: its sample is then at most a report old.

        `lag`: how far behind its worker has lately been. A starved worker (an overloaded
        machine) reads its streams late too: a packet waiting in a socket is no camera gone
        quiet, so its deadline moves by that much (nothing, within a few hundredths of a
        second, on a machine that keeps up)."""
        s = state.sample
        offline_after = state.checks.offline_after
        if s is None or s.last_packet_at is None or s.at < state.watching_since:
            # Never a packet since its worker got it: offline once its first connection
            # failed (refused, or timed out: counted in `reconnects`) and `offline_after`
            # has passed, or once a connection has had every chance to open, however slow.
            # Not sooner: a node starting on a loaded machine opens its streams late, and
            # calling them all offline would page a site unreachable that is not.
            waited = now - state.watching_since - lag
            failed = s is not None and s.at >= state.watching_since and s.reconnects > 0
            if failed and waited > offline_after:
                return _OFFLINE
            return (_OFFLINE if waited > offline_after + CONNECT_TIMEOUT + FIRST_CONNECTION_GRACE
                    else None)
        if now - s.last_packet_at > offline_after + lag:
            return _OFFLINE
        return s.reasons

    def _judge(self, state: CameraState, seen: frozenset[str], now: float, at: datetime
               ) -> None:
        previous = (state.health.state, state.health.reasons)
        change = state.health.observe(seen, at)
        state.judged_at = now
        if change.state_changed:
            self._export_state(state)
        if change.activated or change.repeated or change.cleared or change.state_changed:
            self._on_change(state, change, previous, at)

    def _unjudged(self, state: CameraState, now: float, at: datetime) -> None:
        """A camera whose worker is late or restarting: unknown once that lasts."""
        since = state.judged_at if state.judged_at is not None else state.watching_since
        if state.health.state == "unknown" or now - since < UNKNOWN_AFTER:
            return
        previous = (state.health.state, state.health.reasons)
        change = state.health.suspend(at)
        self._export_state(state)
        log.warning("camera %s: unknown, its worker has not reported for %.0f s",
                    state.key, now - since)
        self._on_change(state, change, previous, at,
                        {"error": "camera worker not reporting"})

    def _gauges(self, state: CameraState) -> dict[str, Any]:
        if not state.gauges:
            labels = (state.site.id, state.camera.id)
            m = self._metrics
            state.gauges = {"up": m.camera_up.labels(*labels),
                            "fps": m.camera_fps.labels(*labels),
                            "reconnects": m.camera_reconnects.labels(*labels),
                            **{name: m.camera_state.labels(*labels, name) for name in _STATES}}
        return state.gauges

    def _export_state(self, state: CameraState) -> None:
        gauges = self._gauges(state)
        gauges["up"].set(0 if state.health.state == "offline" else 1)
        for name in _STATES:
            gauges[name].set(1 if state.health.state == name else 0)

    # alerts and history ------------------------------------------------------------------

    def _on_change(self, state: CameraState, change: HealthChange,
                   previous: tuple[str, frozenset[str]], at: datetime,
                   details: dict[str, Any] | None = None) -> None:
        site, cam = state.site.id, state.camera.id
        decisions: list[Decision] = []
        for reason in sorted(change.activated | change.repeated):
            decisions.append(Raise(AlertOccurrence(
                site=site, source=cam, source_type="camera", kind=reason,
                severity=self._severity(reason),
                title=f"{_TITLES.get(reason, reason)}: {state.camera.name or cam} "
                      f"({state.site.name})",
                at=at, details=self._details(state),
                # The same id in memory (announced while the database is away) and once
                # stored: an operator may act on the alert they were shown.
                id=occurrence_id(f"{site}/{cam}/{reason}", at.isoformat()),
            )))
        for reason in sorted(change.cleared):
            decisions.append(Resolve(f"{site}/{cam}/{reason}", at, "camera recovered"))
        # What the camera shows changed (an alert carried over a restart and now resolved
        # changes nothing of it).
        if (change.state, change.reasons) != previous:
            log.info("camera %s/%s: %s %s", site, cam, change.state,
                     ",".join(sorted(change.reasons)) or "")
            if self.on_state is not None:
                self.on_state(site, cam, change.state, change.reasons, at)
            self.history.transition(cameras_q.Transition(
                site, cam, at, change.state, tuple(sorted(change.reasons)), previous[0],
                details if details is not None else self._details(state)))
        if decisions:
            path = self._snapshot_path(state)
            self.history.decisions(decisions, path if path.exists() else None)

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

    def _snapshot_path(self, state: CameraState) -> Path:
        return self.snapshot_path(state.site.id, state.camera.id)

    def _note_snapshot(self, state: CameraState) -> None:
        s = state.sample
        if s is None or s.snapshot_at is None or s.snapshot_at == state.snapshot_recorded:
            return
        state.snapshot_recorded = s.snapshot_at
        path = self._snapshot_path(state)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        self.history.snapshot((state.site.id, state.camera.id,
                               datetime.fromtimestamp(s.snapshot_at, UTC),
                               str(path.relative_to(self._config.node.data_dir)), size))

    # several nodes -----------------------------------------------------------------------
    # vigie.cluster decides which cameras this node holds (leases in PostgreSQL) and calls
    # `assign`; a lone node never does, and judges every camera from `start`.

    def _watches(self, key: str) -> bool:
        return self._judging is None or key in self._watched

    def _judges_key(self, key: str) -> bool:
        return self._judging is None or key in self._judging

    def _judges(self, site: str, camera: str) -> bool:
        """Whether this node still judges a camera (its alert decisions are written)."""
        return self._judges_key(f"{site}/{camera}")

    def watching(self, key: str) -> bool:
        """Whether this node watches the camera now (its frames are on this node's disk)."""
        return key in self.cameras and self._started and self._watches(key)

    def request_snapshot(self, key: str) -> bool:
        """Have a camera's next analysed keyframe written as its snapshot (within about
        `analyse_every`), whatever the snapshot period; False if it is not watched here."""
        if not self.watching(key):
            return False
        self._pool.send(self.cameras[key].worker, "snapshot", key)
        return True

    def snapshot_path(self, site: str, camera: str) -> Path:
        """Where a camera's latest snapshot is (replaced atomically by its worker)."""
        return self._snapshots / site / f"{camera}.jpg"

    def receiving(self, key: str) -> bool:
        """Whether packets of this camera's stream arrive here (a handover may complete)."""
        state = self.cameras.get(key)
        return (state is not None and state.sample is not None
                and state.sample.last_packet_at is not None and self._watches(key))

    def backlog(self) -> int:
        """History and alert writes waiting in memory."""
        return sum(self.history.pending().values())

    @property
    def backlog_limit(self) -> int:
        # Transitions beyond theirs wait on disk, samples beyond theirs are dropped.
        return MAX_TRANSITIONS + MAX_SAMPLES

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
        if self._judging is None or not self._started:
            return
        watch = {k for k in watch if k in self.cameras}
        judge = {k for k in judge if k in watch}
        now = time.time()
        for key in self._watched - watch:
            self._pool.send(self.cameras[key].worker, "remove", key)
            self._watched.discard(key)
        load = [0] * len(self._pool)
        for key in self._watched:
            load[self.cameras[key].worker] += 1
        for key in watch - self._watched:
            state = self.cameras[key]
            state.worker = min(range(len(load)), key=load.__getitem__)
            load[state.worker] += 1
            self._watched.add(key)
            state.watching_since = now
            reference = (references or {}).get(key)
            state.reference.known(reference)
            self._pool.send(state.worker, "add", self._spec(state, {} if reference is None else {
                (state.site.id, state.camera.id): reference}))
        for key in self._judging - judge:
            self._forget(self.cameras[key])
        for key in judge - self._judging:
            self._resume(self.cameras[key], (open_reasons or {}).get(key, ()))
            self._export_state(self.cameras[key])
        self._judging = judge
        self._metrics.cameras_watched.set(len(judge))

    async def carry_open_alerts(self) -> None:
        """For a node started while the database was away, once it answers: the alerts a
        previous run left open. A reason a camera does not show now resolves once the camera
        has been seen without it (as at a normal start); one it shows has raised its alert
        again, which folded into the open one."""
        judged = [k for k in self.cameras if self._judging is None or k in self._judging]
        async with self._store.connection() as conn:
            unresolved = await alerts_q.open_camera_reasons(conn, judged, CAMERA_REASONS)
        for key, reasons in unresolved.items():
            health = self.cameras[key].health
            health.carry(frozenset(reasons) - health.reasons)

    def _forget(self, state: CameraState) -> None:
        """Another node judges this camera now: start from nothing if it comes back, and
        leave its per-camera series to the node that holds it."""
        state.health = CameraHealth(bad_samples=state.checks.bad_samples,
                                    good_samples=state.checks.good_samples)
        state.sample = None
        state.judged_at = None
        state.reconnects_counted = 0
        state.gauges = {}
        site, cam = state.site.id, state.camera.id
        if self._alerts.storms is not None:  # its held raises are its new holder's to make
            self._alerts.storms.drop(site, cam)
        for gauge in (self._metrics.camera_up, self._metrics.camera_fps):
            with contextlib.suppress(KeyError):
                gauge.remove(site, cam)
        for name in _STATES:
            with contextlib.suppress(KeyError):
                self._metrics.camera_state.remove(site, cam, name)

    def _resume(self, state: CameraState, reasons: Collection[str]) -> None:
        """Judge a camera afresh, carrying the alerts its last judge (this node's previous
        run, or another node) left open: they resolve once the camera is seen without the
        fault, and are not raised again if it is still there (see `CameraHealth.carry`)."""
        state.health = CameraHealth(bad_samples=state.checks.bad_samples,
                                    good_samples=state.checks.good_samples)
        state.health.carry(frozenset(reasons))
        state.judged_at = None

    # for the API --------------------------------------------------------------------------

    def view(self, state: CameraState) -> dict[str, Any]:
        s = state.sample
        h = state.health

        def iso(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, UTC).isoformat() if t else None

        stale = s is not None and not self._pool.fresh(state.worker, time.monotonic())
        return {
            "id": state.camera.id, "site": state.site.id, "name": state.camera.name,
            "zone": state.camera.zone, "url": redact_url(state.camera.url.reveal()),
            "state": h.state, "reasons": [] if h.state == "unknown" else sorted(h.reasons),
            "since": h.since.isoformat() if h.since else None,
            "last_frame_at": iso(s.last_packet_at) if s else None,
            "last_analysed_at": iso(s.analysed_at) if s else None,
            "fps": s.fps if s else None, "width": s.width if s else None,
            "height": s.height if s else None, "codec": s.codec if s else None,
            "bitrate": s.bitrate if s else None, "reconnects": state.reconnects,
            "error": "camera worker not reporting" if stale else (s.error if s else None),
            # Its worker is late or restarting: state and figures are the last known ones.
            "stale": stale, "last_report_at": iso(s.at) if s else None,
            "reference": state.reference.view(s, state.checks.learn_for, receiving=(
                s is not None and s.connected and not stale and self._watches(state.key))),
        }


_OFFLINE = frozenset({"offline"})
