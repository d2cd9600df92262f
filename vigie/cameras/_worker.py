"""A camera worker process: watches many cameras (a thread each) and reports samples.

The node starts a few of these (about one per core): decoding and image checks stay off the
event loop and out of its GIL. Messages to the worker: ("add", CameraSpec), ("remove", key),
("relearn", key), ("stop", None). From the worker: ("samples", [Sample, ...]) every
`report_every` seconds, and ("reference", key, bytes) when a reference is learned.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from vigie.cameras._malloc import release_free_memory
from vigie.cameras._stream import CameraSpec, StreamWatcher
from vigie.logs import setup_logging

__all__ = ["Sample", "worker_main"]

log = logging.getLogger("vigie.cameras")

# Free pages of the allocator's arenas go back to the system this often (see _malloc): every
# analysis frees a picture, a decoder and the checks' temporaries into its thread's arena.
TRIM_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One camera at one moment, as its worker sees it."""

    key: str
    at: float
    connected: bool
    last_packet_at: float | None
    fps: float
    bitrate: float
    width: int
    height: int
    codec: str
    reconnects: int
    reasons: frozenset[str]  # picture checks, frozen and low_fps (offline is the node's call)
    measures: dict[str, float] | None
    analysed_at: float | None
    check_seconds: float | None
    snapshot_at: float | None
    error: str | None
    # While the reference is being learned: (seconds of good picture, good frames, 0..1).
    learning: tuple[float, int, float] | None = None


def _sample(w: StreamWatcher, now: float) -> Sample:
    fps, bitrate = w.stats.rates(now, w.spec.checks.fps_window)
    a = w.analyser
    reasons = set(a.reasons) if w.stats.connected else set()
    since = w.stats.receiving_since
    warmed_up = since is not None and now - since >= w.spec.checks.fps_window
    if (w.stats.connected and warmed_up and fps < w.spec.checks.min_fps
            and "low_fps" not in w.spec.checks.disabled):
        reasons.add("low_fps")
    return Sample(
        key=w.spec.key, at=now, connected=w.stats.connected,
        last_packet_at=w.stats.last_packet_at, fps=round(fps, 2), bitrate=round(bitrate),
        width=w.stats.width, height=w.stats.height, codec=w.stats.codec,
        reconnects=w.stats.reconnects, reasons=frozenset(reasons), measures=a.measures,
        analysed_at=a.analysed_at, check_seconds=a.check_seconds, snapshot_at=a.snapshot_at,
        error=w.stats.error, learning=a.learning,
    )


class _Worker:
    def __init__(self, conn: Connection, report_every: float) -> None:
        self.conn = conn
        self.report_every = report_every
        self.watchers: dict[str, StreamWatcher] = {}
        self.lock = threading.Lock()  # the reporter sends while the main thread receives
        self.done = threading.Event()

    def send(self, message: Any) -> None:
        with self.lock:
            self.conn.send(message)

    def report_forever(self) -> None:
        trimmed = time.monotonic()
        while not self.done.wait(self.report_every):
            now = time.time()
            watchers = list(self.watchers.values())
            try:
                self.send(("samples", [_sample(w, now) for w in watchers]))
                for w in watchers:
                    learned = w.analyser.take_learned_reference()
                    if learned is not None:
                        self.send(("reference", w.spec.key, learned))
            except (OSError, EOFError):  # the node is gone
                self.done.set()
            if time.monotonic() - trimmed >= TRIM_EVERY:  # after the report: never delays it
                trimmed = time.monotonic()
                release_free_memory()

    def handle(self, kind: str, arg: Any) -> None:
        if kind == "add":
            spec: CameraSpec = arg
            self._drop(spec.key)
            watcher = StreamWatcher(spec)
            self.watchers[spec.key] = watcher
            watcher.start()
        elif kind == "remove":
            self._drop(arg)
        elif kind == "relearn" and arg in self.watchers:
            self.watchers[arg].analyser.relearn()
        elif kind == "snapshot" and arg in self.watchers:  # at the next analysed keyframe
            self.watchers[arg].analyser.snapshot_wanted = True
        elif kind == "stop":
            self.done.set()

    def _drop(self, key: str) -> None:
        if key in self.watchers:
            self.watchers.pop(key).stop()

    def run(self) -> None:
        reporter = threading.Thread(target=self.report_forever, name="reporter", daemon=True)
        reporter.start()
        try:
            while not self.done.is_set():
                try:
                    kind, arg = self.conn.recv()
                except (EOFError, OSError):
                    break  # the node is gone: so are we
                self.handle(kind, arg)
        finally:
            self.done.set()
            for w in self.watchers.values():
                w.stop()
            for w in self.watchers.values():
                w.thread.join(timeout=2)


def worker_main(conn: Connection, report_every: float) -> None:
    """Entry point of a worker process."""
    # The node handles SIGINT/SIGTERM and stops us through the pipe; a Ctrl-C in a terminal
    # reaches the whole process group, and must not kill workers mid-report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Redacted like the node's own logs: stream errors may quote a camera's URL.
    setup_logging("warning", "human", prefix="worker ")
    _Worker(conn, report_every).run()
