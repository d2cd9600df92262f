"""Picture checks: is a camera's picture usable? Pure functions on one decoded keyframe.

Per analysed frame (every `analyse_every` seconds, in a worker process):

    thumb = thumbnail(gray)                       # full-resolution 8-bit luma plane
    m = measure(thumb, previous, learner.reference)
    reasons = picture_reasons(m, learner.reference, checks)
    if freeze.update(ts, m.change):
        reasons |= {"frozen"}
    learner.feed(ts, thumb, m, reasons)           # learns, then slowly refreshes the reference
    previous = thumb

Everything works on a 320×180 grey thumbnail. It is 2× below the common 640×360 sub-stream
(so sensor noise, which tells a live camera from a frozen one, survives it, and a defocus of
1-2 pixels there still shows), a cheap reduction from any resolution (OpenCV's 2× area
reduction is fast: ~10 µs from 640×360, ~0.2 ms from 1080p, bound by reading the frame),
and small enough for every measure together to take ~0.16 ms on one core (160×90 would
take a quarter of that, but lose the noise and the fine detail). Because all cameras are
analysed at the same size, measures do not depend on the stream's resolution, and a
reference survives a change of resolution. Figures: tests/bench/checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from vigie.cameras._reference import FloatImage, Reference, coarse, scene_structure
from vigie.config import CameraChecks

__all__ = [
    "BLACK_STD",
    "FROZEN_CHANGE",
    "PICTURE_REASONS",
    "THUMB_SIZE",
    "UNIFORM_STD",
    "UNLIT_BELOW",
    "FreezeDetector",
    "Measures",
    "measure",
    "picture_reasons",
    "thumbnail",
]

Gray = npt.NDArray[np.uint8]

THUMB_SIZE = (320, 180)  # (width, height) of the analysis thumbnail
GRID = (16, 9)  # cells for "covered" and "frozen": 20×20 thumbnail pixels each
PICTURE_REASONS = frozenset({"black", "too_dark", "too_bright", "blurred", "covered", "moved"})

# "Black" is dark AND flat: a dark night scene with a few lit windows is "too_dark". The
# luma std-dev of a black frame is ~0-2 even with strong sensor noise, since the thumbnail
# averages it and black clips it at 0.
BLACK_STD = 5.0
# A cell is uniform when its std-dev on the 80×45 coarse image (5×5 pixels a cell) is below
# this. The coarse image averages 16 thumbnail pixels, so strong night noise (σ 8 at 640×360)
# leaves ~1 grey level in a covered view, while the textured parts of a scene keep 5-20, and
# 2-6 at night at a third of the light.
UNIFORM_STD = 2.0
# Cells darker than this carry no texture to lose: an unlit area at night is not a hand over
# the lens. A covered lens in the dark is a black picture, reported as such.
UNLIT_BELOW = 12.0
# Change (90th percentile of the cells' mean absolute difference, grey levels) under which a
# picture counts as unchanged. Identical frames give exactly 0. Live static scenes measured
# on H.264 keyframes (libx264 CRF 23/35 and CBR, 640×360 to 4K, dark and lit, temporal noise
# down to ±1 grey level) never went below 0.2: sensor noise survives compression in I-frames.
# The percentile ignores up to 10 % of changing cells: a burnt-in clock ticking over a frozen
# picture does not make it live.
FROZEN_CHANGE = 0.1
_FROZEN_RANK = 0.9
_FROZEN_MIN_REPEATS = 2  # unchanged comparisons needed, whatever the timing


def _expand_range() -> Gray:
    # Y' 16-235 to 0-255; the footroom below 16 is black, the headroom above 235 white.
    levels = (np.arange(256, dtype=np.float32) - 16.0) * (255.0 / 219.0)
    return np.asarray(np.clip(np.rint(levels), 0, 255), dtype=np.uint8)


_LIMITED_TO_FULL = _expand_range()


def thumbnail(gray: npt.NDArray[np.uint8], *, limited_range: bool = False) -> Gray:
    """Reduce a full-resolution 8-bit luma plane to `THUMB_SIZE`, in full range (0-255).

    The thresholds are full-range grey levels, as `frame.to_ndarray(format="gray")` gives.
    A decoder's own Y plane (zero-copy, and far cheaper than that conversion at 1080p) is
    usually limited range, black at 16 and white at 235: pass `limited_range=True` (every
    format but yuvj*, unless the stream says `color_range` is full) to expand it here, on
    the thumbnail.

    Halves with INTER_AREA (OpenCV's fast exact-2× path) while the picture is at least twice
    the thumbnail, then resizes the rest of the way, less than 2×, bilinearly: the generic
    INTER_AREA path costs ~0.2 ms for that last step from 1080p, for no visible benefit at a
    ratio where bilinear already blends 2×2 pixels. A plane with padded rows (a decoder's Y
    plane as a strided view) is fine; other aspect ratios are stretched to 16:9.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 luma plane, got {gray.dtype} {gray.shape}")
    width, height = THUMB_SIZE
    image: npt.NDArray[np.uint8] = gray
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        half_w, half_h = image.shape[1] // 2, image.shape[0] // 2
        # An odd row or column would leave the fast path; dropping it moves nothing visibly.
        image = np.asarray(cv2.resize(image[: 2 * half_h, : 2 * half_w], (half_w, half_h),
                                      interpolation=cv2.INTER_AREA), dtype=np.uint8)
    if image.shape != (height, width):
        image = np.asarray(cv2.resize(image, THUMB_SIZE, interpolation=cv2.INTER_LINEAR),
                           dtype=np.uint8)
    if limited_range:
        return np.asarray(cv2.LUT(image, _LIMITED_TO_FULL), dtype=np.uint8)
    if image is gray:
        return gray.copy()  # the thumbnail outlives the decoder's buffer
    return image


@dataclass(frozen=True, slots=True)
class Measures:
    """What is measured on one analysed frame (all floats, JSON-ready with `asdict`).

    - `luma_mean`, `luma_std`: grey levels 0-255 of the thumbnail.
    - `sharpness`: mean square of the thumbnail's 3×3 Laplacian divided by the mean variance
      inside the coarse cells. Fine detail over medium-scale contrast, so lighting, gain and
      scene content cancel out; only meaningful against the camera's own reference.
    - `uniform_fraction`: share of the 16×9 cells that are lit but without texture (see
      `UNIFORM_STD`, `UNLIT_BELOW`).
    - `change`: difference to the previous analysed thumbnail, grey levels: the 90th
      percentile of the cells' mean absolute difference; None without a previous frame.
    - `similarity`: of the scene structure to the reference, 0..1; None without reference.
    - `contrast`: mean std-dev inside the coarse cells, grey levels (the sharpness divisor).
    """

    luma_mean: float
    luma_std: float
    sharpness: float
    uniform_fraction: float
    change: float | None
    similarity: float | None
    contrast: float


def _check_thumb(thumb: npt.NDArray[np.uint8]) -> None:
    if thumb.shape != (THUMB_SIZE[1], THUMB_SIZE[0]) or thumb.dtype != np.uint8:
        raise ValueError(f"expected a {THUMB_SIZE[0]}x{THUMB_SIZE[1]} uint8 thumbnail, "
                         f"got {thumb.dtype} {thumb.shape}")


def _luma(thumb: Gray) -> tuple[float, float]:
    mean, std = cv2.meanStdDev(thumb)
    return float(mean[0, 0]), float(std[0, 0])


def _detail(thumb32: FloatImage) -> float:
    """Mean square of the 3×3 Laplacian (its mean is ~0): fine-detail energy, the numerator
    of sharpness. On float32, where OpenCV's filter and norm are vectorised."""
    laplacian = cv2.Laplacian(thumb32, cv2.CV_32F)
    return float(cv2.norm(laplacian, cv2.NORM_L2SQR)) / laplacian.size


def _cells(small: FloatImage) -> tuple[float, float]:
    """(uniform fraction, mean variance inside the cells) of the coarse image."""
    mean = cv2.resize(small, GRID, interpolation=cv2.INTER_AREA)
    square = cv2.resize(small * small, GRID, interpolation=cv2.INTER_AREA)
    var = np.maximum(square - mean * mean, 0.0)
    uniform = np.count_nonzero((var < UNIFORM_STD**2) & (mean >= UNLIT_BELOW))
    return uniform / var.size, float(var.mean())


_CELL_ROWS = np.linspace(0, THUMB_SIZE[1], GRID[1] + 1).astype(np.intp)[:, None]
_CELL_COLS = np.linspace(0, THUMB_SIZE[0], GRID[0] + 1).astype(np.intp)
_CELL_AREA = (THUMB_SIZE[0] // GRID[0]) * (THUMB_SIZE[1] // GRID[1])
_FROZEN_INDEX = int(_FROZEN_RANK * (GRID[0] * GRID[1] - 1))


def _change(thumb: Gray, previous: Gray | None) -> float | None:
    if previous is None or previous.shape != thumb.shape:
        return None
    # Sum of the absolute difference per cell from its integral image: exact, and cheaper
    # than a float conversion and an area resize.
    total = cv2.integral(cv2.absdiff(thumb, previous))[_CELL_ROWS, _CELL_COLS]
    cells = (total[1:, 1:] - total[:-1, 1:] - total[1:, :-1] + total[:-1, :-1]).ravel()
    return float(np.partition(cells, _FROZEN_INDEX)[_FROZEN_INDEX]) / _CELL_AREA


def measure(thumb: Gray, previous: Gray | None, reference: Reference | None) -> Measures:
    """Measure a thumbnail, against the previous analysed one and the camera's reference."""
    _check_thumb(thumb)
    mean, std = _luma(thumb)
    thumb32 = thumb.astype(np.float32)
    small = coarse(thumb32)
    uniform, local_var = _cells(small)
    return Measures(
        luma_mean=mean,
        luma_std=std,
        # +1: a flat picture has no sharpness to speak of, rather than a division by ~0.
        sharpness=_detail(thumb32) / (local_var + 1.0),
        uniform_fraction=uniform,
        change=_change(thumb, previous),
        similarity=None if reference is None else reference.similarity(scene_structure(small)),
        contrast=local_var**0.5,
    )


def picture_reasons(
    m: Measures, reference: Reference | None, checks: CameraChecks
) -> frozenset[str]:
    """Which of `PICTURE_REASONS` apply to a frame, minus the camera's disabled checks.

    A fault is reported under the name that explains it: a black picture is not also too
    dark or covered; a black, covered or too bright picture is not also blurred; a black,
    covered, too dark or too bright one is not also moved (its scene cannot be compared).
    These exclusions hold even when the explaining check is disabled: a camera with "black"
    disabled that sees black reports nothing, not "moved".
    """
    black = m.luma_mean < checks.black_below and m.luma_std < BLACK_STD
    dark = not black and m.luma_mean < max(checks.dark_below, checks.black_below)
    bright = m.luma_mean > checks.bright_above
    covered = not black and m.uniform_fraction >= checks.covered_fraction
    blurred = (reference is not None and not (black or covered or bright)
               and m.sharpness < checks.blur_ratio * reference.sharpness)
    moved = (m.similarity is not None and not (black or covered or dark or bright)
             and m.similarity < checks.moved_below)
    found = {name for name, hit in (("black", black), ("too_dark", dark),
                                    ("too_bright", bright), ("covered", covered),
                                    ("blurred", blurred), ("moved", moved)) if hit}
    return frozenset(found.difference(checks.disabled))


class FreezeDetector:
    """Tells a frozen picture (a stuck encoder or recorder repeating the same pixels while
    packets keep coming) from a live one, over time.

    Feed it the `change` of every analysed frame. The picture is frozen once it has stayed
    unchanged (`change` < `threshold`) for at least `frozen_after` seconds, since the last
    frame that differed, over at least two comparisons. Any change, or a frame without a
    previous one to compare with (None: after a reconnection), starts again. Feed it new
    keyframes only: the same decoded frame analysed twice would look frozen.
    """

    def __init__(self, checks: CameraChecks, *, threshold: float = FROZEN_CHANGE) -> None:
        self._after = checks.frozen_after
        self._enabled = "frozen" not in checks.disabled
        self._threshold = threshold
        self._since: float | None = None  # time of the frame that is being repeated
        self._repeats = 0
        self._last: float | None = None

    @property
    def frozen(self) -> bool:
        return (self._enabled and self._since is not None and self._last is not None
                and self._repeats >= _FROZEN_MIN_REPEATS
                and self._last - self._since >= self._after)

    @property
    def still_since(self) -> float | None:
        """When the picture last changed, while it has not changed since (else None)."""
        return self._since if self._repeats else None

    def update(self, ts: float, change: float | None) -> bool:
        """Record one analysed frame; returns whether the picture is now frozen."""
        if change is None or self._last is None or ts < self._last or change >= self._threshold:
            self._since, self._repeats = ts, 0
        else:
            self._repeats += 1
        self._last = ts
        return self.frozen

    def reset(self) -> None:
        self._since, self._repeats, self._last = None, 0, None
