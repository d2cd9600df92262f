"""Micro-benchmark of the picture checks: µs per analysed frame, per check and in total.

Run: .venv/bin/python tests/bench/checks.py [seconds-per-case] [--threads N]
Prints the best of 25 short rounds per figure, and the machine's load average before and
after: on a loaded machine the figures are upper bounds.

One core, as in a camera worker (OpenCV's own threads off unless --threads). Per input size
(640×360, 1280×720, 1920×1080, 3840×2160): the thumbnail from a full-range gray plane and
from a decoder's limited-range Y plane, each measure, the reasons, the freeze timer, the
reference refresh, and the whole per-frame path. Baseline, measured in the same run on the
same clip: decoding the keyframe itself with PyAV (the checks' share of a frame's cost), and
PyAV's gray conversion `frame.to_ndarray(format="gray")`, which the Y plane avoids.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import av
import cv2
import numpy as np

from vigie.cameras._checks import (
    FreezeDetector,
    _cells,
    _change,
    _detail,
    _luma,
    measure,
    picture_reasons,
    thumbnail,
)
from vigie.cameras._reference import REFRESH_EVERY, ReferenceLearner, coarse, scene_structure
from vigie.config import CameraChecks

SIZES = [(640, 360), (1280, 720), (1920, 1080), (3840, 2160)]


ROUNDS = 25


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """µs per call: the best of ROUNDS rounds of about seconds/ROUNDS each (as timeit does:
    on a shared machine the other rounds measure the neighbours, not the code)."""
    fn()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < 0.05:
        fn()
        calls += 1
    batch = max(1, int(calls * seconds / ROUNDS / 0.05))
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        rounds.append((time.perf_counter() - t0) / batch * 1e6)
    return min(rounds)


def clip(directory: Path, width: int, height: int) -> Path:
    path = directory / f"clip-{width}x{height}.mp4"
    source = f"testsrc2=size={width}x{height}:rate=10,noise=alls=12:allf=t"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
                    "-t", "3", "-g", "10", "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=300)
    return path


def keyframes(path: Path) -> tuple[list[av.VideoFrame], list[bytes]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [bytes(p) for p in container.demux(stream) if p.is_keyframe and p.size]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        frames = list(container.decode(stream))
    return frames, packets


def decode_keyframe(path: Path, seconds: float) -> float:
    """µs to decode one keyframe, the worker's unavoidable cost per analysed frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys = [p for p in container.demux(stream) if p.is_keyframe and p.size]
        codec = av.CodecContext.create(stream.codec_context.name, "r")
        codec.extradata = stream.codec_context.extradata
        codec.thread_count = 1
        packet = keys[0]

        def once() -> None:
            codec.decode(packet)

        return per_call(once, seconds)


def y_plane(frame: av.VideoFrame) -> np.ndarray:
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    return rows[: frame.height, : frame.width]


def bench_size(width: int, height: int, directory: Path, seconds: float,
               checks: CameraChecks) -> dict[str, float]:
    frames, _ = keyframes(clip(directory, width, height))
    gray = frames[0].to_ndarray(format="gray")
    y = y_plane(frames[0])
    thumbs = [thumbnail(f.to_ndarray(format="gray")) for f in frames]
    learner = ReferenceLearner(checks, min_samples=3)
    previous = None
    for i, thumb in enumerate(thumbs * 10):
        m = measure(thumb, previous, learner.reference)
        learner.feed(i * 2.0, thumb, m, picture_reasons(m, learner.reference, checks))
        previous = thumb
    reference = learner.reference
    assert reference is not None
    thumb, prev = thumbs[1], thumbs[0]
    thumb32 = thumb.astype(np.float32)
    small = coarse(thumb32)
    structure = scene_structure(small)
    m = measure(thumb, prev, reference)
    freeze = FreezeDetector(checks)
    clock = iter(range(10**12))

    def refresh() -> None:
        # Every call a refresh is due: the worst case, paid once a minute in practice.
        learner.refresh(reference.refreshed_at + REFRESH_EVERY, thumb, m)
        learner._reference = reference

    def whole() -> None:
        t = thumbnail(y, limited_range=True)
        mm = measure(t, prev, reference)
        reasons = picture_reasons(mm, reference, checks)
        freeze.update(next(clock) * 2.0, mm.change)
        learner.feed(0.0, t, mm, reasons)  # not due: the usual case

    path = directory / f"clip-{width}x{height}.mp4"
    cases: dict[str, Callable[[], object]] = {
        "baseline: to_ndarray(format='gray')": lambda: frames[0].to_ndarray(format="gray"),
        "thumbnail(gray)": lambda: thumbnail(gray),
        "thumbnail(Y plane, limited_range)": lambda: thumbnail(y, limited_range=True),
        "  luma mean/std": lambda: _luma(thumb),
        "  sharpness (Laplacian)": lambda: _detail(thumb32),
        "  coarse 80x45": lambda: coarse(thumb32),
        "  covered (cells)": lambda: _cells(small),
        "  change (frozen)": lambda: _change(thumb, prev),
        "  similarity (moved)": lambda: reference.similarity(scene_structure(small)),
        "measure (all of the above)": lambda: measure(thumb, prev, reference),
        "picture_reasons": lambda: picture_reasons(m, reference, checks),
        "FreezeDetector.update": lambda: freeze.update(next(clock) * 2.0, m.change),
        "reference refresh (once a minute)": refresh,
        "TOTAL per frame (Y plane → reasons)": whole,
    }
    results = {"baseline: decode the keyframe (PyAV)": decode_keyframe(path, seconds)}
    results.update({name: per_call(fn, seconds) for name, fn in cases.items()})
    assert structure.shape == reference.structure.shape
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    checks = CameraChecks(learn_for=2.0)
    load_before = os.getloadavg()[0]
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vigie-bench-checks-") as tmp:
        for width, height in SIZES:
            table[f"{width}x{height}"] = bench_size(width, height, Path(tmp), args.seconds,
                                                    checks)
    sizes = list(table)
    print(f"picture checks, µs per analysed frame, one core (OpenCV threads: "
          f"{cv2.getNumThreads()}), cv2 {cv2.__version__}, numpy {np.__version__}; "
          f"load average {load_before:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          f"cores")
    print(f"{'':38s}" + "".join(f"{s:>12s}" for s in sizes))
    for row in table[sizes[0]]:
        print(f"{row:38s}" + "".join(f"{table[s][row]:12.1f}" for s in sizes))
    print()
    for size in sizes:
        total = table[size]["TOTAL per frame (Y plane → reasons)"]
        decode = table[size]["baseline: decode the keyframe (PyAV)"]
        budget = 2.0 * 1e6 / total  # cameras one core could check every 2 s, checks alone
        print(f"{size:>10s}: checks {total:7.1f} µs = {total / decode:5.1%} of decoding the "
              f"keyframe ({decode:7.0f} µs); checks alone fit {budget:,.0f} cameras per core "
              f"at one frame every 2 s")


if __name__ == "__main__":
    main()
