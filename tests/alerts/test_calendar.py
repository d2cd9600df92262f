"""vigie.alerts._calendar: the Ministry's `fr-en-calendrier-scolaire` dataset, read, checked
and installed (`vigie calendar import`)."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import holidays
import pytest

from vigie.alerts._calendar import CalendarError, SchoolCalendar, import_calendar
from vigie.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "vigie" / "alerts" / "data" / "calendrier-scolaire.json"
OPERATOR_COPY = ROOT / "config" / "calendrier-scolaire.json"
HEADER = "description;population;start_date;end_date;location;zones;annee_scolaire"


def record(description: str = "Vacances de Noël", start: str = "2025-12-19T23:00:00+00:00",
           end: str = "2026-01-04T23:00:00+00:00", *, zones: str = "Zone C",
           population: str = "-", location: str = "Versailles",
           year: str = "2025-2026") -> dict[str, str]:
    return {"description": description, "population": population, "start_date": start,
            "end_date": end, "location": location, "zones": zones, "annee_scolaire": year}


def calendar(*records: dict[str, Any]) -> SchoolCalendar:
    return SchoolCalendar.parse(json.dumps(list(records)), "test.json")


def problems(text: str, source: str = "test.json") -> list[str]:
    with pytest.raises(CalendarError) as caught:
        SchoolCalendar.parse(text, source)
    return caught.value.problems


def d(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- how a record reads ---------------------------------------------------------------------


def test_bounds_are_paris_midnights_written_in_utc() -> None:
    """Toussaint 2025 as the dataset gives it: Saturday 18 October 00:00 CEST (22:00 UTC the
    day before) to Monday 3 November 00:00 CET (23:00 UTC): the offset changed in between."""
    cal = calendar(record("Vacances de la Toussaint", "2025-10-17T22:00:00+00:00",
                          "2025-11-02T23:00:00+00:00"))
    assert cal.closures("C") == ((d("2025-10-18T00:00"), d("2025-11-03T00:00")),)
    assert cal.closures("Zone C") == cal.closures("C")
    assert cal.closures("A") == ()


@pytest.mark.parametrize(("start", "end"), [
    ("2025-12-19T23:00:00+00:00", "2026-01-04T23:00:00+00:00"),
    ("2025-12-20T00:00:00+01:00", "2026-01-05T00:00:00+01:00"),
    ("2025-12-19T23:00:00Z", "2026-01-04T23:00:00Z"),
    ("2025-12-20", "2026-01-05"),  # a date alone: its midnight
])
def test_any_spelling_of_the_same_bounds(start: str, end: str) -> None:
    cal = calendar(record(start=start, end=end))
    assert cal.closures("C") == ((d("2025-12-20T00:00"), d("2026-01-05T00:00")),)


def test_a_bound_after_class_is_kept_to_the_minute() -> None:
    cal = calendar(record(start="2025-12-19T17:30:00+01:00", end="2026-01-05"))
    assert cal.closures("C") == ((d("2025-12-19T17:30"), d("2026-01-05T00:00")),)


def test_teachers_only_records_do_not_close_schools() -> None:
    pupils = record("Vacances d'Été", "2026-07-03T22:00:00+00:00", "2026-08-31T22:00:00+00:00",
                    population="Élèves")
    teachers = record("Vacances d'Été", "2026-07-03T22:00:00+00:00",
                      "2026-08-30T22:00:00+00:00", population="Enseignants")
    cal = calendar(teachers, pupils)
    assert cal.closures("C") == ((d("2026-07-04T00:00"), d("2026-09-01T00:00")),)
    assert calendar(teachers).closures("C") == ()


def test_one_day_closure_given_as_start_equal_to_end() -> None:
    """Pont de l'Ascension 2027 in the dataset: start_date == end_date, Friday 7 May."""
    cal = calendar(record("Pont de l'Ascension", "2027-05-06T22:00:00+00:00",
                          "2027-05-06T22:00:00+00:00", year="2026-2027"))
    assert cal.closures("C") == ((d("2027-05-07T00:00"), d("2027-05-08T00:00")),)
    assert cal.notes() == []


