"""JSON schemas of the API's answers and bodies (OpenAPI components)."""

from __future__ import annotations

from typing import Any

from vigie.api._spec import list_schema

__all__ = ["SCHEMAS"]

_TS = {"type": "string", "format": "date-time"}
_TS_NULL = {"type": "string", "format": "date-time", "nullable": True}
_STR_NULL = {"type": "string", "nullable": True}
_SEVERITY = {"type": "string", "enum": ["critical", "major", "minor", "info"]}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "HistoryEntry": {
        "type": "object", "required": ["at", "actor", "action"],
        "properties": {"at": _TS, "actor": {"type": "string"}, "action": {"type": "string"},
                       "comment": _STR_NULL, "details": {"type": "object"}},
    },
    "Alert": {
        "type": "object",
        "required": ["id", "fingerprint", "site", "source", "kind", "severity", "state", "title",
                     "count", "opened_at", "last_seen_at", "escalation_level", "silenced",
                     "snapshots"],
        "properties": {
            "id": {"type": "string", "format": "uuid"}, "fingerprint": {"type": "string"},
            "site": {"type": "string"}, "source": {"type": "string"},
            "source_type": {"type": "string", "enum": ["sensor", "camera", "site"]},
            "kind": {"type": "string"}, "severity": _SEVERITY,
            "state": {"type": "string", "enum": ["open", "acknowledged", "resolved"]},
            "title": {"type": "string"}, "details": {"type": "object"},
            "count": {"type": "integer"}, "opened_at": _TS, "last_seen_at": _TS,
            "acknowledged_by": _STR_NULL, "acknowledged_at": _TS_NULL,
            "resolved_by": _STR_NULL, "resolved_at": _TS_NULL,
            "escalation_level": {"type": "integer"}, "silenced": {"type": "boolean"},
            "snapshots": {"type": "array", "items": {}},
            "event_id": {"type": "integer", "nullable": True},
            "related": {"type": "array", "description": "alerts linked by correlation",
                        "items": {"type": "string", "format": "uuid"}},
            "next_escalation_at": _TS_NULL, "escalated_at": _TS_NULL,
            "assigned_to": _STR_NULL, "assigned_at": _TS_NULL,
            "resolution": {"type": "string", "nullable": True, "enum": [
                "real_incident", "false_alarm", "technical_fault", "test", "auto"]},
            "history": {"type": "array",
                        "items": {"$ref": "#/components/schemas/HistoryEntry"}},
        },
    },
    "AlertList": list_schema("Alert"),
    "Event": {
        "type": "object",
        "required": ["id", "site", "sensor", "kind", "state", "ts", "received_at", "data"],
        "properties": {"id": {"type": "integer"}, "site": {"type": "string"},
                       "sensor": {"type": "string"}, "kind": {"type": "string"},
                       "state": {"type": "string"}, "zone": {"type": "string"}, "ts": _TS,
                       "received_at": _TS, "data": {"type": "object"}},
    },
    "EventList": list_schema("Event"),
    "Sensor": {
        "type": "object", "required": ["id", "site", "kind"],
        "properties": {"id": {"type": "string"}, "site": {"type": "string"},
                       "kind": {"type": "string"}, "name": {"type": "string"},
                       "zone": {"type": "string"}, "format": {"type": "string"},
                       "last_state": _STR_NULL, "last_event_at": _TS_NULL,
                       "online": {"type": "boolean", "nullable": True},
                       "battery": {"type": "integer", "nullable": True}},
    },
    "SensorList": list_schema("Sensor"),
    "Site": {
        "type": "object", "required": ["id", "name", "uai"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "uai": {"type": "string"},
            "commune": {"type": "string"}, "timezone": {"type": "string"},
            "holiday_zone": _STR_NULL, "open_now": {"type": "boolean"},
            "cameras": {"type": "integer"}, "sensors": {"type": "integer"},
            "alerts_open": {"type": "object", "additionalProperties": {"type": "integer"}},
            "camera_states": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "SiteList": list_schema("Site"),
    "DeadLetter": {
        "type": "object", "required": ["id", "received_at", "topic", "reason", "detail"],
        "properties": {"id": {"type": "integer"}, "received_at": _TS,
                       "topic": {"type": "string"}, "reason": {"type": "string"},
                       "detail": {"type": "string"}, "payload_size": {"type": "integer"}},
    },
    "DeadLetterList": list_schema("DeadLetter"),
    "CommentBody": {
        "type": "object", "additionalProperties": False,
        # null or left out: no comment
        "properties": {"comment": {"type": "string", "maxLength": 4000, "nullable": True}},
    },
    "RequiredCommentBody": {
        "type": "object", "additionalProperties": False, "required": ["comment"],
        "properties": {"comment": {"type": "string", "minLength": 1, "maxLength": 4000}},
    },
    "Camera": {
        "type": "object",
        "required": ["id", "site", "name", "zone", "url", "state", "reasons", "since",
                     "last_frame_at", "fps", "width", "height", "codec", "bitrate",
                     "reconnects"],
        "properties": {
            "id": {"type": "string"}, "site": {"type": "string"}, "name": {"type": "string"},
            "zone": {"type": "string"},
            "url": {"type": "string", "description": "credentials redacted"},
            "state": {"type": "string", "enum": ["unknown", "ok", "degraded", "offline"]},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "since": _TS_NULL, "last_frame_at": _TS_NULL, "last_analysed_at": _TS_NULL,
            "fps": {"type": "number", "nullable": True},
            "width": {"type": "integer", "nullable": True},
            "height": {"type": "integer", "nullable": True},
            "codec": _STR_NULL, "bitrate": {"type": "number", "nullable": True},
            "reconnects": {"type": "integer"}, "error": _STR_NULL,
            "stale": {"type": "boolean",
                      "description": "its worker is late or restarting: last known state"},
            "last_report_at": _TS_NULL,
            "reference": {"$ref": "#/components/schemas/ReferenceState"},
            "node": {"type": "string", "nullable": True,
                     "description": "several nodes: the node that watches the camera (null: "
                                    "none holds its lease now)"},
            "as_of": {**_TS_NULL, "description": "several nodes: null when the answering "
                      "node watches the camera (live); else when its holder published the "
                      "figures shown"},
            "snapshot_at": {**_TS_NULL, "description": "several nodes, a camera watched "
                            "elsewhere: when its published picture was taken"},
            "availability": {"type": "object", "properties": {
                "24h": {"type": "number", "nullable": True},
                "7d": {"type": "number", "nullable": True}}},
            "checks": {"type": "object"},
        },
    },
    "CameraList": list_schema("Camera"),
    "Transition": {
        "type": "object", "required": ["at", "state", "reasons"],
        "properties": {"at": _TS, "state": {"type": "string"},
                       "reasons": {"type": "array", "items": {"type": "string"}},
                       "previous": _STR_NULL, "details": {"type": "object"}},
    },
    "CameraHistory": {
        "type": "object", "required": ["items", "next_cursor", "availability"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Transition"}},
            "next_cursor": _STR_NULL, "availability": {"type": "number", "nullable": True}},
    },
    "Relearn": {
        "type": "object", "required": ["camera", "site", "status"],
        "properties": {"camera": {"type": "string"}, "site": {"type": "string"},
                       "status": {"type": "string"}, "learn_for": {"type": "number"}},
    },
    "ReferenceState": {
        "type": "object", "required": ["status"],
        "description": "learned (learned_at, refreshed_at, samples); learning while the "
                       "camera sends picture (progress 0..1, learned_for s, samples so far); "
                       "none: no reference and nothing to learn from now (offline)",
        "properties": {
            "status": {"type": "string", "enum": ["learned", "learning", "none"]},
            "learned_at": _TS, "refreshed_at": _TS, "samples": {"type": "integer"},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "learned_for": {"type": "number"}, "learn_for": {"type": "number"}},
    },
    "RelearnBody": {
        "type": "object", "additionalProperties": False, "example": {"cameras": ["entree"]},
        "properties": {"cameras": {
            "type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "string"},
            "description": "camera ids of the site (default: every camera of the site)"}},
    },
    "RelearnSite": {
        "type": "object", "required": ["site", "requested_at", "items"],
        "properties": {
            "site": {"type": "string"}, "requested_at": _TS,
            "items": {"type": "array", "items": {
                "type": "object", "required": ["camera", "state", "relearn"],
                "properties": {
                    "camera": {"type": "string"}, "state": {"type": "string"},
                    "relearn": {"type": "string", "enum": ["learning", "not_watched_here"]},
                    "learn_for": {"type": "number"}}}}},
    },
    "FeedStatus": {
        "type": "object", "required": ["head", "since_min", "following"],
        "properties": {
            "head": {"type": "integer", "description": "newest seq sent to this node's clients"},
            "since_min": {"type": "integer",
                          "description": "the oldest since= that resumes without a gap"},
            "following": {"type": "boolean",
                          "description": "this node listens to the cluster's changes now"}},
    },
    "StreamMessage": {
        "type": "object", "required": ["type"],
        "description": "A message of GET /api/v1/stream; feed.* messages carry no seq, nor "
                       "do provisional ones (made while the database is away, not stored "
                       "yet).",
        "properties": {
            "type": {"type": "string", "enum": [
                "alert.opened", "alert.repeated", "alert.acknowledged", "alert.resolved",
                "alert.commented", "alert.correlated", "alert.unacknowledged", "alert.assigned",
                "alert.escalated", "alert.silenced", "alert.unsilenced", "camera.state",
                "feed.hello", "feed.gap"]},
            "seq": {"type": "integer", "nullable": True}, "at": _TS, "site": {"type": "string"},
            "provisional": {"type": "boolean", "description": (
                "told while the database is away: its stored copy follows when it is back "
                "(a provisional alert.opened or alert.resolved is not told again)")},
            "actor": {"type": "string"}, "alert": {"$ref": "#/components/schemas/Alert"},
            "camera": {
                "type": "object", "required": ["id", "site", "state", "reasons", "since"],
                "properties": {
                    "id": {"type": "string"}, "site": {"type": "string"},
                    "state": {"type": "string",
                              "enum": ["unknown", "ok", "degraded", "offline"]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "since": _TS}},
            "head": {"type": "integer"}, "since": {"type": "integer", "nullable": True},
            "since_min": {"type": "integer"},
            "reason": {"type": "string", "enum": ["trimmed", "unknown"]},
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "at", "actor", "action", "target", "site", "remote", "outcome",
                     "details"],
        "properties": {
            "id": {"type": "integer"}, "at": _TS, "actor": {"type": "string"},
            "action": {"type": "string"}, "target": {"type": "string", "nullable": True},
            "site": {"type": "string", "nullable": True},
            "remote": {"type": "string", "nullable": True,
                       "description": "client address (forwarded by a trusted proxy)"},
            "outcome": {"type": "string", "description": "HTTP status, or ok"},
            "details": {"type": "object"}},
    },
    "AuditList": list_schema("AuditEntry"),
    "Node": {
        "type": "object",
        "required": ["name", "state", "clustered", "cameras", "started_at", "last_seen_at",
                     "lease_expires_at"],
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string", "enum": ["up", "stopped", "lost"],
                      "description": "lost: up, but silent for longer than its lease"},
            "clustered": {"type": "boolean",
                          "description": "shares the cameras through leases"},
            "cameras": {"type": "integer", "description": "cameras it watches"},
            "started_at": _TS, "last_seen_at": _TS, "lease_expires_at": _TS},
    },
    "NodeList": list_schema("Node"),
    "Health": {
        "type": "object", "required": ["status"],
        "properties": {"status": {"type": "string"}, "checks": {"type": "object"}},
    },
}


def _workflow_schemas() -> dict[str, Any]:
    from vigie.api._alert_actions import ACTION_SCHEMAS
    from vigie.api._notifiers import NOTIFIER_SCHEMAS
    from vigie.api._reports import REPORT_SCHEMAS
    from vigie.api._silences import SILENCE_SCHEMAS

    return {**ACTION_SCHEMAS, **SILENCE_SCHEMAS, **REPORT_SCHEMAS, **NOTIFIER_SCHEMAS}


SCHEMAS.update(_workflow_schemas())
