"""What a notifier is told (a feed message about an alert) and what it sends: a signed
webhook body, Alertmanager API v2 alerts. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

__all__ = [
    "SIGNATURE_HEADER",
    "AlertFilter",
    "Notification",
    "alert_url",
    "am_alert",
    "am_labels",
    "sign",
    "webhook_body",
]

SIGNATURE_HEADER = "X-Vigie-Signature-256"
WEBHOOK_VERSION = 1


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert change of the live feed, in the feed's (commit) order."""

    seq: int
    type: str  # alert.opened, alert.escalated, ...
    at: datetime
    site: str
    actor: str
    alert: dict[str, Any]  # the alert as the API shows it

    @property
    def action(self) -> str:
        return self.type.removeprefix("alert.")

    @property
    def alert_id(self) -> str | None:
        value = self.alert.get("id")
        return str(value) if value is not None else None

    @classmethod
    def from_row(cls, row: Any) -> Notification:
        payload = orjson.loads(row["payload"])
        return cls(seq=row["seq"], type=row["type"], at=row["at"], site=row["site"],
                   actor=str(payload.get("actor", "vigie")), alert=payload.get("alert") or {})

    @classmethod
    def from_dead_letter(cls, letter: Mapping[str, Any]) -> Notification:
        """The change a dead letter was for. A webhook's letter holds the body it was to
        send (its `at`, `actor`, `alert`); an Alertmanager letter holds the posts, and its
        channel sends the alert's current state instead (`Channel.redeliver`)."""
        body = letter["payload"] if isinstance(letter["payload"], dict) else {}
        try:
            at = datetime.fromisoformat(str(body["at"]))
        except (KeyError, ValueError):
            at = letter["failed_at"]
        alert = body.get("alert")
        if not isinstance(alert, dict):
            alert = {"id": letter["alert_id"], "site": letter["site"]}
        return cls(seq=letter["seq"], type=letter["type"], at=at, site=letter["site"],
                   actor=str(body.get("actor", "vigie")), alert=alert)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alerts a notifier is about: its severities and sites; never a silenced one."""

    severities: frozenset[str]
    sites: frozenset[str] | None  # None: every site

    @classmethod
    def of(cls, config: Any) -> AlertFilter:
        """From a notifier's `severities` and `sites` (empty: every site)."""
        return cls(frozenset(config.severities),
                   frozenset(config.sites) if config.sites else None)

    def matches(self, alert: Mapping[str, Any]) -> bool:
        # `silenced` read defensively: an alert written before the column existed has none.
        return (not alert.get("silenced", False)
                and alert.get("severity") in self.severities
                and (self.sites is None or alert.get("site") in self.sites))


def alert_url(base_url: str, alert_id: str | None) -> str:
    return f"{base_url}/api/v1/alerts/{alert_id}"


def webhook_body(n: Notification, notifier: str, base_url: str, sent_at: datetime, *,
                 redelivered: bool = False) -> bytes:
    """The JSON body of a webhook call. `id` is the same for every attempt and after a
    restart: a receiver de-duplicates on it (delivery is at least once). `redelivered`: a
    dead letter sent again on request, older news than what followed it (see
    `WebhookChannel.redeliver`)."""
    extra = {"redelivered": True} if redelivered else {}
    return orjson.dumps({
        "version": WEBHOOK_VERSION,
        "id": f"{notifier}:{n.seq}",
        "type": n.type,
        "seq": n.seq,
        "at": n.at.isoformat(),
        "sent_at": sent_at.isoformat(),
        "actor": n.actor,
        "url": alert_url(base_url, n.alert_id),
        "alert": n.alert,
        **extra,
    })


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the body>`, GitHub's convention: a receiver recomputes it
    over the raw body and compares in constant time."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


def am_labels(alert: Mapping[str, Any]) -> dict[str, str]:
    """Alertmanager's identity of an alert. The escalation level is one of them: an
    escalation is then a new alert to Alertmanager, which notifies it again (and routes can
    match it), while the previous level is ended."""
    return {
        "alertname": "Vigie" + _camel(str(alert.get("kind", "alert"))),
        "site": str(alert.get("site", "")),
        "source": str(alert.get("source", "")),
        "source_type": str(alert.get("source_type", "")),
        "kind": str(alert.get("kind", "")),
        "severity": str(alert.get("severity", "")),
        "escalation_level": str(alert.get("escalation_level", 0)),
    }


def am_alert(alert: Mapping[str, Any], base_url: str, *, ends_at: datetime | None = None,
             labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One alert for `POST /api/v2/alerts`. Active: no endsAt (Alertmanager resolves it
    after its resolve_timeout unless it is posted again). Resolved: endsAt = resolved_at."""
    url = alert_url(base_url, str(alert.get("id")))
    annotations = {
        "title": str(alert.get("title", "")),
        "summary": str(alert.get("title", "")),
        "details": orjson.dumps(alert.get("details") or {}).decode(),
        "url": url,
        "state": str(alert.get("state", "")),
        "count": str(alert.get("count", 1)),
    }
    if alert.get("acknowledged_by"):
        annotations["acknowledged_by"] = str(alert["acknowledged_by"])
    body: dict[str, Any] = {
        "labels": dict(labels) if labels is not None else am_labels(alert),
        "annotations": annotations,
        "startsAt": alert.get("opened_at"),
        "generatorURL": url,
    }
    if ends_at is not None:
        body["endsAt"] = ends_at.isoformat()
    elif alert.get("state") == "resolved" and alert.get("resolved_at"):
        body["endsAt"] = alert["resolved_at"]
    return body
