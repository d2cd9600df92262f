"""Video clips for the demo's cameras, made with PyAV: a textured courtyard with someone
walking across, and the faults an operator must see (frozen, black, covered).

Encoded once into the demo's data directory (H.264, 640×360, 10 fps, a keyframe a second,
constant quantiser so that a frozen picture really repeats itself) and replayed in a loop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

__all__ = ["CLIP_KINDS", "make_clip"]

log = logging.getLogger("vigie.demo")

WIDTH, HEIGHT, FPS = 640, 360, 10
SECONDS = 30
CLIP_KINDS = ("normal", "frozen", "black", "covered")

Frame = npt.NDArray[np.uint8]


def _scene(seed: int) -> Frame:
    """A still 'courtyard': gradients, buildings as blocks, fine texture (RGB)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = (90 + 60 * (y / HEIGHT) + 20 * np.sin(x / 37.0)).astype(np.float32)
    img = np.repeat(base[..., None], 3, axis=2)
    for _ in range(14):
        x0, y0 = int(rng.integers(0, WIDTH - 80)), int(rng.integers(0, HEIGHT - 60))
        w, h = int(rng.integers(30, 160)), int(rng.integers(20, 120))
        img[y0:y0 + h, x0:x0 + w] = rng.integers(40, 220, size=3)
    img += rng.normal(0, 10, size=img.shape)  # texture: brick, gravel, foliage
    scene: Frame = np.clip(img, 0, 255).astype(np.uint8)
    return scene


def _walker(frame: Frame, t: float) -> Frame:
    """Someone crossing the yard: a small dark figure moving left to right."""
    out = frame.copy()
    x = int((t * 40) % (WIDTH + 40)) - 20
    x0, x1 = max(x, 0), min(x + 18, WIDTH)
    if x1 > x0:
        out[220:290, x0:x1] = (35, 40, 60)
    return out


def _frames(kind: str, seed: int) -> list[Frame]:
    scene = _scene(seed)
    rng = np.random.default_rng(seed + 1)
    frames: list[Frame] = []
    for i in range(SECONDS * FPS):
        t = i / FPS
        if kind == "black":
            frame = np.zeros_like(scene)
        elif kind == "frozen" and frames:
            frame = frames[0]  # the encoder repeats one picture (across loops too)
        else:
            # Sensor noise on every frame: a live camera never sends the same pixels twice.
            noisy = scene.astype(np.int16) + rng.integers(-3, 4, size=scene.shape)
            frame = _walker(np.clip(noisy, 0, 255).astype(np.uint8), t)
            if kind == "covered":  # a hand, or tape, over most of the lens
                frame[:, : int(WIDTH * 0.88)] = (118, 112, 104)
        frames.append(frame)
    return frames


def make_clip(directory: Path, kind: str, seed: int = 7) -> Path:
    """The clip of this kind, encoded on first use."""
    path = directory / f"{kind}-{seed}.mp4"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"g": str(FPS), "qp": "26", "preset": "veryfast",
                          "tune": "stillimage" if kind == "frozen" else "film"}
        for array in _frames(kind, seed):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    log.info("demo clip %s written (%s)", path.name, kind)
    return path
