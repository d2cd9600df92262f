"""Capacity of the RTSP test server: N concurrent readers of one pre-encoded clip.

    .venv/bin/python tests/bench/rtsp_capacity.py [--readers 100] [--duration 30]
                                                  [--client ffmpeg|pyav] [--decode]
                                                  [--live-readers 0]

The server (tests/cameras/rtsp_server.py, under the system python3) serves the cached test
clip (640×360, 10 fps, a keyframe every 10 frames, no encoder in the server) at one mount,
one media per client. N readers connect over RTSP/TCP, ramping up 25 per second:

    ffmpeg  `ffmpeg -rtsp_transport tcp -i URL -c copy -f null -` subprocesses (`--decode`:
            decode too, as `-f null -` alone does; that costs the readers far more than the
            server and can starve it on a small machine)
    pyav    one thread per reader in this process, demuxing packets (decoding with --decode)

Once every reader receives, the server's own CPU time is sampled over `duration` seconds.
Printed: the server's idle CPU over the same length before any reader (the baseline), its CPU
with N readers as a share of one core, the same per reader, the frame rate each reader saw
(min / median), its client count and memory, and whether it is still alive and answering at
the end. `--live-readers K` then measures K readers of a live (per-client encoded) camera, the
cost the fault tests pay.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.cameras import clips  # noqa: E402
from tests.cameras.harness import RtspServer  # noqa: E402

RAMP_PER_SECOND = 25
SETTLE_SECONDS = 5.0


class FfmpegReader:
    def __init__(self, url: str, progress: Path, decode: bool) -> None:
        self.progress = progress
        self.log = progress.with_suffix(".log")
        codec = [] if decode else ["-c", "copy"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-progress", str(progress),
                 "-stats_period", "0.5", "-rtsp_transport", "tcp", "-timeout", "5000000",
                 "-i", url, *codec, "-f", "null", "-"],
                stdout=subprocess.DEVNULL, stderr=log)

    def frames(self) -> int:
        """Frames (packets with -c copy) written so far, from ffmpeg's progress file."""
        try:
            lines = self.progress.read_text().splitlines()
        except OSError:
            return 0
        counts = [int(line[6:]) for line in lines if line.startswith("frame=")]
        return counts[-1] if counts else 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {self.proc.returncode}"

    def stop(self) -> None:
        self.proc.terminate()

    def wait(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PyavReader:
    def __init__(self, url: str, decode: bool) -> None:
        self.url = url
        self.decode = decode
        self.count = 0
        self.error: Exception | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        options = {"rtsp_transport": "tcp", "timeout": "5000000",
                   "analyzeduration": "0", "probesize": "32"}
        try:
            with av.open(self.url, options=options) as container:
                for packet in container.demux(video=0):
                    if self.decode:
                        packet.decode()
                    self.count += 1
                    if self.stopping.is_set():
                        return
        except Exception as exc:  # a reader's failure is a result, reported at the end
            self.error = exc

    def frames(self) -> int:
        return self.count

    def alive(self) -> bool:
        return self.thread.is_alive()

    def failure(self) -> str:
        return repr(self.error)

    def stop(self) -> None:
        self.stopping.set()

    def wait(self) -> None:
        self.thread.join(10)


Reader = FfmpegReader | PyavReader


def start_readers(url: str, n: int, args: argparse.Namespace, workdir: Path) -> list[Reader]:
    readers: list[Reader] = []
    for i in range(n):
        if args.client == "ffmpeg":
            readers.append(FfmpegReader(url, workdir / f"progress-{i}.txt", args.decode))
        else:
            readers.append(PyavReader(url, args.decode))
        time.sleep(1 / RAMP_PER_SECOND)
    return readers


def wait_all_receiving(readers: list[Reader], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.frames() > 0 for r in readers):
            # A reader's first seconds are a burst (ffmpeg probes ~3 s of stream, then catches
            # up): let that pass before measuring.
            time.sleep(SETTLE_SECONDS)
            return
        time.sleep(0.5)
    late = sum(r.frames() == 0 for r in readers)
    print(f"  warning: {late} readers received nothing after {timeout:.0f}s")


def measure(server: RtspServer, readers: list[Reader], duration: float) -> dict[str, float]:
    frames0 = [r.frames() for r in readers]
    cpu0, t0 = server.status()["cpu_seconds"], time.monotonic()
    time.sleep(duration)
    status = server.status()
    cpu1, t1 = status["cpu_seconds"], time.monotonic()
    rates = [(r.frames() - f0) / (t1 - t0) for r, f0 in zip(readers, frames0, strict=True)]
    return {"cpu": (cpu1 - cpu0) / (t1 - t0), "fps_min": min(rates) if rates else 0.0,
            "fps_median": statistics.median(rates) if rates else 0.0,
            "clients": status["clients"], "rss_mb": status["max_rss_kb"] / 1024}


def stop_readers(readers: list[Reader]) -> int:
    """Stop them all; how many had died on their own before (and why)."""
    failures = Counter(r.failure() for r in readers if not r.alive())
    for failure, count in failures.most_common(5):
        print(f"    {count} readers died: {failure}")
    dead = sum(failures.values())
    for r in readers:
        r.stop()
    for r in readers:
        r.wait()
    return dead


def run(args: argparse.Namespace, workdir: Path) -> bool:
    clip = clips.clip("h264", seconds=max(clips.DEFAULT_SECONDS["h264"], int(args.duration) + 120))
    with RtspServer(log_path=workdir / "server.log") as server:
        url = server.add_clip("bench", clip)
        print(f"server pid {server.pid} on {url}; clip {clip.name}")
        idle = measure(server, [], args.duration)
        print(f"  idle (baseline)      {idle['cpu'] * 100:6.2f} % of a core")
        readers = start_readers(url, args.readers, args, workdir)
        wait_all_receiving(readers)
        loaded = measure(server, readers, args.duration)
        dead = stop_readers(readers)
        extra = loaded["cpu"] - idle["cpu"]
        print(f"  {args.readers} readers ({args.client}{', decoding' if args.decode else ''}), "
              f"{args.duration:.0f} s:")
        print(f"    server CPU         {loaded['cpu'] * 100:6.2f} % of a core "
              f"({loaded['cpu'] / max(idle['cpu'], 1e-9):.0f}× idle)")
        print(f"    per reader         {extra / args.readers * 100:6.3f} % of a core")
        print(f"    reader fps         min {loaded['fps_min']:.1f}, "
              f"median {loaded['fps_median']:.1f} (clip: 10)")
        print(f"    server clients     {loaded['clients']}, max RSS {loaded['rss_mb']:.0f} MB")
        print(f"    readers that died  {dead}")
        if args.live_readers:
            url = server.add_live("bench-live")
            readers = start_readers(url, args.live_readers, args, workdir)
            wait_all_receiving(readers)
            live = measure(server, readers, min(args.duration, 10))
            stop_readers(readers)
            per = (live["cpu"] - idle["cpu"]) / args.live_readers
            print(f"  {args.live_readers} live readers: server {live['cpu'] * 100:.1f} % of a "
                  f"core, {per * 100:.2f} % per reader (an x264 encoder each), "
                  f"fps median {live['fps_median']:.1f}")
        alive = server.alive()
        print(f"  server alive and answering after the run: {alive}")
        code = server.stop()
        print(f"  server exit code on stop: {code}")
        return alive and code == 0 and dead == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--client", choices=("ffmpeg", "pyav"), default="ffmpeg")
    parser.add_argument("--decode", action="store_true", help="readers decode the frames")
    parser.add_argument("--live-readers", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtsp-capacity-") as tmp:
        sys.exit(0 if run(args, Path(tmp)) else 1)


if __name__ == "__main__":
    main()
