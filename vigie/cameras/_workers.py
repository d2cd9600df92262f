"""The node's camera worker processes: started, given their cameras, watched, restarted.

A worker reports every `report_every` seconds. One that has not reported for `LATE_AFTER` is
late: logged, flagged (vigie_camera_worker_up 0), and the supervisor stops judging its cameras
(see `CameraSupervisor`). One late for `HUNG_AFTER` is killed. A worker that dies, or was
killed, is started again and given its cameras back: at once the first time, then with a
growing delay while it keeps dying soon after starting (a stream that crashes FFmpeg must not
make the node spin on restarts).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from vigie.cameras._worker import worker_main
from vigie.metrics import Metrics

__all__ = ["CAMERAS_PER_WORKER", "HUNG_AFTER", "LATE_AFTER", "WorkerPool", "worker_count"]

log = logging.getLogger("vigie.cameras")

LATE_AFTER = 3.0  # seconds without a report (three missed): the worker is late
HUNG_AFTER = 15.0  # late this long: killed and restarted
START_GRACE = 20.0  # for the first report of a new worker (importing FFmpeg and OpenCV)
STABLE_AFTER = 60.0  # a worker that lived this long was no crash loop: no restart delay
MAX_RESTART_DELAY = 60.0
GAPS_KEPT = 5  # report intervals that make a worker's lag: its last five seconds
# Cameras a worker watches at most by default: the most measured in one worker (100 streams
# of 640×360 at 10 fps), where its CPU per camera was no higher than at 25 or 50 (see
# tests/bench/cameras.py). Beyond it a worker's threads and GIL are unmeasured ground, and a
# worker that crashes takes fewer cameras down with it; a worker costs ~40-60 MB (PSS) of
# its own, which 100 cameras share.
CAMERAS_PER_WORKER = 100
MAX_DEFAULT_WORKERS = 16


def worker_count(cameras: int, configured: int | None = None, cores: int | None = None
                 ) -> int:
    """Worker processes for `cameras`: `configured` if set (node.camera_workers), else one
    per core (up to 8), and more when that would give one over `CAMERAS_PER_WORKER`; never
    more workers than cameras."""
    if configured is None:
        per_core = min(cores or os.cpu_count() or 1, 8)
        wanted = min(max(per_core, math.ceil(cameras / CAMERAS_PER_WORKER)),
                     MAX_DEFAULT_WORKERS)
    else:
        wanted = configured
    return max(1, min(wanted, cameras))


@dataclass
class _Process:
    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    started: float = 0.0  # monotonic
    last_report: float | None = None  # monotonic, since it started
    late: bool = False
    kill_reason: str | None = None
    quick_deaths: int = 0
    restart_at: float | None = None  # monotonic, while dead
    restarting: bool = False
    # Intervals between its last reports: longer than `report_every` when it (or the node)
    # cannot keep up, and then its streams were not read on time either.
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=GAPS_KEPT))
    # The loop and a thread (sending a restarted worker its cameras) may both send.
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def fresh(self, now: float) -> bool:
        return (self.conn is not None and self.last_report is not None
                and now - self.last_report <= LATE_AFTER)


class WorkerPool:
    def __init__(self, size: int, report_every: float, metrics: Metrics,
                 on_message: Callable[[Any], None]) -> None:
        self._report_every = report_every
        self._metrics = metrics
        self._on_message = on_message
        self._ctx = multiprocessing.get_context("spawn")
        self._workers = [_Process(i) for i in range(size)]
        self._reaping: list[BaseProcess] = []

    def __len__(self) -> int:
        return len(self._workers)

    # starting, sending ---------------------------------------------------------------------

    def spawn(self, index: int) -> None:
        """Start worker `index` (again); the caller then sends it its cameras."""
        w = self._workers[index]
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=worker_main, args=(child, self._report_every),
                                    name=f"vigie-camera-worker-{index}", daemon=True)
        try:
            process.start()
        finally:
            child.close()
        w.process, w.conn = process, parent
        w.started, w.last_report, w.late, w.kill_reason = time.monotonic(), None, False, None
        w.gaps.clear()
        w.restart_at = None
        self._metrics.camera_worker_up.labels(str(index)).set(0)  # up at its first report
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable, index)

    def send(self, index: int, kind: str, arg: Any) -> bool:
        w = self._workers[index]
        if w.conn is None:
            return False
        try:
            with w.send_lock:
                w.conn.send((kind, arg))
        except OSError as exc:
            log.error("camera worker %d unreachable: %s", index, exc)
            return False
        return True

    async def send_many(self, index: int, messages: Sequence[tuple[str, Any]]) -> None:
        """Send from a thread: a worker's cameras with their references weigh megabytes,
        more than a pipe holds, and the worker reads them while it starts their threads."""
        w = self._workers[index]
        conn = w.conn
        if conn is None:
            return

        def send_all() -> None:
            with w.send_lock:
                for message in messages:
                    conn.send(message)

        try:
            await asyncio.to_thread(send_all)
        except OSError as exc:  # it died meanwhile: its restart sends them again
            log.error("camera worker %d unreachable: %s", index, exc)

    # watching ------------------------------------------------------------------------------

    def fresh(self, index: int, now: float) -> bool:
        """Whether worker `index` reported within LATE_AFTER (monotonic `now`)."""
        return self._workers[index].fresh(now)

    def lag(self, index: int) -> float:
        """How far behind its schedule worker `index` reported lately (seconds, ≥ 0)."""
        gaps = self._workers[index].gaps
        return max(0.0, max(gaps) - self._report_every) if gaps else 0.0

    def _readable(self, index: int) -> None:
        w = self._workers[index]
        conn = w.conn
        if conn is None:
            return
        first = w.last_report is None
        try:
            while conn.poll():
                message = conn.recv()
                now = time.monotonic()
                if message[0] == "samples":
                    if w.last_report is not None:
                        w.gaps.append(now - w.last_report)
                    w.last_report = now
                self._on_message(message)
        except (EOFError, OSError):
            self._died(w)
            return
        if w.late or (first and w.last_report is not None):
            if w.late:
                log.warning("camera worker %d reports again", index)
            w.late = False
            self._metrics.camera_worker_up.labels(str(index)).set(1)

    def _died(self, w: _Process) -> None:
        assert w.conn is not None and w.process is not None
        asyncio.get_running_loop().remove_reader(w.conn.fileno())
        w.conn.close()
        w.conn = None
        w.process.join(0)  # reaped now if it is already gone: its exit code for the log
        self._reaping.append(w.process)
        reason = w.kill_reason or "died"
        lived = time.monotonic() - w.started
        w.quick_deaths = 0 if lived >= STABLE_AFTER else w.quick_deaths + 1
        delay = 0.0 if w.quick_deaths <= 1 else min(2.0 ** (w.quick_deaths - 2),
                                                     MAX_RESTART_DELAY)
        w.restart_at = time.monotonic() + delay
        self._metrics.camera_worker_up.labels(str(w.index)).set(0)
        self._metrics.camera_worker_restarts.labels(reason).inc()
        code = w.process.exitcode
        log.error("camera worker %d %s after %.0f s%s; restarting it%s", w.index,
                  "was killed, hung" if w.kill_reason else "died", lived,
                  "" if code is None else f" (exit code {code})",
                  f" in {delay:.0f} s" if delay else "")

    def check(self, now: float) -> list[int]:
        """Flag late workers, kill hung ones, reap the dead; the workers due for a restart."""
        self._reaping = [p for p in self._reaping if not _reaped(p)]
        due = []
        for w in self._workers:
            if w.conn is None:
                if w.restart_at is not None and now >= w.restart_at and not w.restarting:
                    due.append(w.index)
                continue
            if w.conn.poll():  # reports waiting: the loop is behind, not the worker
                self._readable(w.index)
                if w.conn is None:
                    continue
            since = w.last_report if w.last_report is not None else w.started + START_GRACE
            silent = now - since
            if silent > LATE_AFTER and not w.late:
                w.late = True
                self._metrics.camera_worker_up.labels(str(w.index)).set(0)
                log.warning("camera worker %d has not reported for %.1f s: its cameras are "
                            "not judged until it does", w.index, silent)
            if silent > HUNG_AFTER and w.kill_reason is None and w.process is not None:
                w.kill_reason = "hung"
                log.error("camera worker %d silent for %.0f s: killing it", w.index, silent)
                w.process.kill()  # its pipe closes: `_died` restarts it
        return due

    def restarting(self, index: int, flag: bool) -> None:
        self._workers[index].restarting = flag

    def start_failed(self, index: int, exc: BaseException) -> None:
        w = self._workers[index]
        w.quick_deaths += 1
        w.restart_at = time.monotonic() + min(2.0 ** w.quick_deaths, MAX_RESTART_DELAY)
        log.error("camera worker %d cannot be started: %s", index, exc)

    def pid(self, index: int) -> int | None:
        process = self._workers[index].process
        return process.pid if process is not None and self._workers[index].conn else None

    async def stop(self, budget: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        for w in self._workers:
            if w.conn is not None:
                loop.remove_reader(w.conn.fileno())
                self.send(w.index, "stop", None)
        for w in self._workers:
            if w.process is not None and w.process.pid is not None:
                await asyncio.to_thread(w.process.join, budget)
                if w.process.is_alive():
                    w.process.kill()
                    await asyncio.to_thread(w.process.join, 1)
            if w.conn is not None:
                w.conn.close()
                w.conn = None
        for p in self._reaping:
            await asyncio.to_thread(p.join, 1)
        self._reaping.clear()


def _reaped(process: BaseProcess) -> bool:
    process.join(0)  # waitpid without waiting: no zombie left behind
    return process.exitcode is not None
