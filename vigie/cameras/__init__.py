"""Camera health over RTSP: stream watchers in worker processes, image checks, health."""

from vigie.cameras._health import CameraHealth, HealthChange
from vigie.cameras._supervisor import CameraState, CameraSupervisor

__all__ = ["CameraHealth", "CameraState", "CameraSupervisor", "HealthChange"]
