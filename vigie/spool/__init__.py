"""The local spool: what was acknowledged to the broker while PostgreSQL was away, kept on
the node's disk until it is written."""

from vigie.spool._audit import AuditEntry, AuditSpool
from vigie.spool._log import Spool, SpoolBusy, SpoolRecord

__all__ = ["AuditEntry", "AuditSpool", "Spool", "SpoolBusy", "SpoolRecord"]
