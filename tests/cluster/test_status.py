"""The view of a camera another node watches, from what the database holds of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from vigie.cluster import remote_view

CONFIGURED = {"id": "entree", "site": "clg-a", "name": "Entrée", "zone": "hall",
              "url": "rtsp://***@10.0.0.1:554/s"}
T0 = datetime(2026, 11, 28, 21, 0, tzinfo=UTC)
PUBLISHED = {"state": "ok", "reasons": [], "since": (T0 - timedelta(hours=1)).isoformat(),
             "fps": 10.0, "width": 640, "height": 360, "codec": "h264", "reconnects": 2,
             "last_frame_at": T0.isoformat(), "stale": False, "url": "never taken from here"}


def _row(**over: Any) -> dict[str, Any]:
    return {"holder": "n2", "reported_by": "n2", "updated_at": T0, "view": PUBLISHED,
            "snapshot_at": T0 - timedelta(seconds=20), "changed_at": T0 - timedelta(hours=1),
            "state": "ok", "reasons": [], **over}


def test_the_holders_view_with_the_configuration_and_who_watches_it() -> None:
    view = remote_view(CONFIGURED, _row())
    assert view["url"] == CONFIGURED["url"] and view["node"] == "n2"
    assert (view["state"], view["fps"], view["reconnects"], view["stale"]) == (
        "ok", 10.0, 2, False)
    assert view["as_of"] == T0.isoformat()
    assert view["snapshot_at"] == (T0 - timedelta(seconds=20)).isoformat()


def test_a_transition_newer_than_the_view_gives_the_state() -> None:
    at = T0 + timedelta(seconds=2)
    view = remote_view(CONFIGURED, _row(changed_at=at, state="offline",
                                        reasons=["offline"]))
    assert (view["state"], view["reasons"], view["since"]) == (
        "offline", ["offline"], at.isoformat())
    assert view["fps"] == 10.0  # the last measurements stay the published ones


def test_nobody_holding_it_makes_the_published_view_stale() -> None:
    view = remote_view(CONFIGURED, _row(holder=None))
    assert view["node"] is None and view["stale"] is True and view["state"] == "ok"


def test_nothing_known_is_unknown() -> None:
    view = remote_view(CONFIGURED, None)
    assert (view["state"], view["node"], view["as_of"], view["stale"]) == (
        "unknown", None, None, False)
