"""Sensor events over MQTT: subscribe, decode, hand off to the writer, acknowledge."""

from vigie.events import DeviceStatus, SensorEvent
from vigie.sensors._decode import TopicRouter
from vigie.sensors._heartbeat import HeartbeatMonitor
from vigie.sensors._ingest import IngestWriter
from vigie.sensors._mqtt import MqttSubscriber, Received

__all__ = [
    "DeviceStatus",
    "HeartbeatMonitor",
    "IngestWriter",
    "MqttSubscriber",
    "Received",
    "SensorEvent",
    "TopicRouter",
]
