"""vigie.alerts._schedule: opening hours, public and school holidays, in each site's own
time zone, DST nights included."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigie.alerts import Schedule
from vigie.alerts._calendar import SchoolCalendar
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


# --- public and school holidays -------------------------------------------------------------

WEEK = {"mon": "08:00-17:30", "tue": "08:00-17:30", "wed": "08:00-12:30",
        "thu": "08:00-17:30", "fri": "08:00-17:30", "sat": "08:00-12:00"}
ALWAYS = {day: "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def zoned(id_: str, hours: dict[str, Any], zone: str | None,
          timezone: str | None = None) -> dict[str, Any]:
    out = site(id_, hours, timezone)
    if zone:
        out["holiday_zone"] = zone
    return out


HOLIDAY_SITES = parse_config({"sites": [
    zoned("clg-a", WEEK, "A"), zoned("clg-b", WEEK, "B"), zoned("clg-c", WEEK, "C"),
    zoned("clg-sans-zone", WEEK, None),
    zoned("clg-c-24h", ALWAYS, "C"),
    zoned("clg-reunion-24h", ALWAYS, None, "Indian/Reunion"),
]}).sites
HOLIDAYS = Schedule(HOLIDAY_SITES)  # the calendar shipped with vigie


def closed_minutes(schedule: Schedule, site_id: str, start: datetime, hours: int) -> int:
    return sum(not schedule.is_open(site_id, start + timedelta(minutes=m))
               for m in range(hours * 60))


@pytest.mark.parametrize(("at", "expected"), [
    # Christmas 2025 (zone C as everywhere): the dataset's start_date is Saturday 20 December
    # 00:00, so the last Friday keeps its opening hours to their end.
    (paris(2025, 12, 19, 8, 0), True),
    (paris(2025, 12, 19, 17, 29), True),
    (paris(2025, 12, 19, 17, 30), False),  # opening hours over
    (paris(2025, 12, 13, 9, 0), True),  # an ordinary Saturday morning
    (paris(2025, 12, 20, 9, 0), False),  # first Saturday of the holidays
    (paris(2026, 1, 3, 9, 0), False),  # last Saturday of the holidays
    (paris(2026, 1, 5, 7, 59), False),
    (paris(2026, 1, 5, 8, 0), True),  # classes resume on the Monday morning
    (paris(2026, 1, 10, 9, 0), True),
])
def test_holidays_start_after_the_last_day_of_class_and_end_on_the_morning_back(
        at: datetime, expected: bool) -> None:
    assert HOLIDAYS.is_open("clg-c", at) is expected


def test_holiday_bounds_are_local_midnights_to_the_minute() -> None:
    """Toussaint 2025: Saturday 18 Oct 00:00 CEST (22:00 UTC) to Monday 3 Nov 00:00 CET (23:00
    UTC): the end is read after the clocks went back on 26 October."""
    assert HOLIDAYS.is_open("clg-c-24h", utc(2025, 10, 17, 21, 59))
    assert not HOLIDAYS.is_open("clg-c-24h", utc(2025, 10, 17, 22, 0))
    assert not HOLIDAYS.is_open("clg-c-24h", utc(2025, 11, 2, 22, 59))
    assert HOLIDAYS.is_open("clg-c-24h", utc(2025, 11, 2, 23, 0))


def test_holidays_over_the_october_night_last_an_hour_longer() -> None:
    """Toussaint 2026 (17 Oct - 2 Nov) holds the night of 25 October: 16 days and 1 hour."""
    assert not HOLIDAYS.is_open("clg-c-24h", utc(2026, 10, 25, 0, 30))  # 02:30 CEST
    assert not HOLIDAYS.is_open("clg-c-24h", utc(2026, 10, 25, 1, 30))  # 02:30 CET
    assert closed_minutes(HOLIDAYS, "clg-c-24h", utc(2026, 10, 16, 20), 17 * 24) == (
        16 * 24 + 1) * 60


def one_day(day: str, year: str) -> dict[str, str]:
    """A one-day closure, written as the dataset writes them (start_date == end_date)."""
    stamp = datetime.fromisoformat(day).replace(tzinfo=PARIS).astimezone(UTC).isoformat()
    return {"description": "Fermeture", "population": "-", "start_date": stamp,
            "end_date": stamp, "location": "Versailles", "zones": "Zone C",
            "annee_scolaire": year}


def test_a_closed_day_lasts_as_long_as_the_clocks_say() -> None:
    """Closed on the Sundays of the DST nights, 29 March and 25 October 2026: 23 and 25 hours."""
    calendar = SchoolCalendar.parse(json.dumps([one_day("2026-03-29", "2025-2026"),
                                                one_day("2026-10-25", "2026-2027")]))
    schedule = Schedule(HOLIDAY_SITES, calendar)
    assert closed_minutes(schedule, "clg-c-24h", utc(2026, 3, 28, 12), 48) == 23 * 60
    assert closed_minutes(schedule, "clg-c-24h", utc(2026, 10, 24, 12), 48) == 25 * 60
    assert schedule.is_open("clg-c-24h", utc(2026, 3, 28, 22, 59))  # Saturday 23:59 CET
    assert not schedule.is_open("clg-c-24h", utc(2026, 3, 28, 23, 0))  # Sunday 00:00 CET
    assert not schedule.is_open("clg-c-24h", utc(2026, 3, 29, 21, 59))  # Sunday 23:59 CEST
    assert schedule.is_open("clg-c-24h", utc(2026, 3, 29, 22, 0))  # Monday 00:00 CEST
    # The same sites with the shipped calendar: nothing closes them that weekend.
    assert closed_minutes(HOLIDAYS, "clg-c-24h", utc(2026, 3, 28, 12), 48) == 0


def test_easter_monday_right_after_the_march_night() -> None:
    # 2027: clocks go forward on Sunday 28 March, Easter Monday is the 29th (CEST, UTC+2).
    assert HOLIDAYS.is_open("clg-c-24h", utc(2027, 3, 28, 21, 59))
    assert not HOLIDAYS.is_open("clg-c-24h", utc(2027, 3, 28, 22, 0))
    assert not HOLIDAYS.is_open("clg-c-24h", utc(2027, 3, 29, 21, 59))
    assert HOLIDAYS.is_open("clg-c-24h", utc(2027, 3, 30, 8, 0))


@pytest.mark.parametrize(("day", "zoned_open", "unzoned_open"), [
    ((2026, 11, 10), True, True),
    ((2026, 11, 11), False, False),  # Armistice, a Wednesday
    ((2026, 5, 13), True, True),  # the Wednesday before the Ascension bridge: classes
    ((2026, 5, 14), False, False),  # Ascension Thursday
    ((2026, 5, 15), False, True),  # the bridge: school holidays, not a public holiday
    ((2026, 5, 18), True, True),
    ((2026, 5, 25), False, False),  # Whit Monday: a public holiday for `holidays`
    ((2026, 5, 26), True, True),
    ((2027, 5, 6), False, False),  # Ascension 2027
    ((2027, 5, 7), False, True),  # its one-day bridge, start_date == end_date in the dataset
    ((2027, 5, 10), True, True),
    ((2026, 7, 14), False, False),
    ((2026, 10, 19), False, True),  # Toussaint holidays: only sites with a zone
])
def test_public_holidays_close_every_site_school_holidays_only_zoned_ones(
        day: tuple[int, int, int], zoned_open: bool, unzoned_open: bool) -> None:
    at = paris(*day, 10, 0)
    for site_id in ("clg-a", "clg-b", "clg-c"):
        assert HOLIDAYS.is_open(site_id, at) is zoned_open, site_id
    assert HOLIDAYS.is_open("clg-sans-zone", at) is unzoned_open


@pytest.mark.parametrize(("day", "a", "b", "c"), [
    # Winter 2026: A 7-23 Feb, B 14 Feb-2 Mar, C 21 Feb-9 Mar (the Mondays of those weeks).
    ((2026, 2, 2), True, True, True),
    ((2026, 2, 9), False, True, True),
    ((2026, 2, 16), False, False, True),
    ((2026, 2, 23), True, False, False),
    ((2026, 3, 2), True, True, False),
    ((2026, 3, 9), True, True, True),
    # Spring 2026: A 4-20 Apr, B 11-27 Apr, C 18 Apr-4 May; Easter Monday 6 Apr for all.
    ((2026, 4, 6), False, False, False),
    ((2026, 4, 13), False, False, True),
    ((2026, 4, 20), True, False, False),
    ((2026, 4, 27), True, True, False),
    ((2026, 5, 4), True, True, True),
    # Winter 2027: C 6-22 Feb, A 13 Feb-1 Mar, B 20 Feb-8 Mar.
    ((2027, 2, 8), True, True, False),
    ((2027, 2, 15), False, True, False),
    ((2027, 2, 22), False, False, True),
    ((2027, 3, 1), True, False, True),
    ((2027, 3, 8), True, True, True),
])
def test_each_zone_has_its_own_winter_and_spring(day: tuple[int, int, int], a: bool, b: bool,
                                                 c: bool) -> None:
    at = paris(*day, 10, 0)
    assert (HOLIDAYS.is_open("clg-a", at), HOLIDAYS.is_open("clg-b", at),
            HOLIDAYS.is_open("clg-c", at)) == (a, b, c)


@pytest.mark.parametrize(("day", "expected"), [
    ((2026, 7, 3), True),  # last Friday of class
    ((2026, 7, 6), False),
    ((2026, 8, 31), False),  # teachers are back (their record is ignored), pupils are not
    ((2026, 9, 1), True),  # pupils' rentrée
    ((2027, 7, 2), True),
    ((2027, 7, 5), False),  # "Début des Vacances d'Été": no end date in the 2026-2027 file
    ((2027, 8, 31), False),
    ((2027, 9, 1), True),  # assumed back on 1 September until the next calendar says
])
def test_summer(day: tuple[int, int, int], expected: bool) -> None:
    assert HOLIDAYS.is_open("clg-c", paris(*day, 10, 0)) is expected
    if day == (2026, 7, 6):
        assert HOLIDAYS.is_open("clg-sans-zone", paris(*day, 10, 0))


def test_public_holidays_are_the_sites_local_days() -> None:
    # Armistice in Réunion (UTC+4): from 20:00 UTC on the 10th to 20:00 UTC on the 11th.
    assert HOLIDAYS.is_open("clg-reunion-24h", utc(2026, 11, 10, 19, 59))
    assert not HOLIDAYS.is_open("clg-reunion-24h", utc(2026, 11, 10, 20, 0))
    assert not HOLIDAYS.is_open("clg-reunion-24h", utc(2026, 11, 11, 19, 59))
    assert HOLIDAYS.is_open("clg-reunion-24h", utc(2026, 11, 11, 20, 0))


def test_a_holiday_across_new_year() -> None:
    assert closed_minutes(HOLIDAYS, "clg-c-24h", utc(2025, 12, 31, 22), 4) == 4 * 60
    assert not HOLIDAYS.is_open("clg-c-24h", utc(2026, 1, 4, 22, 59))
    assert HOLIDAYS.is_open("clg-c-24h", utc(2026, 1, 4, 23, 0))


def test_an_injected_calendar_replaces_the_shipped_one() -> None:
    empty = Schedule(HOLIDAY_SITES, SchoolCalendar())
    assert empty.is_open("clg-c", paris(2026, 10, 19, 10, 0))  # no school holidays known
    assert not empty.is_open("clg-c", paris(2026, 11, 11, 10, 0))  # public holidays remain


def test_past_the_calendar_only_public_holidays_close() -> None:
    assert HOLIDAYS.is_open("clg-c", paris(2028, 2, 14, 10, 0))  # no 2027-2028 records
    assert not HOLIDAYS.is_open("clg-c", paris(2028, 4, 17, 10, 0))  # Easter Monday 2028


PUBLIC = {day for year in range(2025, 2029) for day in holidays.country_holidays("FR", years=year)}


def reference(site_id: str, at: datetime) -> bool:
    """The same answer the slow way: hours of the local weekday, then the local date."""
    site_config = next(s for s in HOLIDAY_SITES if s.id == site_id)
    local = at.astimezone(ZoneInfo(site_config.timezone))
    now = local.time().replace(tzinfo=None)
    if not any(a <= now < b for a, b in site_config.opening_hours.ranges(local.weekday())):
        return False
    school = SchoolCalendar.default().closures(site_config.holiday_zone or "none")
    off = any(start.date() <= local.date() < end.date() for start, end in school)
    return not off and local.date() not in PUBLIC


@settings(max_examples=500, deadline=None, database=None)
@given(minute=st.integers(0, (datetime(2028, 12, 31, tzinfo=UTC)
                              - datetime(2025, 8, 1, tzinfo=UTC)) // timedelta(minutes=1)),
       site_id=st.sampled_from(["clg-a", "clg-b", "clg-c", "clg-sans-zone", "clg-c-24h",
                                "clg-reunion-24h"]))
def test_agrees_with_a_day_by_day_reference(minute: int, site_id: str) -> None:
    at = datetime(2025, 8, 1, tzinfo=UTC) + timedelta(minutes=minute)
    assert HOLIDAYS.is_open(site_id, at) is reference(site_id, at)
