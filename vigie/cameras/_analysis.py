"""One camera's picture analysis, in its worker: checks, freeze timing, the reference, and
the snapshot of the last analysed frame."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vigie.cameras._checks import FreezeDetector, measure, picture_reasons, thumbnail
from vigie.cameras._reference import Reference, ReferenceLearner
from vigie.config import CameraChecks

__all__ = ["Analyser"]

SNAPSHOT_EVERY = 10.0  # seconds between snapshots, unless the picture's verdict changes
SNAPSHOT_WIDTH = 640


class Analyser:
    def __init__(self, checks: CameraChecks, reference: bytes | None) -> None:
        self.checks = checks
        self.reasons: frozenset[str] = frozenset()
        self.measures: dict[str, float] | None = None
        self.analysed_at: float | None = None
        self.check_seconds: float | None = None
        self.snapshot_at: float | None = None
        self.snapshot_wanted = False  # asked for by the node (an alarm in the camera's zone)
        self._previous: np.ndarray | None = None
        self._freeze = FreezeDetector(checks)
        stored: Reference | None = None
        if reference is not None:
            try:
                stored = Reference.from_bytes(reference)
            except ValueError:
                stored = None  # unreadable (an older format): learn a new one
        self._learner = ReferenceLearner(checks, stored)
        self._learned: bytes | None = None
        self._last_reasons: frozenset[str] = frozenset()

    def analyse(self, luma: np.ndarray, now: float, limited_range: bool = True) -> None:
        """Check one decoded keyframe's luma plane (limited range: black at 16)."""
        started = time.perf_counter()
        thumb = thumbnail(luma, limited_range=limited_range)
        reference = self._learner.reference
        m = measure(thumb, self._previous, reference)
        self._previous = thumb
        reasons = set(picture_reasons(m, reference, self.checks))
        # A flat picture (black, covered) cannot show whether it is frozen: one fault, one
        # name. A moved camera sees another scene, whose sharpness the reference says nothing of.
        if self._freeze.update(now, m.change) and not reasons & {"black", "covered"}:
            reasons.add("frozen")
        if "moved" in reasons:
            reasons.discard("blurred")
        learned = self._learner.feed(now, thumb, m, reasons)
        if learned is not None and learned is not reference:
            self._learned = learned.to_bytes()  # new or refreshed: the node stores it
        self.reasons = frozenset(reasons)
        self.measures = {k: round(float(v), 4) for k, v in asdict(m).items() if v is not None}
        self.analysed_at = now
        self.check_seconds = time.perf_counter() - started

    def reconnected(self) -> None:
        """A new connection: the next frame has nothing to be compared with."""
        self._previous = None
        self._freeze.reset()

    def relearn(self) -> None:
        self._learner.relearn()

    @property
    def learning(self) -> tuple[float, int, float] | None:
        """While the reference is being learned: (seconds of good picture, good frames,
        progress 0..1) so far; None once there is one."""
        learner = self._learner
        if not learner.learning:
            return None
        return (round(learner.learned_for, 1), learner.learned_frames,
                round(learner.progress, 3))

    def take_learned_reference(self) -> bytes | None:
        """A reference learned or refreshed since the last call, to store (once)."""
        learned, self._learned = self._learned, None
        return learned

    def snapshot_due(self, now: float) -> bool:
        changed = self.reasons != self._last_reasons
        if self.snapshot_wanted:
            return True
        return changed or self.snapshot_at is None or now - self.snapshot_at >= SNAPSHOT_EVERY

    def write_snapshot(self, frame: Any, path: Path) -> None:
        """The analysed frame as JPEG, replaced atomically (readers never see half a file)."""
        height = max(2, round(frame.height * SNAPSHOT_WIDTH / max(frame.width, 1)))
        image = frame.reformat(width=min(SNAPSHOT_WIDTH, frame.width),
                               height=min(height, frame.height), format="bgr24").to_ndarray()
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jpg.tmp")
        tmp.write_bytes(jpeg.tobytes())
        os.replace(tmp, path)
        self.snapshot_at = time.time()
        self.snapshot_wanted = False
        self._last_reasons = self.reasons
