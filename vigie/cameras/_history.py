"""Camera history on its way to PostgreSQL: batched, retried, bounded, and never losing an event.

The supervisor judges cameras on the event loop and hands what must be stored to this writer,
which works in the background: each round writes everything waiting, one statement (or one
transaction) per kind, so 300 cameras changing at once cost a handful of round trips.

What may be lost and what may not:
- transitions (every change of a camera's state or reasons, with its measurements) and alert
  decisions (raise, resolve) are events: never dropped. Transitions beyond `max_transitions`
  waiting in memory go to a spool file under the data directory, and so do those still waiting
  when the node stops; the spool is written to the database first at the next chance.
  Decisions are few (hysteresis; repeats of an alert fold into one upsert).
- samples (one a minute per camera, for history and charts) are bounded: past `max_samples`
  waiting, the oldest is dropped and counted (vigie_camera_history_dropped_total{kind}).
- the latest snapshot and the learned reference of a camera are states: a newer one
  replaces the one waiting, so they are bounded by the number of cameras.
While the database is away, each round is retried with backoff and everything waits
(vigie_camera_history_queue{kind}). From the first round that fails, transitions and
decisions are kept on disk as well, as they come (`spool/camera-transitions.jsonl`,
`spool/camera-decisions.jsonl`): a node killed before the database returns loses neither,
and the next start writes them with their own times. (Written to the files, not fsynced: a
killed process loses nothing; a machine that loses power may lose the last of them.)
Decisions waiting for the database are applied in memory meanwhile (AlertService.announce,
with the alert id they will be stored with): a camera offline during an outage is an open
alert on the API and the live feed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigie.alerts import AlertChange, AlertService, Decision, Raise
from vigie.alerts._codec import decision_from_json, decision_to_json
from vigie.metrics import Metrics
from vigie.store import Store
from vigie.store import _alerts as alerts_q
from vigie.store import _cameras as cameras_q

__all__ = ["CameraHistory", "SampleRow", "SnapshotRow"]

log = logging.getLogger("vigie.cameras")

# (site, camera, at, state, reasons, fps, bitrate, measures)
SampleRow = tuple[str, str, datetime, str, list[str], float, float, dict[str, float] | None]
# (site, camera, taken_at, path relative to the data directory, bytes)
SnapshotRow = tuple[str, str, datetime, str, int]

MAX_SAMPLES = 20_000  # 5 minutes of samples of 4000 cameras
MAX_TRANSITIONS = 50_000  # about 25 MB of transitions in memory; the rest waits on disk
SPOOL_CHUNK = 5_000
MAX_BACKOFF = 5.0


class CameraHistory:
    def __init__(self, store: Store, alerts: AlertService, metrics: Metrics, data_dir: Path,
                 *, max_samples: int = MAX_SAMPLES, max_transitions: int = MAX_TRANSITIONS,
                 judged: Callable[[str, str], bool] | None = None) -> None:
        self._store = store
        self._alerts = alerts
        self._metrics = metrics
        self._data_dir = data_dir
        self._spool = data_dir / "spool" / "camera-transitions.jsonl"
        # Every decision waiting, while the database is away (and from a stop meanwhile).
        self._decisions_file = data_dir / "spool" / "camera-decisions.jsonl"
        self._spool_offset = 0  # bytes of the spool already taken into memory
        self._spooled = _count_lines(self._spool)  # transitions in the spool, not yet taken
        self._max_samples = max_samples
        self._max_transitions = max_transitions
        # Whether a camera is still judged by this node when its decisions are written
        # (several nodes): one handed over meanwhile is its new holder's to alert on.
        self._judged = judged
        self._transitions: deque[cameras_q.Transition] = deque()
        self._decisions: list[tuple[Decision, Path | None]] = _read_decisions(
            self._decisions_file)
        self._decisions_on_disk = bool(self._decisions)  # the file mirrors the list
        # Decisions at the head of `_decisions` already applied in memory (the database
        # being away: AlertService.announce), and whether some of them are not stored yet.
        self._announced = 0
        self._provisional = False
        # A round failed (the database is away): what comes is kept on disk as it comes.
        self._away = False
        self._unsaved = 0  # transitions at the end of `_transitions` that are not on disk
        self._attachments: deque[tuple[alerts_q.Alert, Path]] = deque()
        # The frame handed with each raise, by fingerprint, until its alert opens: now, or
        # seconds later when the storm guard held it (a camera offline waits for the rest
        # of its site). One per camera and reason at most.
        self._awaiting_open: dict[str, Path] = {}
        alerts.subscribe(self._opened_later)
        self._samples: deque[SampleRow] = deque()
        self._samples_dropped = 0
        self._snapshots: dict[tuple[str, str], SnapshotRow] = {}
        self._references: dict[tuple[str, str], tuple[datetime, bytes | None]] = {}
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()  # `flush` may be called while `run` writes
        self._failing_since: float | None = None

    # what the supervisor hands over (never blocks, never waits for the database) ---------

    def transition(self, t: cameras_q.Transition) -> None:
        if self._spooled or self._away or len(self._transitions) >= self._max_transitions:
            self._spill([t])  # once spilling, in order: the rest follows the spool
        else:
            self._transitions.append(t)
            self._unsaved += 1
        self._poke()

    def decisions(self, decisions: Sequence[Decision], snapshot: Path | None) -> None:
        """Alert decisions; `snapshot` (the camera's latest frame) goes to the alerts they
        open."""
        items = [(d, snapshot) for d in decisions]
        self._decisions.extend(items)
        if self._decisions_on_disk:
            with self._decisions_file.open("a", encoding="utf-8") as f:
                f.write("".join(_decision_line(d, snap) for d, snap in items))
        if self._failing_since is not None:
            self._announce_waiting()  # the database is away: shown now, stored later
        self._poke()

    def sample(self, row: SampleRow) -> None:
        if len(self._samples) >= self._max_samples:
            self._samples.popleft()
            self._samples_dropped += 1
            self._metrics.camera_history_dropped.labels("sample").inc()
        self._samples.append(row)
        self._poke()

    def snapshot(self, row: SnapshotRow) -> None:
        self._snapshots[(row[0], row[1])] = row
        self._poke()

    def reference(self, site: str, camera: str, at: datetime, data: bytes | None) -> None:
        """A learned reference to store, or None to forget it (relearn)."""
        self._references[(site, camera)] = (at, data)
        self._poke()

    def waiting_reference(self, site: str, camera: str) -> tuple[bool, bytes | None]:
        """(True, data) when a reference is waiting to be written: newer than the stored one."""
        waiting = self._references.get((site, camera))
        return (False, None) if waiting is None else (True, waiting[1])

    def pending(self) -> dict[str, int]:
        return {"transition": len(self._transitions) + self._spooled,
                "decision": len(self._decisions), "attachment": len(self._attachments),
                "sample": len(self._samples), "snapshot": len(self._snapshots),
                "reference": len(self._references)}

    def _poke(self) -> None:
        self._wake.set()  # while failing, `run` sleeps its backoff before it looks

    # writing -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what waits, as it comes; retry with backoff while the database is away."""
        delay = 0.2
        while True:
            if not self._has_work():
                await self._wake.wait()
            self._wake.clear()
            try:
                await self.write_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away or refused: all of it waits
                self._failed(exc)
                await self._keep_on_disk()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            else:
                delay = 0.2
                self._recovered()
            self._export()

    async def flush(self, budget: float = 10.0) -> bool:
        """Write everything waiting, retrying within `budget` seconds; True when all of it
        was written."""
        deadline = time.monotonic() + budget
        delay = 0.2
        while self._has_work() and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.write_round(),
                                       max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # away, refused or too slow: retry within the budget
                self._failed(exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, MAX_BACKOFF)
            else:
                self._recovered()
        self._export()
        return not self._has_work()

    async def close(self, budget: float = 10.0) -> bool:
        """At stop: flush within `budget`; transitions the database did not take go to the
        spool (written at the next start), the rest is given up, counted and logged."""
        if await self.flush(budget):
            return True
        await self._keep_on_disk()
        lost = {k: n for k, n in self.pending().items()
                if n and k not in ("transition", "decision")}
        log.error("camera history not written at stop: %s given up; transitions and alert "
                  "decisions kept in %s", lost or "nothing", self._spool.parent)
        for kind, n in lost.items():
            if kind == "sample":
                self._metrics.camera_history_dropped.labels(kind).inc(n)
        return False

    def _has_work(self) -> bool:
        return bool(self._transitions or self._decisions or self._attachments or self._samples
                    or self._snapshots or self._references or self._spooled)

    async def write_round(self) -> None:
        """One batch of each kind. Each leaves the queue only once committed."""
        async with self._writing:
            await self._write_round()

    async def _write_round(self) -> None:
        await self._write_transitions()
        await self._write_decisions()
        while self._attachments:
            alert, snapshot = self._attachments[0]
            await self._attach(alert, snapshot)
            self._attachments.popleft()
        await self._write_samples()
        await self._write_states()

    async def _write_transitions(self) -> None:
        if not self._transitions and self._spooled:
            self._unspool()
        if not self._transitions:
            return
        batch = list(self._transitions)[:SPOOL_CHUNK]
        async with self._store.transaction() as conn:
            await cameras_q.insert_transitions(conn, batch)
        for _ in batch:
            self._transitions.popleft()
        self._unsaved = min(self._unsaved, len(self._transitions))
        if not self._transitions and self._spool_offset and not self._spooled:
            self._spool.unlink(missing_ok=True)  # all of it is in the database now
            self._spool_offset = 0

    async def _write_decisions(self) -> None:
        if not self._decisions:
            return
        waiting = self._decisions[:]
        chosen = [(d, snapshot) for d, snapshot in waiting if self._ours(d)]
        # Before the call: the storm guard may open a raise it held while the call runs.
        for d, snapshot in chosen:
            if isinstance(d, Raise) and snapshot is not None:
                self._awaiting_open[_fingerprint(d)] = snapshot
            else:  # resolved (a held raise cancelled): nothing will open
                self._awaiting_open.pop(_fingerprint(d), None)
        decisions = [d for d, _ in chosen]
        if decisions:
            await self._alerts.raise_now(decisions)  # what opens is attached: _opened_later
        del self._decisions[:len(waiting)]
        self._announced = max(0, self._announced - len(waiting))
        if self._provisional and not self._announced:
            # All that was shown from memory is stored (or, handed over to another node
            # meanwhile, not ours to store): the database is the truth of those alerts again.
            self._alerts.forget_provisional(cameras=True)
            self._provisional = False
        if self._decisions_on_disk:  # what came meanwhile stays there
            self._rewrite_decisions()
            self._decisions_on_disk = bool(self._decisions)

    def _opened_later(self, change: AlertChange) -> None:
        """A camera alert opened (by the call that raised it, or seconds later by the storm
        guard): the frame handed with its raise goes to it. A repeat opens nothing."""
        if change.action not in ("opened", "repeated") or change.alert.source_type != "camera":
            return
        snapshot = self._awaiting_open.pop(change.alert.fingerprint, None)
        if snapshot is not None and change.action == "opened":
            self._attachments.append((change.alert, snapshot))
            self._poke()

    async def _write_samples(self) -> None:
        if not self._samples:
            return
        rows = list(self._samples)
        dropped = self._samples_dropped
        async with self._store.connection() as conn:
            await cameras_q.insert_samples(conn, rows)
        # Those dropped meanwhile were the oldest, so among these: fewer left to take out.
        for _ in range(len(rows) - (self._samples_dropped - dropped)):
            self._samples.popleft()

    async def _write_states(self) -> None:
        """Latest snapshots and references: what replaced them meanwhile stays to write."""
        if self._snapshots:
            snapshots = dict(self._snapshots)
            async with self._store.connection() as conn:
                await cameras_q.record_latest_snapshots(conn, list(snapshots.values()))
            for key, row in snapshots.items():
                if self._snapshots.get(key) is row:
                    del self._snapshots[key]
        if self._references:
            references = dict(self._references)
            async with self._store.transaction() as conn:
                for (site, camera), (at, data) in references.items():
                    await cameras_q.save_reference(conn, site, camera, at, data)
            for key, value in references.items():
                if self._references.get(key) is value:
                    del self._references[key]

    async def _attach(self, alert: alerts_q.Alert, snapshot: Path) -> None:
        """Keep a copy of the camera's latest frame and attach it to the alert it opened."""
        try:
            taken, kept, size = await asyncio.to_thread(_keep_copy, snapshot, alert.source)
        except OSError as exc:  # no frame on disk (yet, or any more): nothing to attach
            log.warning("no snapshot for the alert of %s/%s: %s", alert.site, alert.source,
                        exc)
            return
        relative = str(kept.relative_to(self._data_dir))
        async with self._store.transaction() as conn:
            snapshot_id = await cameras_q.keep_snapshot(
                conn, alert.site, alert.source, taken, relative, size)
            await alerts_q.attach_snapshot(conn, alert.id, {
                "id": snapshot_id, "camera": alert.source, "taken_at": taken.isoformat(),
                "url": f"/api/v1/snapshots/{snapshot_id}"})

    def _ours(self, d: Decision) -> bool:
        """Its camera is still judged by this node (one handed over meanwhile is its new
        holder's to alert on)."""
        return self._judged is None or self._judged(*_camera(d))

    def _announce_waiting(self) -> None:
        """Apply the decisions waiting, not yet applied in memory, to the alerts the node
        shows (API, live feed): a camera that goes offline while PostgreSQL is away is an
        open alert at once, not when the database returns."""
        fresh = [d for d, _ in self._decisions[self._announced:] if self._ours(d)]
        self._announced = len(self._decisions)
        if fresh:
            self._alerts.announce(fresh)
            self._provisional = True

    def _failed(self, exc: BaseException) -> None:
        self._metrics.db_errors.labels("camera_history").inc()
        self._announce_waiting()
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("camera history cannot be written, retrying: %s",
                        str(exc) or type(exc).__name__)

    def _recovered(self) -> None:
        self._away = False
        if self._failing_since is not None:
            log.info("camera history written again after %.0f s",
                     time.monotonic() - self._failing_since)
            self._failing_since = None

    def _export(self) -> None:
        for kind, n in self.pending().items():
            self._metrics.camera_history_queue.labels(kind).set(n)

    # the spool: transitions that do not fit in memory, or were not written at stop -------

    async def _keep_on_disk(self) -> None:
        """The database is away (or refused): transitions and decisions waiting in memory go
        to disk, and those that come next go straight there, until they are written."""
        async with self._writing:
            self._away = True
            if self._unsaved:
                self._spill_front()  # then `_spooled`: the next ones follow in the file
            if not self._decisions_on_disk:
                self._rewrite_decisions()
                self._decisions_on_disk = True

    def _rewrite_decisions(self) -> None:
        if not self._decisions:
            self._decisions_file.unlink(missing_ok=True)
            return
        self._decisions_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._decisions_file.with_suffix(".tmp")
        tmp.write_text("".join(_decision_line(d, snap) for d, snap in self._decisions),
                       encoding="utf-8")
        tmp.replace(self._decisions_file)

    def _spill(self, items: Sequence[cameras_q.Transition]) -> None:
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        with self._spool.open("a", encoding="utf-8") as f:
            f.write("".join(_line(t) for t in items))
        self._spooled += len(items)

    def _spill_front(self) -> None:
        """Put what is in memory before what is in the spool (a stop with the database
        away): the spool is rewritten, memory first."""
        rest = self._spool.read_bytes()[self._spool_offset:] if self._spool.exists() else b""
        tmp = self._spool.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write("".join(_line(t) for t in self._transitions).encode())
            f.write(rest)
        tmp.replace(self._spool)
        self._spooled += len(self._transitions)
        self._transitions.clear()
        self._spool_offset = 0
        self._unsaved = 0

    def _unspool(self) -> None:
        """Take the next chunk of the spool into memory (its lines stay in the file until
        all of it is written: a crash meanwhile writes some twice, but loses none)."""
        with self._spool.open("rb") as f:
            f.seek(self._spool_offset)
            for _ in range(SPOOL_CHUNK):
                line = f.readline()
                if not line:
                    self._spooled = 0  # counted lines that a crash cut: none left
                    break
                self._spool_offset += len(line)
                self._spooled = max(0, self._spooled - 1)
                try:
                    self._transitions.append(_transition_from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("unreadable line in %s skipped: %s", self._spool, exc)


def _decision_line(d: Decision, snapshot: Path | None) -> str:
    raw = {**decision_to_json(d), "snapshot": str(snapshot) if snapshot else None}
    return json.dumps(raw, separators=(",", ":")) + "\n"


def _read_decisions(path: Path) -> list[tuple[Decision, Path | None]]:
    """Decisions a previous run kept (it stopped, or was killed, with the database away)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found: list[tuple[Decision, Path | None]] = []
    for line in lines:
        try:
            raw = json.loads(line)
            found.append((decision_from_json(raw),
                          Path(raw["snapshot"]) if raw.get("snapshot") else None))
        except (ValueError, KeyError, TypeError) as exc:  # a line a kill cut short
            log.error("unreadable line in %s skipped: %s", path, exc)
    if found:
        log.info("%d camera alert decision(s) from before the restart, to be written",
                 len(found))
    return found


def _camera(d: Decision) -> tuple[str, str]:
    """(site, camera) of a camera alert decision (fingerprint site/camera/kind)."""
    site, camera, _ = _fingerprint(d).split("/", 2)
    return site, camera


def _fingerprint(d: Decision) -> str:
    return d.occurrence.fingerprint if isinstance(d, Raise) else d.fingerprint


def _line(t: cameras_q.Transition) -> str:
    raw = {"site": t.site, "camera": t.camera, **t.to_json()}
    return json.dumps(raw, separators=(",", ":")) + "\n"


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _transition_from_json(raw: dict[str, Any]) -> cameras_q.Transition:
    return cameras_q.Transition(
        site=str(raw["site"]), camera=str(raw["camera"]),
        at=datetime.fromisoformat(raw["at"]).astimezone(UTC), state=str(raw["state"]),
        reasons=tuple(raw["reasons"]), previous=raw.get("previous"),
        details=dict(raw.get("details") or {}))


def _keep_copy(snapshot: Path, camera: str) -> tuple[datetime, Path, int]:
    """Copy the latest frame beside it, named by its time; (taken_at, copy, size)."""
    taken = datetime.fromtimestamp(snapshot.stat().st_mtime, UTC)
    kept = snapshot.parent / camera / f"{taken:%Y%m%dT%H%M%S.%f}.jpg"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(snapshot, kept)
    return taken, kept, kept.stat().st_size

