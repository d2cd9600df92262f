"""The scene a camera is supposed to see, learned from its own good picture.

A camera's reference is learned automatically from its first `learn_for` seconds of good
picture, then refreshed slowly, so that the "blurred" and "moved" checks compare a camera
with itself rather than with a universal norm.

Scene structure: a dense map of local edge orientation on an 80×45 image (a quarter of the
analysis thumbnail), compared by normalised correlation. Per coarse pixel, the gradient of
the lightly smoothed image is written in doubled-angle form, (gx² − gy², 2·gx·gy) / |g|, and
divided by the local gradient energy of its 9×9 neighbourhood (plus a floor of 30 % of the
image's mean, so that flat areas do not amplify their noise or the slope of the lighting).

Why this descriptor:
- lighting: the correlation ignores gain and offset, the local normalisation absorbs lighting
  that changes across the view (sun patches, a lamp at night), and the doubled angle ignores
  edge polarity (infrared at night can invert the contrast of some materials);
- small objects: every region weighs about the same, so an object over 10 % of the view
  leaves a similarity of 0.85-0.9, over 20 % 0.7-0.8;
- displacement: edges must stay in place to within the smoothing (σ 2.5 coarse pixels,
  3 % of the width). Measured on synthetic views (a finely textured one / one of large flat
  blocks): a pan of 2 % keeps 0.87 / 0.95 (a swaying mast), 4 % 0.61 / 0.85, 6 % 0.37 /
  0.73, 10 % 0.08 / 0.55, 15 % 0.03 / 0.39, 20 % 0.11 / 0.27; a tilt of 10 % 0.28 / 0.34; a
  rotation of 10° 0.35 / 0.52, of 15° 0.30 / 0.35; a zoom of 20 % 0.44 / 0.64. Against the
  default `moved_below` of 0.5, a textured scene reads as moved from about 5 % of the field,
  one of long straight edges panned along them from 10-15 % (the edges still overlap: the
  limit of any edge map), and a zoom is only seen on a textured scene;
- blur: at this scale a defocus that the "blurred" check reports barely changes the map, so
  a blurred picture does not also read as moved.
ORB keypoints were the alternative: richer on large displacements, but costlier, random in
what they keep on a low-texture scene, and not something to blend slowly into a reference.

Only `sharpness` and the structure map are compared; the reference's sharpness is the median
of the learning period and is deliberately not refreshed: a lens that fogs or gets dirty over
weeks must end up reported as blurred, not absorbed. The structure map is refreshed by an
exponential moving average (time constant `REFRESH_TAU`) on good frames only, so seasons and
lighting are followed but a camera turned away (no longer a good frame) is not.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from vigie.config import CameraChecks
from vigie.errors import VigieError

if TYPE_CHECKING:
    from vigie.cameras._checks import Measures

__all__ = [
    "COARSE_SIZE",
    "Reference",
    "ReferenceFormatError",
    "ReferenceInfo",
    "ReferenceLearner",
    "coarse",
    "scene_structure",
    "structure_similarity",
]

FloatImage = npt.NDArray[np.float32]

COARSE_SIZE = (80, 45)  # (width, height): a quarter of the analysis thumbnail
# Smoothing before the gradient (coarse pixels): tolerance to sway and to noise.
_SMOOTH_SIGMA = 2.5
_ENERGY_WINDOW = (9, 9)  # neighbourhood of the local normalisation, about 11 % of the width
_ENERGY_FLOOR = 0.3  # share of the mean gradient energy added to every neighbourhood's

MIN_SAMPLES = 10  # a reference needs at least this many good frames, whatever `learn_for`
REFRESH_TAU = 6 * 3600.0  # seconds: time constant of the slow refresh
REFRESH_EVERY = 60.0  # seconds between two refreshes: plenty for a time constant of hours
# Good frames less similar than this (or than `moved_below`, if higher) are not blended in:
# that is no drift, and a technician should see it before it is learned (relearn).
REFRESH_MIN_SIMILARITY = 0.7
_REFRESH_MAX_STEP = 600.0  # seconds: after an outage the first frame does not weigh more
_HISTORY = 1024  # sharpness samples kept for the median of the learning period
# Good frames further apart do not add the time between them to the learning: an outage.
# Generous, since keyframe-only decoding of a "smart codec" stream may see one every 10-20 s.
_MAX_GAP = 60.0

_MAGIC = b"VGRF"
_VERSION = 1
_HEADER = struct.Struct("<4sHHHddddI")  # magic, version, width, height, 4 floats, samples


class ReferenceFormatError(VigieError, ValueError):
    """Stored reference bytes that cannot be read (truncated, other format or version)."""


def coarse(thumb: npt.NDArray[np.uint8] | FloatImage) -> FloatImage:
    """The analysis thumbnail (uint8, or already float32) reduced 4× to `COARSE_SIZE`."""
    width, height = COARSE_SIZE
    image = np.asarray(thumb, dtype=np.float32)
    # Two exact 2× area reductions: OpenCV's fast path, where one 4× step is not.
    half = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.resize(half, COARSE_SIZE, interpolation=cv2.INTER_AREA),
                      dtype=np.float32)


def scene_structure(coarse_image: FloatImage) -> FloatImage:
    """Locally normalised doubled-angle gradient map, shape (2, height, width)."""
    smooth = cv2.GaussianBlur(coarse_image, (0, 0), _SMOOTH_SIGMA)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    gxx, gyy = gx * gx, gy * gy
    energy = gxx + gyy
    local = np.asarray(cv2.blur(energy, _ENERGY_WINDOW), dtype=np.float32)
    local += np.float32(_ENERGY_FLOOR * float(cv2.mean(energy)[0]) + 1e-3)
    # (gx² − gy², 2·gx·gy) has length |g|²: dividing by |g| and by the local RMS gradient
    # leaves a map whose length is the edge strength relative to its neighbourhood.
    energy += 1e-6
    scale = cv2.sqrt(cv2.multiply(energy, local))
    np.reciprocal(scale, out=scale)
    out = np.empty((2, *coarse_image.shape), dtype=np.float32)
    np.subtract(gxx, gyy, out=out[0])
    out[0] *= scale
    np.multiply(gx, gy, out=out[1])
    out[1] *= 2.0 * scale
    return out


def structure_similarity(a: FloatImage, b: FloatImage) -> float:
    """Normalised correlation of two structure maps, clamped to 0..1 (1: same scene)."""
    if a.shape != b.shape:
        return 0.0
    norm = math.sqrt(float(np.vdot(a, a)) * float(np.vdot(b, b)))
    if norm <= 1e-12:
        return 0.0  # nothing to compare (a uniform picture): the other checks report it
    return min(1.0, max(0.0, float(np.vdot(a, b)) / norm))


def _frozen_array(values: npt.ArrayLike) -> FloatImage:
    # Kept at float16 precision, as stored: a reference read back equals the one written.
    array = np.asarray(values, dtype=np.float16).astype(np.float32)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, slots=True, eq=False)
class Reference:
    """What a camera's picture looks like when all is well.

    `sharpness` is comparable with `Measures.sharpness`; `structure` with `scene_structure`.
    Timestamps are the caller's clock in seconds (wall-clock time, so they mean something
    once stored). `samples`: good frames the reference was learned from.
    """

    sharpness: float
    structure: FloatImage = field(repr=False)
    learned_at: float
    refreshed_at: float
    luma_mean: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        structure = _frozen_array(self.structure)
        if structure.shape != (2, COARSE_SIZE[1], COARSE_SIZE[0]):
            raise ValueError(f"structure of shape {structure.shape}, expected "
                             f"(2, {COARSE_SIZE[1]}, {COARSE_SIZE[0]})")
        if not np.isfinite(structure).all():
            raise ValueError("structure holds non-finite values")
        if not (math.isfinite(self.sharpness) and self.sharpness >= 0):
            raise ValueError(f"sharpness must be finite and >= 0, not {self.sharpness}")
        object.__setattr__(self, "structure", structure)

    def similarity(self, structure: FloatImage) -> float:
        """How much a picture's structure map still matches this reference, 0..1."""
        return structure_similarity(self.structure, structure)

    def to_bytes(self) -> bytes:
        """A compact, pickle-free encoding (about 14 kB) for a PostgreSQL bytea."""
        width, height = COARSE_SIZE
        header = _HEADER.pack(_MAGIC, _VERSION, width, height, self.sharpness,
                              self.luma_mean, self.learned_at, self.refreshed_at,
                              self.samples)
        return header + self.structure.astype("<f2").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        """Read `to_bytes` output; `ReferenceFormatError` on anything else."""
        if len(data) < _HEADER.size:
            raise ReferenceFormatError(f"reference too short ({len(data)} bytes)")
        magic, version, width, height, sharpness, luma, learned, refreshed, samples = (
            _HEADER.unpack_from(data))
        if magic != _MAGIC:
            raise ReferenceFormatError("not a vigie camera reference")
        if version != _VERSION or (width, height) != COARSE_SIZE:
            # Another analysis size or descriptor: learn again rather than compare wrongly.
            raise ReferenceFormatError(
                f"reference format {version} at {width}x{height}, expected "
                f"{_VERSION} at {COARSE_SIZE[0]}x{COARSE_SIZE[1]}")
        expected = _HEADER.size + 2 * width * height * 2
        if len(data) != expected:
            raise ReferenceFormatError(f"reference of {len(data)} bytes, expected {expected}")
        structure = np.frombuffer(data, dtype="<f2", offset=_HEADER.size)
        try:
            return cls(sharpness=sharpness, structure=structure.reshape(2, height, width),
                       learned_at=learned, refreshed_at=refreshed, luma_mean=luma,
                       samples=samples)
        except ValueError as exc:
            raise ReferenceFormatError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ReferenceInfo:
    """When a stored reference was learned and last refreshed, and from how many frames:
    read from its header alone, for the API (the 14 kB structure map stays in the worker)."""

    learned_at: float
    refreshed_at: float
    samples: int

    @classmethod
    def of(cls, data: bytes) -> ReferenceInfo | None:
        """The header of `Reference.to_bytes` output; None when it is not one."""
        if len(data) < _HEADER.size:
            return None
        magic, version, *_, learned, refreshed, samples = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            return None
        return cls(learned_at=learned, refreshed_at=refreshed, samples=samples)


