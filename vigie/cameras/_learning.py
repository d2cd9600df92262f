"""Where each camera's reference stands, as the node knows it: for the API's camera views and
for a technician re-learning a whole site after a planned change.

The reference itself lives in the camera's worker; the node knows a learned one from its
header (stored at start, or sent by the worker when learned or refreshed) and a learning one
from the worker's samples. A re-learn is asked at a time: a reference the worker sent before
it had heard of the request (a refresh of the old one, in flight) is older than that, and
must neither show as learned nor be stored over the forgotten one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vigie.cameras._reference import ReferenceInfo

if TYPE_CHECKING:
    from vigie.cameras._worker import Sample

__all__ = ["ReferenceStatus"]

STATUSES = ("learned", "learning", "none")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


@dataclass
class ReferenceStatus:
    info: ReferenceInfo | None = None  # the learned reference, if the node knows of one
    relearn_at: float | None = None  # wall-clock time of the last re-learn asked

    def known(self, data: bytes | None) -> None:
        """A reference handed to the camera's worker (stored, or from another node)."""
        self.info = ReferenceInfo.of(data) if data is not None else None

    def relearn(self, now: float) -> None:
        self.info = None
        self.relearn_at = now

    def learned(self, data: bytes) -> bool:
        """A reference the worker learned or refreshed; False when it predates the last
        re-learn asked (then it is to be dropped, not stored)."""
        info = ReferenceInfo.of(data)
        if info is None or (self.relearn_at is not None and info.learned_at < self.relearn_at):
            return False
        self.info = info
        return True

    def view(self, sample: Sample | None, learn_for: float, receiving: bool) -> dict[str, Any]:
        """`learned` (learned_at, refreshed_at, samples); `learning` while the camera sends
        picture to learn from (progress 0..1, seconds and frames so far); `none` otherwise:
        no reference and nothing to learn one from now (offline, not watched, no report)."""
        if self.info is not None:
            return {"status": "learned", "learned_at": _iso(self.info.learned_at),
                    "refreshed_at": _iso(self.info.refreshed_at), "samples": self.info.samples}
        if not receiving or sample is None:
            return {"status": "none", "learn_for": learn_for}
        progress = (0.0, 0, 0.0)
        # A report made before the worker heard of the re-learn says nothing of the new one.
        if sample.learning is not None and (self.relearn_at is None
                                            or sample.at >= self.relearn_at):
            progress = sample.learning
        seconds, frames, share = progress
        return {"status": "learning", "progress": share, "learned_for": seconds,
                "learn_for": learn_for, "samples": frames}
