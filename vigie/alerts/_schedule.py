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

    def is_open(self, site_id: str, at: datetime) -> bool:
        """True during the site's opening hours (`at` must be timezone-aware)."""
        site = self._sites.get(site_id)
        if site is None:
            return False
        local = at.astimezone(self._zones[site_id])
        now = local.time().replace(tzinfo=None)
        return any(start <= now < end for start, end in site.opening_hours.ranges(local.weekday()))
