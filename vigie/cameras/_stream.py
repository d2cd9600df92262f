"""Watching one camera's RTSP stream: runs in a thread of a camera worker process.

Every packet is counted (liveness, frame rate, bitrate); only a keyframe is decoded, and
only every `analyse_every` seconds, for the picture checks. PyAV releases the GIL while it
reads and decodes, so one worker process watches many cameras with a thread each.
"""

from __future__ import annotations

import logging
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

__all__ = ["CameraSpec", "StreamStats", "StreamWatcher"]

log = logging.getLogger("vigie.cameras")

CONNECT_TIMEOUT = 5.0
MAX_BACKOFF = 30.0


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


class StreamWatcher:
    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.stats = StreamStats()
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
            # Socket-level timeout (µs), and PyAV's interrupt callback below: a camera that
            # accepts the connection and then says nothing cannot hang this thread.
            "timeout": str(int(read_timeout * 1_000_000)),
            "analyzeduration": "1000000",
            "probesize": "500000",
            "fflags": "nobuffer",
        }
        return av.open(self.spec.url, options=options, timeout=(CONNECT_TIMEOUT, read_timeout))

    def _watch(self) -> None:
        container = self._open()
        try:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            self.stats.codec = ctx.name
            self.stats.width, self.stats.height = ctx.width, ctx.height
            if not self.stats.connected:  # a replayed file's loop is no new connection
                self.analyser.reconnected()
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
                    self._analyse(ctx, packet, now)
        finally:
            container.close()

    def _analyse(self, stream_ctx: Any, packet: Any, now: float) -> None:
        for frame in _decode_keyframe(stream_ctx, packet):
            self.stats.width, self.stats.height = frame.width, frame.height
            luma, limited = _luma(frame)
            self.analyser.analyse(luma, now, limited_range=limited)
            if self.spec.snapshot_path is not None and self.analyser.snapshot_due(now):
                self.analyser.write_snapshot(frame, self.spec.snapshot_path)


def _decode_keyframe(stream_ctx: Any, packet: Any) -> list[Any]:
    """Decode one keyframe with a decoder of its own, freed at once.

    An open decoder holds its frame pool and scratch buffers (about 1.5 MB at 640×360) for
    as long as it lives; a camera needs one for a few milliseconds every `analyse_every`
    seconds, so hundreds of cameras would keep hundreds of idle decoders. A keyframe needs
    no previous picture, and the stream's parameter sets (extradata, and usually repeated in
    band) are all it needs. The stream's own codec context is never opened.
    """
    decoder = av.CodecContext.create(stream_ctx.codec, "r")
    decoder.extradata = stream_ctx.extradata
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