def test_summer_without_an_end_date_closes_until_the_first_of_september() -> None:
    cal = calendar(record("Début des Vacances d'Été", "2027-07-02T22:00:00+00:00",
                          "2027-07-02T22:00:00+00:00", year="2026-2027"))
    assert cal.closures("C") == ((d("2027-07-03T00:00"), d("2027-09-01T00:00")),)
    [note] = cal.notes()
    assert "Zone C 2026-2027 Début des Vacances d'Été: no end date yet" in note


def test_academies_repeat_each_period_and_are_merged() -> None:
    paris = record(location="Paris")
    creteil = record(location="Créteil")
    hiver = record("Vacances d'Hiver", "2026-02-20T23:00:00+00:00", "2026-03-08T23:00:00+00:00")
    cal = calendar(paris, creteil, hiver)
    assert cal.closures("C") == ((d("2025-12-20T00:00"), d("2026-01-05T00:00")),
                                 (d("2026-02-21T00:00"), d("2026-03-09T00:00")))
    assert cal.notes() == []


def test_academies_that_disagree_are_united_and_reported() -> None:
    cal = calendar(record(location="Paris"),
                   record(location="Toulouse", end="2026-01-05T23:00:00+00:00"))
    assert cal.closures("C") == ((d("2025-12-20T00:00"), d("2026-01-06T00:00")),)
    [note] = cal.notes()
    assert "Zone C 2025-2026 Vacances de Noël: académies disagree" in note
    assert "(Paris)" in note and "(Toulouse)" in note


def test_other_zones_are_kept_but_separate() -> None:
    cal = calendar(record(zones="Corse", location="Corse"), record(zones="Zone A"))
    assert cal.closures("A") and not cal.closures("C")
    assert cal.closures("Corse") == cal.closures("A")
    assert cal.coverage() == {"Corse": ("2025-2026",), "Zone A": ("2025-2026",)}


def test_the_older_api_shape_with_fields_is_read_too() -> None:
    doc = [{"datasetid": "fr-en-calendrier-scolaire", "recordid": "x", "fields": record()}]
    assert SchoolCalendar.parse(json.dumps(doc)).closures("C")


# --- validation -----------------------------------------------------------------------------


