"""Is a site open right now? Opening hours in the site's own time zone.

School and public holidays come with the alert-workflow issue; until then a site is open
exactly during its weekly opening hours.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime

from vigie.config import SiteConfig

__all__ = ["Schedule"]


class Schedule:
    def __init__(self, sites: tuple[SiteConfig, ...]) -> None:
        self._sites = {s.id: s for s in sites}
        self._zones = {s.id: zoneinfo.ZoneInfo(s.timezone) for s in sites}
        self._cache: dict[tuple[str, int], bool] = {}

    def is_open(self, site_id: str, at: datetime) -> bool:
        """True during the site's opening hours (`at` must be timezone-aware)."""
        # Opening ranges are in whole minutes: one answer per site and minute serves a burst
        # of events. The cache is dropped whole when it grows.
        key = (site_id, int(at.timestamp() // 60))
        answer = self._cache.get(key)
        if answer is None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            answer = self._cache[key] = self._compute(site_id, at)
        return answer

    def _compute(self, site_id: str, at: datetime) -> bool:
        site = self._sites.get(site_id)
        if site is None:
            return False
        local = at.astimezone(self._zones[site_id])
        now = local.time().replace(tzinfo=None)
        return any(start <= now < end for start, end in site.opening_hours.ranges(local.weekday()))
