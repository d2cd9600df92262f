"""Alert reports: what was raised over a period, how it ended, how fast operators answered.

Computed by PostgreSQL in one query (grouping sets), whatever the number of alerts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["alert_report"]

# Time to acknowledge counts from opening to the *first* acknowledgement (an alert
# acknowledged, released, then acknowledged again was answered the first time). An alert
# resolved without an operator is 'auto'; by an operator without a category, 'unspecified'.
_REPORT = """
WITH a AS (
    SELECT a.kind, a.severity, a.site, a.opened_at, a.resolved_at, a.escalation_level,
           a.silenced,
           CASE WHEN a.state <> 'resolved' THEN 'unresolved'
                ELSE coalesce(a.resolution, 'unspecified') END AS outcome,
           (SELECT min(h.at) FROM alert_history h
            WHERE h.alert_id = a.id AND h.action = 'acknowledged') AS first_ack
    FROM alerts a
    WHERE a.opened_at >= $1 AND a.opened_at < $2
      AND ($3::text IS NULL OR a.site = $3)
      AND ($4::text[] IS NULL OR a.site = ANY($4::text[]))
)
SELECT kind, severity, outcome, site,
       GROUPING(kind, severity, outcome, site) AS grouping,
       count(*) AS alerts,
       count(first_ack) AS acknowledged,
       count(resolved_at) AS resolved,
       count(*) FILTER (WHERE escalation_level > 0) AS escalated,
       count(*) FILTER (WHERE silenced) AS silenced,
       extract(epoch FROM avg(first_ack - opened_at))::float8 AS mtta,
       extract(epoch FROM avg(resolved_at - opened_at))::float8 AS mttr
FROM a
GROUP BY GROUPING SETS ((), (kind), (severity), (outcome), (site))
"""

# GROUPING(kind, severity, outcome, site): a bit set for each column left out of the group.
_ALL_BUT = {0b0111: "kind", 0b1011: "severity", 0b1101: "outcome", 0b1110: "site"}


def _figures(row: Any) -> dict[str, Any]:
    return {"alerts": row["alerts"], "acknowledged": row["acknowledged"],
            "resolved": row["resolved"], "escalated": row["escalated"],
            "silenced": row["silenced"], "mean_seconds_to_acknowledge": row["mtta"],
            "mean_seconds_to_resolve": row["mttr"]}


async def alert_report(conn: Any, *, start: datetime, end: datetime, site: str | None,
                       sites: frozenset[str] | None) -> dict[str, Any]:
    """Alerts opened in [start, end): totals, and the same figures by kind, severity,
    outcome (resolution category, 'auto', 'unspecified' or 'unresolved') and site."""
    rows = await conn.fetch(_REPORT, start, end, site,
                            sorted(sites) if sites is not None else None)
    report: dict[str, Any] = {
        "from": start.isoformat(), "to": end.isoformat(), "site": site,
        "totals": {"alerts": 0, "acknowledged": 0, "resolved": 0, "escalated": 0,
                   "silenced": 0, "mean_seconds_to_acknowledge": None,
                   "mean_seconds_to_resolve": None},
        "by_kind": {}, "by_severity": {}, "by_resolution": {}, "by_site": {},
    }
    for row in rows:
        if row["grouping"] == 0b1111:
            report["totals"] = _figures(row)
            continue
        column = _ALL_BUT[row["grouping"]]
        key = "by_resolution" if column == "outcome" else f"by_{column}"
        report[key][row[column]] = _figures(row)
    return report
