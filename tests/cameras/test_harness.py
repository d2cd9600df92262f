"""The RTSP test harness itself: what a real RTSP client (PyAV/FFmpeg) decodes from each mount,
and that every fault moves the picture in the direction the camera checks will look for."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from tests.cameras.harness import GStreamerMissing, RtspServer, RtspServerError

# FFmpeg ≥ 5 names the RTSP socket timeout `timeout` (µs); `stimeout` is gone. No probing: the
# SDP already carries the parameter sets, and probing would hold the first frame back ~3 s.
OPEN = {"rtsp_transport": "tcp", "timeout": "5000000", "analyzeduration": "0", "probesize": "32"}


@dataclass(frozen=True)
class Sample:
    y: np.ndarray  # the luma plane, as a camera check sees it
    pts: float  # presentation time, seconds
    arrived: float  # time.monotonic() when decoded


@contextmanager
def receive(url: str, **options: str) -> Iterator[Iterator[Sample]]:
    container = av.open(url, options=OPEN | options)
    try:
        stream = container.streams.video[0]

        def samples() -> Iterator[Sample]:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue  # FFmpeg's RTSP demuxer gives the very first packet no pts
                y = frame.to_ndarray(format="yuv420p")[: frame.height]
                yield Sample(y, frame.time, time.monotonic())

        yield samples()
    finally:
        container.close()


def take(samples: Iterator[Sample], n: int) -> list[Sample]:
    return [next(samples) for _ in range(n)]


# -- picture measures (what vigie's camera checks will compute) --------------------------------


def sharpness(y: np.ndarray) -> float:
    return float(cv2.Laplacian(y, cv2.CV_64F).var())


def uniform_fraction(y: np.ndarray, block: int = 16, max_std: float = 2.0) -> float:
    h, w = (y.shape[0] // block) * block, (y.shape[1] // block) * block
    blocks = y[:h, :w].reshape(h // block, block, w // block, block).std(axis=(1, 3))
    return float((blocks < max_std).mean())


def motion(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def displacement(reference: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    (dx, dy), _response = cv2.phaseCorrelate(reference.astype(np.float32), y.astype(np.float32))
    return dx, dy


@dataclass(frozen=True)
class Baseline:
    y: np.ndarray
    mean: float
    sharpness: float


def baseline(samples: Iterator[Sample]) -> Baseline:
    last = take(samples, 5)[-1]
    return Baseline(last.y, float(last.y.mean()), sharpness(last.y))


Check = Callable[[Baseline, Sample, Sample], bool]


def until(samples: Iterator[Sample], base: Baseline, check: Check, what: str,
          within: float = 5.0, consecutive: int = 3) -> None:
    """Read until `check(base, previous, current)` holds for `consecutive` frames in a row."""
    deadline = time.monotonic() + within
    previous, streak = next(samples), 0
    for sample in samples:
        streak = streak + 1 if check(base, previous, sample) else 0
        if streak >= consecutive:
            return
        if sample.arrived > deadline:
            break
        previous = sample
    y = sample.y
    pytest.fail(f"{what}: not seen within {within}s; last frame: mean {y.mean():.1f}, "
                f"sharpness {sharpness(y):.0f} (base {base.sharpness:.0f}), uniform "
                f"{uniform_fraction(y):.2f}, motion {motion(previous.y, y):.2f}, "
                f"pts step {sample.pts - previous.pts:.2f}s, shift {displacement(base.y, y)}")


def looks_normal(base: Baseline, previous: Sample, sample: Sample) -> bool:
    y = sample.y
    dx, dy = displacement(base.y, y)
    return (abs(y.mean() - base.mean) < 8 and sharpness(y) > 0.5 * base.sharpness
            and uniform_fraction(y) < 0.2 and motion(previous.y, y) > 1.0
            and sample.pts - previous.pts < 0.15 and abs(dx) <= 2 and abs(dy) <= 2)


SHIFT = (96, 48)
FAULTS: dict[str, tuple[Any, Check]] = {
    "black": (None, lambda b, p, s: s.y.mean() < 18 and s.y.std() < 2),
    # Dark, not black: a picture is still there.
    "dark": (None, lambda b, p, s: 18 < s.y.mean() < 45 and s.y.std() > 2),
    "bright": (None, lambda b, p, s: s.y.mean() > 190),
    "blur": (None, lambda b, p, s: sharpness(s.y) < 0.05 * b.sharpness
             and abs(s.y.mean() - b.mean) < 5),
    "cover": (None, lambda b, p, s: uniform_fraction(s.y) > 0.8),
    "shift": (list(SHIFT), lambda b, p, s: all(
        abs(got - want) <= 2 for got, want in zip(displacement(b.y, s.y), SHIFT, strict=True))),
    # Frozen: frames keep coming at 10 fps, the picture does not change at all.
    "freeze": (None, lambda b, p, s: motion(p.y, s.y) < 0.05 and s.arrived - p.arrived < 0.3),
    "fps": (2, lambda b, p, s: 0.4 < s.pts - p.pts < 0.6),
}


@pytest.mark.parametrize("kind", FAULTS)
def test_fault_changes_a_connected_clients_picture_and_normal_restores_it(
        rtsp_server: RtspServer, kind: str) -> None:
    arg, faulty = FAULTS[kind]
    name = f"fault-{kind}"
    with receive(rtsp_server.add_live(name)) as samples:
        base = baseline(samples)
        assert uniform_fraction(base.y) < 0.1, "the normal scene has texture everywhere"
        until(samples, base, looks_normal, "the normal scene (moving, sharp, 10 fps)")
        rtsp_server.fault(name, kind, arg)
        until(samples, base, faulty, kind)
        rtsp_server.fault(name, "normal")
        until(samples, base, looks_normal, f"normal after {kind}")


def frames_for(samples: Iterator[Sample], seconds: float) -> list[Sample]:
    until_ = time.monotonic() + seconds
    frames = []
    for sample in samples:
        frames.append(sample)
        if sample.arrived > until_:
            break
    return frames


def test_exposure_drifts_the_light_smoothly_to_its_gain_and_back(rtsp_server: RtspServer
                                                                 ) -> None:
    name = "exposure"
    with receive(rtsp_server.add_live(name)) as samples:
        base = baseline(samples)
        rtsp_server.fault(name, "exposure", [0.4, 2])
        means = [float(s.y.mean()) for s in frames_for(samples, 3.0)]
        target = 16 + (base.mean - 16) * 0.4  # the light above black, times the gain
        assert abs(means[-1] - target) < 6, (base.mean, means)
        # A drift, not a step: many frames on the way, none much darker than the previous.
        assert sum(target + 6 < m < base.mean - 6 for m in means) >= 8, means
        assert max(abs(b - a) for a, b in itertools.pairwise(means)) < (base.mean - target) / 4
        assert take(samples, 1)[0].y.std() > 15  # dimmer, the scene still there
        assert rtsp_server.status()["mounts"][name]["faults"] == {
            "exposure": {"gain": 0.4, "seconds": 2.0}}
        rtsp_server.fault(name, "exposure", [1, 1])  # back to the normal light
        means = [float(s.y.mean()) for s in frames_for(samples, 2.0)]
        assert abs(means[-1] - base.mean) < 6, (base.mean, means)
        assert rtsp_server.status()["mounts"][name]["faults"] == {}


def flat_columns(y: np.ndarray, max_std: float = 3.0) -> np.ndarray:
    """Indexes of the columns that are flat from near the top to near the bottom."""
    return np.flatnonzero(y[20:-20].std(axis=0) < max_std)


def test_an_object_passes_across_the_view_and_is_gone(rtsp_server: RtspServer) -> None:
    name = "passer-by"
    with receive(rtsp_server.add_live(name)) as samples:
        base = baseline(samples)
        assert flat_columns(base.y).size == 0
        rtsp_server.fault(name, "pass", [0.3, 2])
        centres = [float(cols.mean()) for s in frames_for(samples, 3.0)
                   if (cols := flat_columns(s.y)).size > 20]
        width = base.y.shape[1]
        assert len(centres) >= 10, centres  # two seconds at 10 fps, entering and leaving
        assert centres[0] < 0.35 * width and centres[-1] > 0.65 * width, centres
        assert all(b >= a - 4 for a, b in itertools.pairwise(centres)), centres  # rightwards
        assert flat_columns(take(samples, 2)[-1].y).size == 0  # gone
        assert rtsp_server.status()["mounts"][name]["faults"] == {}


def test_new_clients_get_the_faults_already_set(rtsp_server: RtspServer) -> None:
    url = rtsp_server.add_live("late")
    rtsp_server.fault("late", "cover")
    reply = rtsp_server.fault("late", "dark")  # faults add up; the light is one of them
    assert reply["mount"]["faults"] == {"cover": 0.85, "light": "dark"}
    with receive(url) as samples:
        first = take(samples, 2)[-1]
        assert uniform_fraction(first.y) > 0.8
        assert first.y.mean() < 45
        rtsp_server.add_live("late")  # re-adding a camera clears its faults…
        assert rtsp_server.status()["mounts"]["late"]["faults"] == {}
        take(samples, 3)  # …and keeps its clients


def test_stall_keeps_the_connection_but_stops_the_packets(rtsp_server: RtspServer) -> None:
    url = rtsp_server.add_live("stall")
    with receive(url) as samples:
        before = take(samples, 3)
        rtsp_server.fault("stall", "stall")
        resume = threading.Timer(2.0, rtsp_server.fault, ("stall", "normal"))
        resume.start()
        try:
            frames = before[-1:] + take(samples, 12)
        finally:
            resume.join()
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(frames)]
    assert max(gaps) > 1.5, gaps
    assert sorted(gaps)[len(gaps) // 2] < 0.2, "10 fps again after normal"


@pytest.mark.parametrize("kind", ["live", "clip"])
def test_stop_cuts_clients_off_refuses_new_ones_and_start_brings_the_camera_back(
        rtsp_server: RtspServer, h264_clip: Path, kind: str) -> None:
    name = f"stop-{kind}"
    url = rtsp_server.add_live(name) if kind == "live" else rtsp_server.add_clip(name, h264_clip)
    with receive(url) as samples:
        take(samples, 3)
        reply = rtsp_server.fault(name, "stop")
        assert reply["disconnected"] == 1
        cut = time.monotonic()
        try:
            for _ in samples:
                assert time.monotonic() - cut < 3, "the client is still fed after stop"
        except av.FFmpegError:
            pass  # cut off with an error rather than an end of stream: as good
    with pytest.raises(av.error.HTTPNotFoundError):
        av.open(url, options=OPEN)
    rtsp_server.fault(name, "start")
    with receive(url) as samples:
        assert take(samples, 2)[-1].y.shape == (360, 640)


@pytest.mark.parametrize(("codec", "decoder"), [("h264", "h264"), ("h265", "hevc")])
def test_clip_mount_streams_the_file_like_a_camera(
        rtsp_server: RtspServer, codec: str, decoder: str, request: pytest.FixtureRequest) -> None:
    clip = request.getfixturevalue(f"{codec}_clip")
    url = rtsp_server.add_clip(f"clip-{codec}", clip, codec=codec)
    with av.open(url, options=OPEN) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == decoder
        frames = []
        for frame in container.decode(stream):
            if frame.time is None:
                continue  # the first packet has no pts (FFmpeg's RTSP demuxer)
            frames.append((time.monotonic(), frame.time, frame.width, frame.height,
                           frame.key_frame))
            if len(frames) == 21:
                break
    assert {(w, h) for _, _, w, h, _ in frames} == {(640, 360)}
    steps = np.diff([pts for _, pts, _, _, _ in frames])
    assert np.allclose(steps, 0.1, atol=0.01), steps
    arrival_fps = 15 / (frames[-1][0] - frames[5][0])
    assert 8 < arrival_fps < 12.5, "served in real time, not as fast as possible"
    keyframes = [i for i, (*_, key) in enumerate(frames) if key]
    assert len(keyframes) == 2 and keyframes[1] - keyframes[0] == 10, keyframes


def _polite_client(url: str) -> None:
    with receive(url) as samples:
        take(samples, 3)


def _abrupt_client(url: str) -> None:
    """An ffmpeg reader killed with SIGKILL: no TEARDOWN, the socket just closes."""
    reader = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-rtsp_transport", "tcp", "-i", url,
         "-f", "null", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    reader.kill()
    reader.wait()


def test_twenty_clients_come_and_go_and_the_server_stays_up(
        rtsp_server: RtspServer, h264_clip: Path) -> None:
    clip = rtsp_server.add_clip("churn", h264_clip)
    live = rtsp_server.add_live("churn-live")
    cpu_before = rtsp_server.status()["cpu_seconds"]
    rounds: list[list[tuple[Callable[[str], None], str]]] = [
        [(_polite_client, clip)] * 20,
        [(_polite_client, clip)] * 10 + [(_abrupt_client, clip)] * 10,
        [(_polite_client, clip)] * 8 + [(_abrupt_client, clip)] * 8
        + [(_polite_client, live)] * 2 + [(_abrupt_client, live)] * 2,
    ]
    with ThreadPoolExecutor(20) as pool:
        for clients in rounds:
            # Faults land on the live medias while they come and go.
            flapping = pool.submit(lambda: [rtsp_server.fault("churn-live", kind)
                                            for kind in ("blur", "freeze", "normal") * 3])
            for future in [pool.submit(client, url) for client, url in clients]:
                future.result()
            flapping.result()
    deadline = time.monotonic() + 10
    while True:
        status = rtsp_server.status()
        held = {name: status["mounts"][name]["clients"] for name in ("churn", "churn-live")}
        if status["clients"] == 0 and not any(held.values()):
            break
        assert time.monotonic() < deadline, f"clients not released: {status['clients']}, {held}"
        time.sleep(0.2)
    assert status["cpu_seconds"] > cpu_before
    assert rtsp_server.alive()


def test_hang_listener_accepts_and_never_answers_without_holding_up_the_others(
        rtsp_server: RtspServer, h264_clip: Path) -> None:
    with socket.create_connection(("127.0.0.1", rtsp_server.hang_port), timeout=1) as sock:
        sock.sendall(b"OPTIONS rtsp://127.0.0.1/hang/camera RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(1)
    clip = rtsp_server.add_clip("beside-the-hang", h264_clip)
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(av.open, rtsp_server.hang_url(), options=OPEN | {"timeout": "1500000"})
        with receive(clip) as samples:
            take(samples, 3)
        assert not hung.done(), "the hung camera answered something"
        with pytest.raises((av.FFmpegError, OSError)):
            hung.result(timeout=10)


def test_bad_commands_are_refused_and_the_server_carries_on(
        rtsp_server: RtspServer, h264_clip: Path) -> None:
    rtsp_server.add_live("picky")
    rtsp_server.add_clip("picky-clip", h264_clip)
    for name, kind, arg in [("picky", "melt", None), ("picky", "fps", None),
                            ("picky", "cover", "lots"), ("picky", "shift", [9999, 0]),
                            ("nobody", "stop", None), ("picky-clip", "blur", None),
                            ("picky", "exposure", [9, 1]), ("picky", "exposure", [0.5, 1, 2]),
                            ("picky", "pass", [0.3, "soon"])]:
        with pytest.raises(RtspServerError):
            rtsp_server.fault(name, kind, arg)
    with pytest.raises(RtspServerError, match="bad mount name"):
        rtsp_server.add_live("../etc")
    with pytest.raises(RtspServerError, match="no such clip"):
        rtsp_server.add_clip("ghost", "/nonexistent.mp4")
    with pytest.raises(RtspServerError, match="already a live mount"):
        rtsp_server.add_clip("picky", h264_clip)
    with pytest.raises(RtspServerError, match="unknown command"):
        rtsp_server.command("explode")
    assert rtsp_server.fault("picky-clip", "normal")["ok"]


# -- the server's own lifetime (a process of their own, not the session's) -----------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RtspServer]:
    server = RtspServer(log_path=tmp_path / "stderr.log")
    server.start()
    yield server
    server.stop()


def test_sigterm_stops_the_server_cleanly_with_clients_connected(
        own_server: RtspServer, h264_clip: Path) -> None:
    with receive(own_server.add_clip("busy", h264_clip)) as samples:
        take(samples, 3)
        os.kill(own_server.pid, signal.SIGTERM)
        started = time.monotonic()
        assert own_server.stop(timeout=5) == 0
        assert time.monotonic() - started < 5


def test_the_server_exits_when_its_parent_closes_its_stdin(own_server: RtspServer) -> None:
    own_server.add_live("orphan")
    assert own_server.stop(timeout=5) == 0


def test_a_dead_server_is_noticed_and_a_restart_serves_the_same_mounts(
        own_server: RtspServer, h264_clip: Path) -> None:
    own_server.add_clip("survivor", h264_clip)
    own_server.add_live("survivor-live")
    own_server.fault("survivor-live", "black")
    os.kill(own_server.pid, signal.SIGKILL)
    assert not own_server.alive()
    assert own_server.returncode == -signal.SIGKILL
    own_server.restart()
    assert own_server.alive()
    mounts = own_server.status()["mounts"]
    assert set(mounts) == {"survivor", "survivor-live"}
    assert mounts["survivor-live"]["faults"] == {}
    with receive(own_server.url("survivor")) as samples:
        take(samples, 2)


def test_a_missing_gstreamer_fails_with_the_packages_to_install(tmp_path: Path) -> None:
    # The project's virtualenv has no GStreamer bindings: the system interpreter is needed.
    server = RtspServer(log_path=tmp_path / "stderr.log", python=sys.executable)
    with pytest.raises(GStreamerMissing, match=r"gir1\.2-gst-rtsp-server-1\.0"):
        server.start()
