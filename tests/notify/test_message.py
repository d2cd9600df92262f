"""What notifiers send, without I/O: filters, Alertmanager alerts, webhook bodies, backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from vigie.notify import AlertFilter, Notification, RetryPolicy, backoff, sign
from vigie.notify._message import am_alert, am_labels, webhook_body

ALERT: dict[str, Any] = {
    "id": "5b0c7c55-8f0e-4a43-9d55-8c3e3b0a1e11", "site": "clg-jean-moulin",
    "source": "porte-hall", "source_type": "sensor", "kind": "device_offline",
    "severity": "major", "state": "open", "title": "Device offline: porte-hall",
    "details": {"zone": "entree"}, "count": 3, "opened_at": "2026-11-28T01:13:00+00:00",
    "resolved_at": None, "escalation_level": 2, "acknowledged_by": None,
}
NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def test_filter_reads_silenced_defensively() -> None:
    f = AlertFilter(frozenset({"major"}), None)
    assert f.matches(ALERT)  # no `silenced` key at all: not silenced
    assert not f.matches({**ALERT, "silenced": True})
    assert f.matches({**ALERT, "silenced": False})
    assert not f.matches({**ALERT, "severity": "minor"})
    assert not AlertFilter(frozenset({"major"}), frozenset({"clg-pasteur"})).matches(ALERT)


def test_alertmanager_labels_and_annotations() -> None:
    assert am_labels(ALERT) == {
        "alertname": "VigieDeviceOffline", "site": "clg-jean-moulin", "source": "porte-hall",
        "source_type": "sensor", "kind": "device_offline", "severity": "major",
        "escalation_level": "2"}
    body = am_alert(ALERT, "https://vigie.test")
    assert "endsAt" not in body  # active: Alertmanager's resolve_timeout runs
    assert body["startsAt"] == ALERT["opened_at"]
    assert body["generatorURL"] == f"https://vigie.test/api/v1/alerts/{ALERT['id']}"
    assert body["annotations"]["details"] == '{"zone":"entree"}'
    assert body["annotations"]["count"] == "3"
    resolved = {**ALERT, "state": "resolved", "resolved_at": "2026-11-28T01:20:00+00:00"}
    assert am_alert(resolved, "https://vigie.test")["endsAt"] == "2026-11-28T01:20:00+00:00"
    assert am_alert(ALERT, "x", ends_at=NOW)["endsAt"] == NOW.isoformat()


def test_webhook_body_is_stable_per_delivery_and_signed_over_its_bytes() -> None:
    n = Notification(seq=41, type="alert.escalated", at=NOW, site="clg-jean-moulin",
                     actor="vigie", alert=ALERT)
    body = webhook_body(n, "csu", "https://vigie.test", NOW)
    doc = orjson.loads(body)
    assert doc["id"] == "csu:41" and doc["type"] == "alert.escalated" and doc["seq"] == 41
    assert doc["url"] == f"https://vigie.test/api/v1/alerts/{ALERT['id']}"
    assert doc["alert"] == ALERT
    # HMAC-SHA256 test vector of RFC 4231, case 2.
    assert sign(b"Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert sign(b"k", body) != sign(b"k", body + b" ")


@pytest.mark.parametrize("seed", range(20))
def test_backoff_doubles_with_jitter_up_to_its_cap(seed: int) -> None:
    policy = RetryPolicy(attempts=10, first=1.0, max=30.0)
    rng = random.Random(seed)
    delays = [backoff(policy, n, rng) for n in range(1, 9)]
    ceilings = [1, 2, 4, 8, 16, 30, 30, 30]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_jitter_spreads_clients() -> None:
    policy = RetryPolicy(attempts=3, first=10.0, max=60.0)
    rng = random.Random(1)
    spread = {round(backoff(policy, 1, rng), 3) for _ in range(50)}
    assert len(spread) > 40 and min(spread) >= 5.0 and max(spread) <= 10.0


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300.0), ("1h30m", 5400.0), ("300s", 300.0), ("1d", 86400.0), ("250ms", 0.25),
    ("5", None), ("", None), ("5 m", None), ("m5", None)])
def test_alertmanager_durations(text: str, seconds: float | None) -> None:
    from vigie.notify._alertmanager import go_duration

    assert go_duration(text) == seconds
