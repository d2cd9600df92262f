# Transitional: the values live in vigie.events (shared by sensors, store and alerts).
from vigie.events import DeviceStatus, SensorEvent

__all__ = ["DeviceStatus", "SensorEvent"]
