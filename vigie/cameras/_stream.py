"""Watching one camera's RTSP stream: runs in a thread of a camera worker process.

Every packet is counted (liveness, frame rate, bitrate); only a keyframe is decoded, and
only every `analyse_every` seconds, for the picture checks. PyAV releases the GIL while it
reads and decodes, so one worker process watches many cameras with a thread each; the
keyframes they pick are decoded and checked by one thread of the worker (`Analyses`).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from vigie.cameras._analysis import Analyser
from vigie.config import CameraChecks
from vigie.secrets import redact_text

__all__ = ["Analyses", "CameraSpec", "StreamStats", "StreamWatcher"]

log = logging.getLogger("vigie.cameras")

CONNECT_TIMEOUT = 5.0
MAX_BACKOFF = 30.0
# Keyframes waiting for the analysis thread beyond which a camera's turn is skipped (it
# submits its next keyframe): the analysis of a stalled worker must not hold a growing pile
# of pictures. A keyframe waits in its packet (tens of kB at 640×360).
MAX_WAITING = 64


@dataclass(frozen=True, slots=True)
class CameraSpec:
    """What a worker needs to watch a camera (the URL with its credentials stays here)."""

    key: str  # site/camera
    url: str
    transport: str
    checks: CameraChecks
    snapshot_path: Path | None = None
    reference: bytes | None = None


@dataclass
class StreamStats:
    """Facts about a stream, read by the worker's reporter thread (plain attributes: a
    stale read by one report is harmless)."""

    connected: bool = False
    last_packet_at: float | None = None
    width: int = 0
    height: int = 0
    codec: str = ""
    reconnects: int = 0
    error: str | None = None
    # Packets of the last `fps_window` only (pruned as they come): the rates are computed
    # every second, and a long history cost CPU and memory for nothing.
    arrivals: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    receiving_since: float | None = None  # first packet of the current connection

    def arrived(self, now: float, size: int, window: float) -> None:
        arrivals = self.arrivals
        arrivals.append((now, size))
        while arrivals and now - arrivals[0][0] > window:
            arrivals.popleft()
        if self.receiving_since is None:
            self.receiving_since = now

    def rates(self, now: float, window: float) -> tuple[float, float]:
        """Frames per second and bits per second over the last `window` seconds."""
        recent = [(t, n) for t, n in list(self.arrivals) if now - t <= window]
        if len(recent) < 2:
            return 0.0, 0.0
        span = max(now - recent[0][0], 1e-3)
        return len(recent) / span, sum(n for _, n in recent) * 8 / span


class Analyses:
    """The thread of a worker that decodes and checks the keyframes its cameras submit.

    One thread, not each camera's own: decoding a keyframe allocates and frees about 1.5 MB
    (a decoder, its picture pool, the checks' arrays). Done in a hundred camera threads, those
    blocks land in every glibc arena the threads use, and each arena keeps the space of the
    decodes that happened to overlap in it; done in one thread, each decode reuses the blocks
    the previous one freed. The decodes of a worker's cameras took turns on the GIL for their
    checks anyway, and take about a millisecond each, every `analyse_every` seconds.
    """

    def __init__(self) -> None:
        # (watcher, codec, extradata, packet, time); a packet None: the camera reconnected.
        self._queue: queue.SimpleQueue[tuple[StreamWatcher, Any, bytes | None, Any, float]
                                       | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="analyses", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def submit(self, watcher: StreamWatcher, codec: Any, extradata: bytes | None,
               packet: Any, now: float) -> bool:
        """Queue a keyframe; False when too many wait (the camera submits its next one)."""
        if self._queue.qsize() >= MAX_WAITING:
            return False
        self._queue.put((watcher, codec, extradata, packet, now))
        return True

    def reconnected(self, watcher: StreamWatcher) -> None:
        """In the queue's order: the keyframes of the previous connection come before."""
        self._queue.put((watcher, None, None, None, 0.0))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            watcher, codec, extradata, packet, now = item
            if packet is None:
                watcher.analyser.reconnected()
                continue
            try:
                watcher.analyse(codec, extradata, packet, now)
            except Exception as exc:  # one camera's bad keyframe must not stop the others
                watcher.stats.error = redact_text(f"{type(exc).__name__}: {exc}")[:300]


class StreamWatcher:
    def __init__(self, spec: CameraSpec, analyses: Analyses | None = None) -> None:
        """`analyses`: the worker's analysis thread; without it, the camera's own thread
        decodes and checks its keyframes."""
        self.spec = spec
        self.stats = StreamStats()
        self.analyses = analyses
        self.analyser = Analyser(spec.checks, spec.reference)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"cam:{spec.key}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to stop. It notices after its next packet, or when the read times
        out: closing the container from here, while FFmpeg reads it, would be unsafe."""
        self._stop.set()

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._watch()
                if self.spec.url.startswith("file://"):
                    continue  # the end of a replayed file: loop, it is no reconnection
            except Exception as exc:  # every failure of a stream is a reason to reconnect
                self.stats.error = redact_text(f"{type(exc).__name__}: {exc}")[:300]
            self.stats.connected = False
            if self._stop.is_set():
                return
            self.stats.reconnects += 1
            if time.monotonic() - started > 60:
                delay = 1.0
            # Jitter: cameras of a site that dropped together do not all come back together.
            self._stop.wait(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, MAX_BACKOFF)

    def _open(self) -> Any:
        if self.spec.url.startswith("file://"):
            return av.open(self.spec.url.removeprefix("file://"))
        read_timeout = max(self.spec.checks.offline_after, 1.0)
        options = {
            "rtsp_transport": self.spec.transport,
            # Socket-level timeout (µs) of every read, TCP and UDP alike: a camera that
            # accepts the connection and then says nothing cannot hang this thread.
            "timeout": str(int(read_timeout * 1_000_000)),
            "analyzeduration": "1000000",
            "probesize": "500000",
            "fflags": "nobuffer",
        }
        # PyAV's own timeout for the opening only (the handshake and the probe as a whole, a
        # server that trickles bytes included), none for the reads, which the socket timeout
        # above bounds: PyAV's interrupt callback takes the GIL at every check FFmpeg makes
        # while it reads, several per RTP packet, hundreds a second per stream, each one a
        # GIL hand-over between the tens of camera threads of a worker. With no read timeout
        # set, the callback returns before taking the GIL.
        return av.open(self.spec.url, options=options, timeout=(CONNECT_TIMEOUT, None))

    def _watch(self) -> None:
        container = self._open()
        try:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            self.stats.codec = ctx.name
            self.stats.width, self.stats.height = ctx.width, ctx.height
            if not self.stats.connected:  # a replayed file's loop is no new connection
                if self.analyses is None:
                    self.analyser.reconnected()
                else:
                    self.analyses.reconnected(self)
                self.stats.receiving_since = None
                self.stats.arrivals.clear()
            self.stats.connected, self.stats.error = True, None
            next_analysis = 0.0
            packets = container.demux(stream)
            if self.spec.url.startswith("file://"):
                packets = _paced(packets, stream, self._stop)
            for packet in packets:
                if self._stop.is_set():
                    return
                if packet.size == 0:
                    continue
                now = time.time()
                self.stats.last_packet_at = now
                self.stats.arrived(now, packet.size, self.spec.checks.fps_window)
                if packet.is_keyframe and now >= next_analysis:
                    # 0.9: a keyframe a few ms early must not be skipped (which would analyse
                    # every other keyframe when analyse_every equals the keyframe interval).
                    next_analysis = now + 0.9 * self.spec.checks.analyse_every
                    if self.analyses is None:
                        self.analyse(ctx.codec, ctx.extradata, packet, now)
                    elif not self.analyses.submit(self, ctx.codec, ctx.extradata, packet, now):
                        next_analysis = 0.0
        finally:
            container.close()

    def analyse(self, codec: Any, extradata: bytes | None, packet: Any, now: float) -> None:
        """Decode a keyframe and check it (in the analysis thread, or the camera's own)."""
        for frame in _decode_keyframe(codec, extradata, packet):
            self.stats.width, self.stats.height = frame.width, frame.height
            luma, limited = _luma(frame)
            self.analyser.analyse(luma, now, limited_range=limited)
            if self.spec.snapshot_path is not None and self.analyser.snapshot_due(now):
                self.analyser.write_snapshot(frame, self.spec.snapshot_path)


def _decode_keyframe(codec: Any, extradata: bytes | None, packet: Any) -> list[Any]:
    """Decode one keyframe with a decoder of its own, freed at once.

    An open decoder holds its frame pool and scratch buffers (about 1.5 MB at 640×360) for
    as long as it lives; a camera needs one for a few milliseconds every `analyse_every`
    seconds, so hundreds of cameras would keep hundreds of idle decoders. A keyframe needs
    no previous picture, and the stream's parameter sets (extradata, and usually repeated in
    band) are all it needs. The stream's own codec context is never opened.
    """
    decoder = av.CodecContext.create(codec, "r")
    decoder.extradata = extradata
    decoder.thread_count = 1  # a thread pool per analysis would cost more than the decode
    decoder.skip_frame = "NONKEY"  # a packet mislabelled as a keyframe decodes to nothing
    # The flush (None) returns a frame the decoder held back for reordering.
    return [*decoder.decode(packet), *decoder.decode(None)]


def _luma(frame: Any) -> tuple[np.ndarray, bool]:
    """The Y plane as a 2-D array without a colour conversion, and whether it is in limited
    range (black at 16, as most cameras send; `yuvj` formats and full-range streams are not).
    """
    name = frame.format.name
    if name.startswith(("yuv", "nv")) and "p10" not in name and "p12" not in name:
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
        full = name.startswith("yuvj") or int(getattr(frame, "color_range", 0) or 0) == 2
        limited = not full  # AVCOL_RANGE_JPEG (2) is full range
        return rows[:, : frame.width], limited
    return frame.to_ndarray(format="gray"), False


def _paced(packets: Iterator[Any], stream: Any, stop: threading.Event) -> Iterator[Any]:
    """A file's packets at the pace of their timestamps, as a camera would send them; the
    caller reopens the file at its end (a loop). For demos and tests without a server."""
    start = time.monotonic()
    first: float | None = None
    for packet in packets:
        if packet.pts is not None and stream.time_base is not None:
            t = float(packet.pts * stream.time_base)
            first = t if first is None else first
            delay = start + (t - first) - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
        yield packet