def test_every_bad_record_is_reported_by_number() -> None:
    doc = [
        record(),
        record(start="2025-12-19T23:00:00"),  # no offset
        record(end="2025-12-01T23:00:00+00:00"),  # before its start
        {k: v for k, v in record().items() if k not in ("zones", "start_date")},
        record(start="19/12/2025"),
        "Vacances de Noël",
        record(year="2025-2027"),
        record(year="2024-2025"),
        {**record(), "population": 3},
        record(end="2026-06-04T23:00:00+00:00"),
        record(start="2025-12-19T23:00:30+00:00"),
        record(description="   "),
    ]
    assert problems(json.dumps(doc)) == [
        "record 2: start_date: '2025-12-19T23:00:00' has no UTC offset "
        "(write 2025-12-19T23:00:00+00:00, or the date alone)",
        "record 3: end_date 2025-12-01T23:00:00+00:00 is before start_date "
        "2025-12-19T23:00:00+00:00",
        "record 4: missing start_date, zones",
        "record 5: start_date: '19/12/2025' is not an ISO 8601 date or timestamp, "
        "e.g. 2025-12-19T23:00:00+00:00",
        "record 6: expected an object with description, population, start_date, end_date, "
        "location, zones, annee_scolaire",
        "record 7: annee_scolaire '2025-2027' is not a school year such as 2025-2026",
        "record 8: starts on 2025-12-20, outside school year 2024-2025",
        "record 9: population: expected text",
        "record 10: lasts 167 days: longer than any school holiday",
        "record 11: start_date: '2025-12-19T23:00:30+00:00' is not on a whole minute",
        "record 12: missing description",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("", "invalid JSON at line 1, column 1: Expecting value"),
    ('[{"description": "x",\n "zones": }]', "invalid JSON at line 2, column 11: "
                                            "Expecting value"),
    ('{"description": "x"}', "expected a JSON array of records (the dataset's JSON export)"),
    ("[]", "no records"),
])
def test_a_file_that_is_not_a_list_of_records(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def csv_text(*rows: str, header: str = HEADER) -> str:
    return "\n".join((header, *rows)) + "\n"


def test_csv_export_with_semicolons() -> None:
    text = csv_text(
        "Vacances de Noël;-;2025-12-19T23:00:00+00:00;2026-01-04T23:00:00+00:00;Paris;Zone C;"
        "2025-2026",
        "Vacances d'Été;Enseignants;2026-07-03T22:00:00+00:00;2026-08-30T22:00:00+00:00;Paris;"
        "Zone C;2025-2026",
        "",
        '"Vacances d\'Été";Élèves;2026-07-03T22:00:00+00:00;2026-08-31T22:00:00+00:00;Paris;'
        "Zone C;2025-2026",
    )
    cal = SchoolCalendar.parse("\ufeff" + text, "export.csv")
    assert len(cal.records) == 3
    assert cal.closures("C") == ((d("2025-12-20T00:00"), d("2026-01-05T00:00")),
                                 (d("2026-07-04T00:00"), d("2026-09-01T00:00")))


def test_csv_with_the_dataset_labels_as_header() -> None:
    header = "Description;Population;Date de début;Date de fin;Académies;Zones;Année scolaire"
    text = csv_text("Vacances de Noël;-;2025-12-19T23:00:00+00:00;2026-01-04T23:00:00+00:00;"
                    "Paris;Zone C;2025-2026", header=header)
    assert SchoolCalendar.parse(text, "export.csv").closures("C")


def test_csv_errors_carry_the_line_number() -> None:
    text = csv_text(
        "Vacances de Noël;-;2025-12-19T23:00:00+00:00;2026-01-04T23:00:00+00:00;Paris;Zone C;"
        "2025-2026",
        '"Vacances\nde Noël";-;2025-12-19T23:00:00+00:00;2026-01-04T23:00:00+00:00;Paris;;'
        "2025-2026",  # a quoted field over two lines: the record starts on line 3
        "Vacances de Noël,-,2025-12-19,2026-01-05,Paris,Zone C,2025-2026",
        "Vacances de Noël;-;2025-12-19T23:00:00+00:00;demain;Paris;Zone C;2025-2026",
    )
    assert problems(text, "export.csv") == [
        "line 3: missing zones",
        "line 5: expected 7 columns separated by ';', found 1",
        "line 6: end_date: 'demain' is not an ISO 8601 date or timestamp, "
        "e.g. 2025-12-19T23:00:00+00:00",
    ]


def test_csv_header_without_the_needed_columns() -> None:
    assert problems("date;zone\n2025-12-20;C\n", "export.csv") == [
        "line 1: the header has no column description, start_date, end_date, zones "
        f"(expected {HEADER})"]


def test_format_is_sniffed_when_the_name_says_nothing() -> None:
    text = csv_text("Vacances de Noël;-;2025-12-20;2026-01-05;Paris;Zone C;2025-2026")
    assert SchoolCalendar.parse(text, "calendrier").closures("C")
    assert SchoolCalendar.parse(json.dumps([record()]), "calendrier").closures("C")


def test_load_reports_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(CalendarError) as caught:
        SchoolCalendar.load(tmp_path / "absent.json")
    assert caught.value.problems == ["cannot read (No such file or directory)"]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(csv_text("Vacances de Noël;-;2025-12-20;2026-01-05;Paris;Zone C;"
                                "2025-2026").encode("latin-1"))
    with pytest.raises(CalendarError) as caught:
        SchoolCalendar.load(latin1)
    assert caught.value.source == str(latin1)
    assert caught.value.problems[0].startswith("not UTF-8 (byte ")


# --- import ---------------------------------------------------------------------------------


def test_import_writes_the_dataset_json_from_a_csv(tmp_path: Path) -> None:
    source = tmp_path / "fr-en-calendrier-scolaire.csv"
    source.write_text(csv_text(
        "Vacances de Noël;-;2025-12-19T23:00:00+00:00;2026-01-04T23:00:00+00:00;Paris;Zone C;"
        "2025-2026"), encoding="utf-8")
    output = tmp_path / "config" / "calendrier-scolaire.json"
    imported = import_calendar(source, output)
    assert json.loads(output.read_text(encoding="utf-8")) == [record(location="Paris")]
    assert SchoolCalendar.load(output) == imported
    assert not [p for p in output.parent.iterdir() if p != output]  # no temporary file left


def test_nothing_is_written_when_one_record_is_invalid(tmp_path: Path) -> None:
    output = tmp_path / "calendrier-scolaire.json"
    output.write_text("previous", encoding="utf-8")
    source = tmp_path / "new.json"
    source.write_text(json.dumps([record(), record(end="2025-01-01")]), encoding="utf-8")
    with pytest.raises(CalendarError):
        import_calendar(source, output)
    assert output.read_text(encoding="utf-8") == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calendrier-scolaire.json",
                                                          "new.json"]


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.json"
    assert main(["calendar", "import", str(SHIPPED), "--output", str(output)]) == 0
    assert output.read_bytes() == SHIPPED.read_bytes()
    out = capsys.readouterr().out
    assert f"{output}: 312 record(s) from {SHIPPED}, 288 closing schools" in out
    for zone in "ABC":
        assert f"  Zone {zone}: 2025-2026, 2026-2027" in out


