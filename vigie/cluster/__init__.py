"""Several nodes on one PostgreSQL and one broker: camera leases, node presence, and jobs
that one node runs at a time (an advisory lock). No coordinator of vigie's own: PostgreSQL
decides who holds what, the broker spreads sensor traffic."""

from vigie.cluster._election import HEARTBEAT_LOCK, MQTT_LOCK, Leadership
from vigie.cluster._leases import CameraLeases, CameraWatch, Superseded
from vigie.cluster._plan import Census, LeaseClock, Member, claim_count, handovers
from vigie.cluster._presence import NodePresence
from vigie.cluster._sql import NodeRow, list_nodes
from vigie.cluster._status import CameraStatusPublisher, latest_picture, remote_view

__all__ = [
    "HEARTBEAT_LOCK",
    "MQTT_LOCK",
    "CameraLeases",
    "CameraStatusPublisher",
    "CameraWatch",
    "Census",
    "Leadership",
    "LeaseClock",
    "Member",
    "NodePresence",
    "NodeRow",
    "Superseded",
    "claim_count",
    "handovers",
    "latest_picture",
    "list_nodes",
    "remote_view",
]
