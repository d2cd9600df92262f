"""Is a site open right now? Opening hours, public and school holidays, in the site's zone.

A site is open during its weekly opening hours, except on French public holidays (the
`holidays` package, metropolitan France) and during the school holidays of its
`holiday_zone` (see vigie.alerts._calendar for how a calendar record reads). Every bound is
a local wall-clock time of the site — a public holiday is the site's local day — so a
closure that spans a DST change lasts as long as the clocks say.
"""

from __future__ import annotations

import zoneinfo
from bisect import bisect_right
from datetime import date, datetime, time, timedelta
from functools import lru_cache

import holidays

from vigie.alerts._calendar import SchoolCalendar
from vigie.config import SiteConfig

__all__ = ["Schedule"]

# Closed intervals as epoch seconds: sorted, disjoint starts and their ends.
_Closures = tuple[tuple[float, ...], tuple[float, ...]]


@lru_cache(maxsize=64)
def _public_holidays(year: int) -> tuple[date, ...]:
    # Without a subdivision: metropolitan France, not Alsace-Moselle's two extra days.
    return tuple(sorted(holidays.country_holidays("FR", years=year)))


class Schedule:
    def __init__(self, sites: tuple[SiteConfig, ...],
                 calendar: SchoolCalendar | None = None) -> None:
        """`calendar`: school holidays; by default the one shipped with vigie."""
        self._calendar = calendar if calendar is not None else SchoolCalendar.default()
        self._sites = {s.id: s for s in sites}
        self._zones = {s.id: zoneinfo.ZoneInfo(s.timezone) for s in sites}
        self._school: dict[str, tuple[tuple[datetime, datetime], ...]] = {
            zone: self._calendar.closures(zone)
            for zone in {s.holiday_zone for s in sites} if zone is not None}
        # Sites of one time zone and holiday zone share their closures, built a year at a time.
        self._closures: dict[tuple[str, str | None, int], _Closures] = {}
        self._cache: dict[tuple[str, int], bool] = {}

    def is_open(self, site_id: str, at: datetime) -> bool:
        """True during the site's opening hours, outside holidays (`at` must be aware)."""
        # Opening ranges and holiday bounds are in whole minutes: one answer per site and
        # minute serves a burst of events. The cache is dropped whole when it grows.
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
        if not any(start <= now < end for start, end in site.opening_hours.ranges(local.weekday())):
            return False
        starts, ends = self._closed(site, local.year)
        ts = at.timestamp()
        i = bisect_right(starts, ts) - 1
        return i < 0 or ts >= ends[i]

    def _closed(self, site: SiteConfig, year: int) -> _Closures:
        key = (site.timezone, site.holiday_zone, year)
        closures = self._closures.get(key)
        if closures is None:
            closures = self._closures[key] = self._build(site, year)
        return closures

    def _build(self, site: SiteConfig, year: int) -> _Closures:
        """The closures that touch the site's local `year`, as epoch seconds."""
        zone = self._zones[site.id]
        midnight = time()
        spans = [(datetime.combine(day, midnight), datetime.combine(day + timedelta(1), midnight))
                 for day in _public_holidays(year)]
        first, last = datetime(year, 1, 1), datetime(year + 1, 1, 1)
        spans += [(start, end) for start, end in self._school.get(site.holiday_zone or "", ())
                  if start < last and end > first]
        starts: list[float] = []
        ends: list[float] = []
        for start, end in sorted(spans):
            # A wall-clock time of the site; in a DST gap or fold, the offset before
            # the change (fold=0).
            begin = start.replace(tzinfo=zone).timestamp()
            finish = end.replace(tzinfo=zone).timestamp()
            if ends and begin <= ends[-1]:
                ends[-1] = max(ends[-1], finish)
            else:
                starts.append(begin)
                ends.append(finish)
        return tuple(starts), tuple(ends)
