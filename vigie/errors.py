"""One error tree for vigie; library errors are translated at the boundary."""


class VigieError(Exception):
    """Base of every error vigie raises on purpose."""


class ConfigError(VigieError):
    """The configuration is invalid; `problems` lists every error by path."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n  ".join(problems)
        super().__init__(f"{head}{len(problems)} configuration error(s)\n  {lines}")


class StoreError(VigieError):
    """The database could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now."""


class IngestError(VigieError):
    """An MQTT message was rejected; `reason` is a short, bounded metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class NotFound(VigieError):
    """The requested object does not exist (or is out of the caller's scope)."""


class Conflict(VigieError):
    """The request conflicts with the object's current state."""
