"""Retention: every kind of data is purged after its configured period."""

from vigie.retention._job import RETENTION_LOCK, RetentionJob, RetentionReport

__all__ = ["RETENTION_LOCK", "RetentionJob", "RetentionReport"]