class ReferenceLearner:
    """Learns a camera's reference from good frames, then keeps it up to date.

    Feed it every analysed frame with the reasons found for it (picture reasons and
    "frozen"): frames with any reason are skipped. While learning, good picture time is
    counted between consecutive good frames, unless a bad frame came between them or they
    are more than `_MAX_GAP` (or 5 × `analyse_every`) apart: a covered lens or an outage is
    not good picture. If the view itself changes during learning (a camera still being aimed,
    a PTZ on tour) learning starts again, unless the camera's "moved" check is disabled.
    Timestamps are seconds of wall-clock time, like those stored in the reference.
    """

    def __init__(
        self,
        checks: CameraChecks,
        reference: Reference | None = None,
        *,
        min_samples: int = MIN_SAMPLES,
        refresh_tau: float = REFRESH_TAU,
        refresh_every: float = REFRESH_EVERY,
    ) -> None:
        self._checks = checks
        self._min_samples = min_samples
        self._refresh_tau = refresh_tau
        self._refresh_every = refresh_every
        self._max_gap = max(5.0 * checks.analyse_every, _MAX_GAP)
        self._reference = reference
        self._sum: npt.NDArray[np.float64] | None = None
        self._count = 0
        self._sharpness: deque[float] = deque(maxlen=_HISTORY)
        self._luma = 0.0
        self._good_time = 0.0
        self._last_good: float | None = None

    @property
    def reference(self) -> Reference | None:
        """The current reference; None while learning."""
        return self._reference

    @property
    def learning(self) -> bool:
        return self._reference is None

    @property
    def learned_for(self) -> float:
        """Seconds of good picture gathered so far by the current learning."""
        return self._good_time

    @property
    def learned_frames(self) -> int:
        """Good frames gathered so far by the current learning."""
        return self._count

    @property
    def progress(self) -> float:
        """How far the current learning is, 0..1: both its time and its frames count."""
        if self._reference is not None:
            return 1.0
        time_share = self._good_time / self._checks.learn_for if self._checks.learn_for else 1.0
        return max(0.0, min(1.0, time_share, self._count / max(self._min_samples, 1)))

    def relearn(self) -> None:
        """Forget the reference and learn it again (after a planned change of view)."""
        self._reference = None
        self._restart()

    def feed(
        self,
        ts: float,
        thumb: npt.NDArray[np.uint8],
        measures: Measures,
        reasons: Collection[str] = frozenset(),
    ) -> Reference | None:
        """Learn from, or refresh with, one analysed frame; returns the current reference
        (a new object whenever it changed, for the caller to store)."""
        if self._reference is not None:
            if not reasons:
                self.refresh(ts, thumb, measures)
            return self._reference
        if reasons:
            self._last_good = None  # the run of good picture is broken
            return None
        self._learn(ts, scene_structure(coarse(thumb)), measures)
        return self._reference

    def refresh(self, ts: float, thumb: npt.NDArray[np.uint8], measures: Measures) -> None:
        """Blend one good frame into the structure map, at most every `refresh_every` s."""
        ref = self._reference
        if ref is None or ts - ref.refreshed_at < self._refresh_every:
            return
        similarity = measures.similarity
        if similarity is None or similarity < max(REFRESH_MIN_SIMILARITY,
                                                  self._checks.moved_below):
            return
        step = min(ts - ref.refreshed_at, _REFRESH_MAX_STEP)
        alpha = 1.0 - math.exp(-step / self._refresh_tau)
        structure = (1.0 - alpha) * ref.structure + alpha * scene_structure(coarse(thumb))
        self._reference = Reference(
            sharpness=ref.sharpness, structure=structure, learned_at=ref.learned_at,
            refreshed_at=ts, luma_mean=(1.0 - alpha) * ref.luma_mean + alpha * measures.luma_mean,
            samples=ref.samples)

    def _restart(self) -> None:
        self._sum = None
        self._count = 0
        self._sharpness.clear()
        self._luma = 0.0
        self._good_time = 0.0
        self._last_good = None

    def _learn(self, ts: float, structure: FloatImage, measures: Measures) -> None:
        if self._sum is not None and "moved" not in self._checks.disabled:
            mean = (self._sum / self._count).astype(np.float32)
            if structure_similarity(structure, mean) < self._checks.moved_below:
                self._restart()  # the view changed while learning: learn the new one
        if self._last_good is not None:
            if ts <= self._last_good:
                return  # a repeated or out-of-order timestamp adds nothing
            if ts - self._last_good <= self._max_gap:
                self._good_time += ts - self._last_good
        self._last_good = ts
        self._sum = structure.astype(np.float64) if self._sum is None else self._sum + structure
        self._count += 1
        self._sharpness.append(measures.sharpness)
        self._luma += measures.luma_mean
        if self._good_time >= self._checks.learn_for and self._count >= self._min_samples:
            self._reference = Reference(
                sharpness=float(np.median(np.asarray(self._sharpness))),
                structure=(self._sum / self._count).astype(np.float32), learned_at=ts,
                refreshed_at=ts, luma_mean=self._luma / self._count, samples=self._count)
            self._restart()