def test_cli_import_of_an_invalid_file(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(csv_text("Vacances de Noël;-;2025-12-20;2025-12-01;Paris;Zone C;"
                               "2025-2026"), encoding="utf-8")
    output = tmp_path / "out.json"
    assert main(["calendar", "import", str(source), "--output", str(output)]) == 2
    assert not output.exists()
    err = capsys.readouterr().err
    assert err == (f"vigie: {source}: nothing written\n"
                   "  line 2: end_date 2025-12-01 is before start_date 2025-12-20\n")


# --- the calendar shipped with vigie --------------------------------------------------------


def test_the_operator_copy_is_the_shipped_calendar() -> None:
    assert OPERATOR_COPY.read_bytes() == SHIPPED.read_bytes()
    assert SchoolCalendar.default() == SchoolCalendar.load(SHIPPED)


def days(closures: tuple[tuple[datetime, datetime], ...]) -> list[tuple[str, str]]:
    return [(f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}") for start, end in closures]


# First day without class, day classes resume (arrêtés of 2022 and 2025, as in the dataset).
COMMON_2025 = [("2025-10-18", "2025-11-03"), ("2025-12-20", "2026-01-05")]
COMMON_2026 = [("2026-05-14", "2026-05-18"), ("2026-07-04", "2026-09-01"),
               ("2026-10-17", "2026-11-02"), ("2026-12-19", "2027-01-04")]
COMMON_2027 = [("2027-05-07", "2027-05-08"), ("2027-07-03", "2027-09-01")]


@pytest.mark.parametrize(("zone", "winter_spring"), [
    ("A", [("2026-02-07", "2026-02-23"), ("2026-04-04", "2026-04-20"),
           ("2027-02-13", "2027-03-01"), ("2027-04-10", "2027-04-26")]),
    ("B", [("2026-02-14", "2026-03-02"), ("2026-04-11", "2026-04-27"),
           ("2027-02-20", "2027-03-08"), ("2027-04-17", "2027-05-03")]),
    ("C", [("2026-02-21", "2026-03-09"), ("2026-04-18", "2026-05-04"),
           ("2027-02-06", "2027-02-22"), ("2027-04-03", "2027-04-19")]),
])
def test_shipped_dates(zone: str, winter_spring: list[tuple[str, str]]) -> None:
    expected = sorted(COMMON_2025 + COMMON_2026 + COMMON_2027 + winter_spring)
    assert days(SchoolCalendar.default().closures(zone)) == expected


@pytest.mark.parametrize("zone", ["A", "B", "C"])
def test_shipped_dates_agree_with_the_holidays_package(zone: str) -> None:
    """An independent source: the `holidays` package's school holidays of the zone. Compared
    on the school days they take away (weekdays that are not public holidays), from the
    2025 rentrée to the end of August 2027 (the 2027 rentrée is not in the shipped file)."""
    first, last = date(2025, 9, 1), date(2027, 8, 31)
    public = holidays.country_holidays("FR", years=range(2025, 2028))
    theirs = holidays.country_holidays("FR", subdiv=f"Zone {zone}", years=range(2025, 2028),
                                       categories=("school",))
    ours = {start.date() + timedelta(n) for start, end in
            SchoolCalendar.default().closures(zone) for n in range((end - start).days)}

    def school_days_off(off: set[date]) -> set[date]:
        return {day for day in off
                if first <= day <= last and day.weekday() < 5 and day not in public}

    assert school_days_off(ours) == school_days_off(set(theirs))
