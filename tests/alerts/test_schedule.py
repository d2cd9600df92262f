"""vigie.alerts._schedule: opening hours in each site's own time zone, DST nights included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from vigie.alerts import Schedule
from vigie.config import parse_config

PARIS = ZoneInfo("Europe/Paris")


def site(id_: str, hours: dict[str, Any], timezone: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "name": id_, "uai": "0781234A", "opening_hours": hours}
    if timezone:
        out["timezone"] = timezone
    return out


SCHEDULE = Schedule(parse_config({"sites": [
    site("clg-versailles", {"mon": "07:30-12:00, 13:30-17:00", "wed": "07:30-13:00",
                            "fri": ["08:00-12:00", "14:00-24:00"]}),
    # Open through the DST nights: the last Sundays of March and October 2026.
    site("clg-nuit", {"sun": "00:00-03:00", "sat": "22:00-24:00"}),
    site("clg-reunion", {"mon": "00:00-03:00, 07:30-17:00"}, "Indian/Reunion"),
    site("clg-cayenne", {"mon": "07:30-17:00"}, "America/Cayenne"),
    site("clg-ferme", {}),
]}).sites)


def paris(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, *,
          fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=PARIS, fold=fold)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# Monday 2026-11-23, Wednesday 25, Friday 27.
@pytest.mark.parametrize(("at", "expected"), [
    (paris(2026, 11, 23, 7, 29, 59), False),
    (paris(2026, 11, 23, 7, 30), True),  # range start included
    (paris(2026, 11, 23, 11, 59, 59), True),
    (paris(2026, 11, 23, 12, 0), False),  # range end excluded
    (paris(2026, 11, 23, 13, 0), False),  # lunch break between two ranges
    (paris(2026, 11, 23, 13, 30), True),
    (paris(2026, 11, 23, 16, 59), True),
    (paris(2026, 11, 23, 17, 0), False),
    (paris(2026, 11, 24, 10, 0), False),  # Tuesday: no hours given, closed
    (paris(2026, 11, 25, 12, 59), True),
    (paris(2026, 11, 25, 13, 0), False),
    (paris(2026, 11, 27, 23, 59, 59), True),  # 24:00 ends the day
    (paris(2026, 11, 28, 0, 0), False),  # Saturday
    (paris(2026, 11, 29, 10, 0), False),  # Sunday
])
def test_opening_hours_with_several_ranges(at: datetime, expected: bool) -> None:
    assert SCHEDULE.is_open("clg-versailles", at) is expected


def test_the_instant_is_what_counts_not_the_zone_it_is_written_in() -> None:
    local = paris(2026, 11, 23, 7, 30)
    assert SCHEDULE.is_open("clg-versailles", local.astimezone(UTC))
    assert SCHEDULE.is_open("clg-versailles", local.astimezone(ZoneInfo("Asia/Tokyo")))
    assert not SCHEDULE.is_open("clg-versailles", (local - timedelta(seconds=1)).astimezone(UTC))


@pytest.mark.parametrize(("at", "local", "expected"), [
    # 2026-03-29: at 02:00 CET clocks jump to 03:00 CEST; 02:00-02:59 does not exist.
    (utc(2026, 3, 28, 22, 59), "Sat 23:59 CET", True),
    (utc(2026, 3, 28, 23, 0), "Sun 00:00 CET", True),
    (utc(2026, 3, 29, 0, 30), "Sun 01:30 CET", True),
    (utc(2026, 3, 29, 0, 59, 59), "Sun 01:59:59 CET", True),
    (utc(2026, 3, 29, 1, 0), "Sun 03:00 CEST", False),  # right after the jump: closed
    (utc(2026, 3, 29, 1, 30), "Sun 03:30 CEST", False),
    # 2026-10-25: at 03:00 CEST clocks go back to 02:00 CET; 02:00-02:59 happens twice.
    (utc(2026, 10, 24, 21, 59), "Sat 23:59 CEST", True),
    (utc(2026, 10, 24, 22, 0), "Sun 00:00 CEST", True),
    (utc(2026, 10, 25, 0, 30), "Sun 02:30 CEST (first)", True),
    (utc(2026, 10, 25, 1, 0), "Sun 02:00 CET (second)", True),
    (utc(2026, 10, 25, 1, 30), "Sun 02:30 CET (second)", True),
    (utc(2026, 10, 25, 1, 59, 59), "Sun 02:59:59 CET", True),
    (utc(2026, 10, 25, 2, 0), "Sun 03:00 CET", False),
    (utc(2026, 10, 24, 20, 0), "Sat 22:00 CEST", True),
    (utc(2026, 10, 24, 19, 59), "Sat 21:59 CEST", False),
])
def test_dst_nights(at: datetime, local: str, expected: bool) -> None:
    assert SCHEDULE.is_open("clg-nuit", at) is expected, local


def test_dst_nights_last_as_long_as_the_clocks_say() -> None:
    """Sunday 00:00-03:00 local lasts 2 real hours in March and 4 in October; Saturday
    22:00-24:00 the usual 2."""

    def open_minutes(start: datetime, hours: int) -> int:
        return sum(SCHEDULE.is_open("clg-nuit", start + timedelta(minutes=m))
                   for m in range(hours * 60))

    # From Saturday 20:00 UTC, over 8 hours: past the end of the night either way.
    assert open_minutes(utc(2026, 3, 28, 20, 0), 8) == 120 + 120
    assert open_minutes(utc(2026, 10, 24, 19, 0), 8) == 120 + 240
    # An ordinary Sunday night: 2 + 3 hours.
    assert open_minutes(utc(2026, 11, 28, 20, 0), 8) == 120 + 180


def test_ambiguous_local_times_of_the_october_night() -> None:
    first = paris(2026, 10, 25, 2, 30, fold=0)  # CEST
    second = paris(2026, 10, 25, 2, 30, fold=1)  # CET, one hour later
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)
    assert SCHEDULE.is_open("clg-nuit", first) and SCHEDULE.is_open("clg-nuit", second)


@pytest.mark.parametrize(("at", "expected"), [
    # Réunion is UTC+4 all year: Monday 00:00-03:00 local is Sunday 20:00-23:00 UTC.
    (utc(2026, 11, 22, 19, 59), False),
    (utc(2026, 11, 22, 20, 0), True),  # Sunday in UTC and in Paris, Monday in Réunion
    (utc(2026, 11, 22, 22, 59), True),
    (utc(2026, 11, 22, 23, 0), False),
    (utc(2026, 11, 23, 3, 30), True),  # 07:30 local, 04:30 in Paris
    (utc(2026, 11, 23, 12, 59), True),
    (utc(2026, 11, 23, 13, 0), False),
])
def test_a_site_in_another_time_zone(at: datetime, expected: bool) -> None:
    assert SCHEDULE.is_open("clg-reunion", at) is expected
    if at == utc(2026, 11, 23, 3, 30):
        assert not SCHEDULE.is_open("clg-versailles", at)  # same instant, 04:30 in Paris


def test_a_site_west_of_greenwich() -> None:
    # Cayenne is UTC-3: Monday 07:30 local is 10:30 UTC; Monday 02:00 UTC is still Sunday.
    assert SCHEDULE.is_open("clg-cayenne", utc(2026, 11, 23, 10, 30))
    assert not SCHEDULE.is_open("clg-cayenne", utc(2026, 11, 23, 10, 29))
    assert SCHEDULE.is_open("clg-cayenne", utc(2026, 11, 23, 19, 59))
    assert not SCHEDULE.is_open("clg-cayenne", utc(2026, 11, 23, 20, 0))
    assert not SCHEDULE.is_open("clg-cayenne", utc(2026, 11, 24, 2, 0))  # Monday 23:00 local


def test_sites_without_hours_or_unknown_are_closed() -> None:
    for minute in range(0, 7 * 24 * 60, 37):
        at = utc(2026, 11, 23) + timedelta(minutes=minute)
        assert not SCHEDULE.is_open("clg-ferme", at)
        assert not SCHEDULE.is_open("clg-inconnu", at)
