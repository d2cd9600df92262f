"""Prometheus metrics of one node, in a registry of its own (several nodes can share a
process in tests). Labels are bounded: site, sensor, kind, severity, reason; never a secret."""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

from vigie import __version__

__all__ = ["Metrics"]


class Metrics:
    def __init__(self, node: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        Info("vigie_build", "vigie build information", registry=r).info(
            {"version": __version__, "python": platform.python_version(), "node": node}
        )
        self.sensor_events = Counter(
            "vigie_sensor_events", "Sensor events stored (first delivery only)",
            ["site", "kind"], registry=r)
        self.sensor_duplicates = Counter(
            "vigie_sensor_duplicates", "Redelivered events recognised and stored once",
            registry=r)
        self.ingest_rejected = Counter(
            "vigie_ingest_rejected", "MQTT messages rejected to the dead-letter table",
            ["reason"], registry=r)
        self.mqtt_messages = Counter(
            "vigie_mqtt_messages", "MQTT messages received", registry=r)
        self.mqtt_connected = Gauge(
            "vigie_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.mqtt_reconnects = Counter(
            "vigie_mqtt_reconnects", "Connections to the broker after the first", registry=r)
        self.db_write_queue = Gauge(
            "vigie_db_write_queue", "Messages received and waiting to be written", registry=r)
        self.db_write_batches = Histogram(
            "vigie_db_write_batch_size", "Messages per database write batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000), registry=r)
        self.db_write_seconds = Histogram(
            "vigie_db_write_seconds", "Time to commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r)
        self.db_errors = Counter(
            "vigie_db_errors", "Database operations that failed", ["operation"], registry=r)
        self.db_up = Gauge("vigie_db_up", "1 while the database answers", registry=r)
        # How old the valid tokens the API trusts while the database is away are: a token
        # revoked since is still accepted then. NaN until one list was read (or loaded).
        self.token_snapshot_age = Gauge(
            "vigie_api_token_snapshot_age_seconds",
            "Seconds since the API token snapshot was read from the database", registry=r)
        # Reliability: the local spool (PostgreSQL away) and the length of every queue.
        self.spool_bytes = Gauge(
            "vigie_spool_bytes", "Bytes in the local spool, waiting for the database",
            registry=r)
        self.spool_messages = Gauge(
            "vigie_spool_messages", "Messages in the local spool, waiting for the database",
            registry=r)
        self.spool_limit = Gauge(
            "vigie_spool_limit_bytes", "The spool's cap: at it, acknowledgements stop",
            registry=r)
        self.spool_full = Gauge(
            "vigie_spool_full", "1 while the spool is at its cap (the broker keeps messages)",
            registry=r)
        self.spool_appended = Counter(
            "vigie_spool_appended_messages", "Messages written to the spool, then acknowledged",
            registry=r)
        self.spool_replayed = Counter(
            "vigie_spool_replayed_messages", "Spooled messages written to the database",
            registry=r)
        self.queue_length = Gauge(
            "vigie_queue_length", "Items waiting in an in-memory queue", ["queue"], registry=r)
        self.queue_peak = Gauge(
            "vigie_queue_peak", "The most items an in-memory queue held since the start",
            ["queue"], registry=r)
        self.queue_capacity = Gauge(
            "vigie_queue_capacity", "The bound of an in-memory queue", ["queue"], registry=r)
        self.site_unreachable = Gauge(
            "vigie_site_unreachable", "1 while a site is judged unreachable as a whole",
            ["site"], registry=r)
        self.alerts_open = Gauge(
            "vigie_alerts_open", "Unresolved alerts", ["site", "severity"], registry=r)
        self.alerts_total = Counter(
            "vigie_alerts", "Alerts opened", ["site", "kind", "severity"], registry=r)
        self.alerts_escalated = Counter(
            "vigie_alerts_escalated", "Alert escalations (unacknowledged in time)",
            ["site", "severity"], registry=r)
        self.event_to_alert = Histogram(
            "vigie_event_to_alert_seconds", "From receiving an event to its alert committed",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r)
        self.cameras_watched = Gauge(
            "vigie_cameras_watched", "Cameras this node watches", registry=r)
        self.camera_up = Gauge(
            "vigie_camera_up", "1 unless the camera is offline", ["site", "camera"], registry=r)
        self.camera_state = Gauge(
            "vigie_camera_state", "1 for the camera's current state", ["site", "camera", "state"],
            registry=r)
        self.camera_fps = Gauge(
            "vigie_camera_fps", "Measured frame rate", ["site", "camera"], registry=r)
        self.camera_reconnects = Counter(
            "vigie_camera_reconnects", "Stream reconnections", ["site", "camera"], registry=r)
        self.camera_check_seconds = Histogram(
            "vigie_camera_check_seconds", "Time to decode and analyse one keyframe",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5), registry=r)
        self.camera_worker_up = Gauge(
            "vigie_camera_worker_up", "1 while the camera worker process reports on time",
            ["worker"], registry=r)
        self.camera_worker_restarts = Counter(
            "vigie_camera_worker_restarts", "Camera worker processes restarted",
            ["reason"], registry=r)  # died, hung
        self.camera_worker_lag = Gauge(
            "vigie_camera_worker_lag_seconds",
            "How far behind its one-second reports a camera worker lately was (overload)",
            ["worker"], registry=r)
        self.cameras_stale = Gauge(
            "vigie_cameras_stale", "Cameras not judged: their worker is late or restarting",
            registry=r)
        self.camera_history_queue = Gauge(
            "vigie_camera_history_queue", "Camera history waiting to be written", ["kind"],
            registry=r)
        self.camera_history_dropped = Counter(
            "vigie_camera_history_dropped", "Camera history dropped unwritten (samples only)",
            ["kind"], registry=r)
        self.http_requests = Counter(
            "vigie_http_requests", "API requests", ["route", "method", "status"], registry=r)
        self.http_seconds = Histogram(
            "vigie_http_request_seconds", "API request duration", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=r)

        # Several nodes (vigie.cluster).
        self.cluster_cameras_leased = Gauge(
            "vigie_cluster_cameras_leased", "Cameras whose lease this node holds", registry=r)
        self.cluster_nodes = Gauge(
            "vigie_cluster_nodes", "Live nodes sharing the cameras, as this node sees them",
            registry=r)
        self.cluster_renew_failures = Counter(
            "vigie_cluster_lease_renew_failures",
            "Lease renewals that failed (database unreachable or too slow)", registry=r)
        self.cluster_lease_lapses = Counter(
            "vigie_cluster_lease_lapses",
            "Times this node stopped watching its cameras, unable to prove it held them",
            registry=r)
        self.cluster_handovers = Counter(
            "vigie_cluster_handovers", "Cameras handed over between nodes, by direction",
            ["direction"], registry=r)
        self.cluster_claims = Counter(
            "vigie_cluster_claims", "Free cameras this node took (a node stopped or died)",
            registry=r)
        self.cluster_queries = Counter(
            "vigie_cluster_queries",
            "Statements this node sent to PostgreSQL to coordinate with the others, by part "
            "(leases: the lease protocol on its own connection; camera_status: the camera "
            "views and pictures published for the other nodes' API)", ["part"], registry=r)
        self.cluster_mqtt_leader = Gauge(
            "vigie_cluster_mqtt_leader",
            "1 while this node is the elected MQTT subscriber (cluster.mqtt: elected)",
            registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
