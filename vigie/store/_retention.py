"""Time partitions and old rows: created ahead, dropped whole, deleted in batches.

The partitioned tables and their period are declared once here; the SQL function that
creates a partition (moving rows out of the default partition) is in 0007_partitions.sql.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "PARTITIONED",
    "Partitioned",
    "delete_before",
    "drop_partitions_before",
    "ensure_partitions",
    "partitions",
]

# Rows deleted per statement: short transactions, no long lock on a busy table.
BATCH = 5_000


@dataclass(frozen=True, slots=True)
class Partitioned:
    table: str
    column: str  # the partition key
    period: str  # "month" | "day"
    ahead: int  # periods created ahead of the current one
    has_default: bool

    def start(self, at: datetime) -> datetime:
        """The start of the period that holds `at` (UTC)."""
        at = at.astimezone(UTC)
        if self.period == "month":
            return datetime(at.year, at.month, 1, tzinfo=UTC)
        return datetime(at.year, at.month, at.day, tzinfo=UTC)

    def next(self, start: datetime) -> datetime:
        if self.period == "month":
            return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        return start + timedelta(days=1)

    def suffix(self, start: datetime) -> str:
        return start.strftime("%Y_%m" if self.period == "month" else "%Y_%m_%d")

    def parse(self, name: str) -> datetime | None:
        """The start of a partition, from its name; None for what is not one of ours."""
        pattern = (r"(\d{4})_(\d{2})" if self.period == "month" else r"(\d{4})_(\d{2})_(\d{2})")
        m = re.fullmatch(re.escape(self.table) + "_p" + pattern, name)
        if m is None:
            return None
        parts = [int(g) for g in m.groups()]
        try:
            return datetime(parts[0], parts[1], parts[2] if len(parts) > 2 else 1, tzinfo=UTC)
        except ValueError:
            return None


PARTITIONED = {
    "events": Partitioned("events", "received_at", "month", 3, has_default=True),
    "camera_samples": Partitioned("camera_samples", "at", "day", 7, has_default=True),
    "audit_log": Partitioned("audit_log", "at", "month", 3, has_default=False),
}


async def partitions(conn: Any, spec: Partitioned) -> dict[str, datetime]:
    """The table's partitions (not its default one): name → start of its period."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass", spec.table)
    found = {r["relname"]: spec.parse(r["relname"]) for r in rows}
    return {name: start for name, start in found.items() if start is not None}


async def ensure_partitions(conn: Any, spec: Partitioned, now: datetime) -> list[str]:
    """Create the partitions of the current period and of the `ahead` next ones; return
    the names created. Past periods are not created: their rare rows in the default
    partition are deleted there when they expire."""
    created = []
    start = spec.start(now)
    for _ in range(spec.ahead + 1):
        end = spec.next(start)
        async with conn.transaction():
            made = await conn.fetchval("SELECT vigie_create_partition($1, $2, $3, $4)",
                                       spec.table, spec.suffix(start), start, end)
        if made:
            created.append(f"{spec.table}_p{spec.suffix(start)}")
        start = end
    return created


async def drop_partitions_before(conn: Any, spec: Partitioned, cutoff: datetime) -> list[str]:
    """Drop every partition whose whole period ends at or before `cutoff`; return them."""
    dropped = []
    for name, start in sorted((await partitions(conn, spec)).items(), key=lambda kv: kv[1]):
        if spec.next(start) > cutoff:
            continue
        async with conn.transaction():
            # Detached first: the parent is locked only for the detach, not the file removal.
            await conn.execute(f'ALTER TABLE "{spec.table}" DETACH PARTITION "{name}"')
            await conn.execute(f'DROP TABLE "{name}"')
        dropped.append(name)
    return dropped


async def delete_before(conn: Any, table: str, column: str, cutoff: datetime,
                        returning: str | None = None) -> tuple[int, list[Any]]:
    """Delete rows older than `cutoff`, in batches; return how many, and the `returning`
    column of each (snapshot paths, to remove their files)."""
    total, values = 0, []
    back = f", {returning}" if returning else ""
    while True:
        rows = await conn.fetch(
            f"WITH gone AS (DELETE FROM {table} WHERE ctid IN ("
            f"SELECT ctid FROM {table} WHERE {column} < $1 LIMIT {BATCH}) RETURNING 1 AS one"
            f"{back}) SELECT * FROM gone", cutoff)
        total += len(rows)
        if returning:
            values += [r[returning] for r in rows]
        if len(rows) < BATCH:
            return total, values
