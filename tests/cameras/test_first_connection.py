"""When a camera never received yet is judged offline (pure logic, no stream): once its
first connection failed and `offline_after` passed, or once a connection has had every
chance to open. Not sooner: a node starting on a loaded machine opens its streams late."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vigie.cameras._stream import CONNECT_TIMEOUT
from vigie.cameras._supervisor import FIRST_CONNECTION_GRACE, CameraSupervisor
from vigie.cameras._worker import Sample

START, OFFLINE_AFTER = 1000.0, 3.0
CAP = OFFLINE_AFTER + CONNECT_TIMEOUT + FIRST_CONNECTION_GRACE


def _sample(at: float, reconnects: int = 0, last_packet_at: float | None = None) -> Sample:
    return Sample(key="clg/cam", at=at, connected=last_packet_at is not None,
                  last_packet_at=last_packet_at, fps=0.0, bitrate=0.0, width=0, height=0,
                  codec="", reconnects=reconnects, reasons=frozenset(), measures=None,
                  analysed_at=None, check_seconds=None, snapshot_at=None,
                  error="ConnectionRefusedError" if reconnects else None)


def _judged(sample: Sample | None, now: float, lag: float = 0.0) -> Any:
    state = SimpleNamespace(sample=sample, watching_since=START,
                            checks=SimpleNamespace(offline_after=OFFLINE_AFTER))
    return CameraSupervisor._reasons(None, state, now, lag)  # type: ignore[arg-type]


@pytest.mark.parametrize(("sample", "after", "judged"), [
    # Still opening (a slow node, a slow camera): nothing to judge until the cap.
    (None, OFFLINE_AFTER + 1, None),
    (_sample(START + 1), OFFLINE_AFTER + 1, None),
    (_sample(START + 1), CAP - 0.1, None),
    (_sample(START + 1), CAP + 0.1, frozenset({"offline"})),
    # Refused, or timed out on opening: offline once `offline_after` has passed.
    (_sample(START + 1, reconnects=1), OFFLINE_AFTER - 0.1, None),
    (_sample(START + 1, reconnects=1), OFFLINE_AFTER + 0.1, frozenset({"offline"})),
    # A failure reported before this watch began (a sample from an earlier worker) is not
    # this connection's.
    (_sample(START - 1, reconnects=1), OFFLINE_AFTER + 1, None),
    # Receiving: judged on its packets.
    (_sample(START + 4, last_packet_at=START + 3.9), 4.5, frozenset()),
])
def test_a_camera_never_received_yet(sample: Sample | None, after: float,
                                     judged: frozenset[str] | None) -> None:
    assert _judged(sample, START + after) == judged


def test_a_starved_worker_moves_the_deadlines() -> None:
    failed = _sample(START + 1, reconnects=1)
    assert _judged(failed, START + OFFLINE_AFTER + 1, lag=2.0) is None
    assert _judged(None, START + CAP + 1, lag=2.0) is None
    assert _judged(None, START + CAP + 2.1, lag=2.0) == frozenset({"offline"})
