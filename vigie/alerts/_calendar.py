"""School holidays, from the Ministry's open dataset `fr-en-calendrier-scolaire`.

The file is the dataset's own export: a JSON array of records (or its `;`-separated CSV)
with `description`, `population`, `start_date`, `end_date`, `location` (académie), `zones`
("Zone A", …, "Corse", …) and `annee_scolaire`.

How a record reads (the dataset's convention, checked on its published records):
`start_date` is the local midnight that begins the first day without class, `end_date` the
local midnight that begins the day classes resume, both written in UTC. Toussaint 2025,
"2025-10-17T22:00:00+00:00" → "2025-11-02T23:00:00+00:00", is Saturday 18 October 00:00 →
Monday 3 November 00:00 in Paris: the Friday is a school day until its opening hours end, the
Monday a school day from its opening hours on. Bounds are read as wall-clock times in
Europe/Paris (the time of zones A, B and C) and applied as the same wall-clock times in each
site's own zone. Two degenerate shapes occur in the dataset, with start_date == end_date:
a one-day closure (Pont de l'Ascension 2027: Friday 7 May) closes that whole local day, and
"Début des Vacances d'Été" (the summer's end not fixed yet) closes until 1 September 00:00.
Records for teachers only (`population` "Enseignants") do not close a school.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from vigie.errors import ConfigError

__all__ = [
    "DEFAULT_CALENDAR_PATH",
    "DEFAULT_CALENDAR_RESOURCE",
    "CalendarError",
    "CalendarRecord",
    "SchoolCalendar",
    "import_calendar",
]

DEFAULT_CALENDAR_PATH = Path("config/calendrier-scolaire.json")  # the operator's copy
DEFAULT_CALENDAR_RESOURCE = "data/calendrier-scolaire.json"  # in vigie.alerts, installed
FIELDS = ("description", "population", "start_date", "end_date", "location", "zones",
          "annee_scolaire")
_REQUIRED = ("description", "start_date", "end_date", "zones")
# The column titles of the dataset's CSV export when it is made with labels.
_LABELS = {"date de debut": "start_date", "date de fin": "end_date", "academies": "location",
           "academie": "location", "annee scolaire": "annee_scolaire"}
_DATASET_ZONE = ZoneInfo("Europe/Paris")
_LONGEST = timedelta(days=100)  # a summer is about 60 days: more is a typo
_SCHOOL_YEAR = re.compile(r"^(\d{4})-(\d{4})$")


class CalendarError(ConfigError):
    """The calendar file is invalid; `problems` names each bad record by number or line."""


def _fold(text: str) -> str:
    """Lowercase without accents: "Début" and "debut", "Élèves" and "eleves" compare equal."""
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True)
class CalendarRecord:
    """One record of the dataset, with the local wall-clock interval it closes."""

    description: str
    population: str
    start_date: str
    end_date: str
    location: str
    zones: str
    annee_scolaire: str
    start: datetime  # naive: a wall-clock time, applied in each site's time zone
    end: datetime  # excluded: classes resume then
    open_ended: bool = False  # "Début des Vacances d'Été": `end` is assumed, not published

    @property
    def closes_schools(self) -> bool:
        return _fold(self.population) != "enseignants"

    def as_dataset(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FIELDS}


def _wall_clock(fields: dict[str, str], name: str) -> datetime:
    """A dataset timestamp as a wall-clock time in Paris; a plain date is its midnight."""
    value = fields[name]
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an ISO 8601 date or timestamp, "
                         "e.g. 2025-12-19T23:00:00+00:00") from None
    if len(value) == 10:  # a date alone
        return stamp
    if stamp.tzinfo is None:
        raise ValueError(f"{name}: {value!r} has no UTC offset "
                         "(write 2025-12-19T23:00:00+00:00, or the date alone)")
    local = stamp.astimezone(_DATASET_ZONE).replace(tzinfo=None)
    if local.second or local.microsecond:
        raise ValueError(f"{name}: {value!r} is not on a whole minute")
    return local


def _bounds(fields: dict[str, str]) -> tuple[datetime, datetime, bool]:
    start = _wall_clock(fields, "start_date")
    end = _wall_clock(fields, "end_date")
    if end < start:
        raise ValueError(f"end_date {fields['end_date']} is before start_date "
                         f"{fields['start_date']}")
    open_ended = end == start and _fold(fields["description"]).startswith("debut")
    if end == start:
        end = (datetime(start.year, 9, 1) if open_ended
               else datetime.combine(start.date() + timedelta(days=1), time()))
        if end <= start:
            raise ValueError(f"{fields['description']!r} has no end date and starts after "
                             "1 September")
    if end - start > _LONGEST:
        raise ValueError(f"lasts {(end - start).days} days: longer than any school holiday")
    school_year = fields["annee_scolaire"]
    if school_year:
        m = _SCHOOL_YEAR.match(school_year)
        if not m or int(m.group(2)) != int(m.group(1)) + 1:
            raise ValueError(f"annee_scolaire {school_year!r} is not a school year "
                             "such as 2025-2026")
        first = int(m.group(1))
        if not date(first, 8, 1) <= start.date() < date(first + 1, 9, 1):
            raise ValueError(f"starts on {start:%Y-%m-%d}, outside school year {school_year}")
    return start, end, open_ended


def _record(raw: Any) -> CalendarRecord:
    if isinstance(raw, _BadRow):
        raise ValueError(raw.problem)
    if isinstance(raw, dict) and isinstance(raw.get("fields"), dict):
        raw = raw["fields"]  # the dataset's older API wraps each record's fields
    if not isinstance(raw, dict):
        raise ValueError("expected an object with " + ", ".join(FIELDS))
    wrong = [name for name in FIELDS if raw.get(name) is not None
             and not isinstance(raw[name], str)]
    if wrong:
        raise ValueError(", ".join(wrong) + ": expected text")
    fields = {name: (raw.get(name) or "").strip() for name in FIELDS}
    missing = [name for name in _REQUIRED if not fields[name]]
    if missing:
        raise ValueError("missing " + ", ".join(missing))
    fields["population"] = fields["population"] or "-"
    start, end, open_ended = _bounds(fields)
    return CalendarRecord(**fields, start=start, end=end, open_ended=open_ended)


@dataclass(frozen=True)
class _BadRow:
    """A CSV line that is not a record at all (wrong number of columns)."""

    problem: str


def _json_rows(text: str) -> list[tuple[str, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalendarError([f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                             f"{exc.msg}"]) from None
    if not isinstance(doc, list):
        raise CalendarError(["expected a JSON array of records (the dataset's JSON export)"])
    return [(f"record {i}", raw) for i, raw in enumerate(doc, start=1)]


def _column(title: str) -> str:
    folded = _fold(title)
    return _LABELS.get(folded, folded.replace(" ", "_"))


def _csv_rows(text: str) -> list[tuple[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";")
    try:
        header = [_column(title) for title in next(reader)]
    except StopIteration:
        return []
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
        raise CalendarError([f"line 1: the header has no column {', '.join(missing)} "
                             f"(expected {';'.join(FIELDS)})"])
    rows: list[tuple[str, Any]] = []
    line = reader.line_num + 1
    for cells in reader:
        where, line = f"line {line}", reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            rows.append((where, _BadRow(f"expected {len(header)} columns separated by ';', "
                                       f"found {len(cells)}")))
        else:
            rows.append((where, dict(zip(header, cells, strict=True))))
    return rows


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalendarError([f"not UTF-8 (byte {exc.start}): save the file as UTF-8"]) from None


def _sniff(text: str, name: str) -> Literal["json", "csv"]:
    suffix = Path(name).suffix.lower()
    if suffix in (".json", ".csv"):
        return "json" if suffix == ".json" else "csv"
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


@dataclass(frozen=True)
class SchoolCalendar:
    """The school holidays of every zone in one dataset file."""

    records: tuple[CalendarRecord, ...] = ()

    @classmethod
    def parse(cls, text: str, source: str = "",
              fmt: Literal["json", "csv"] | None = None) -> SchoolCalendar:
        """Validate a whole file; raise CalendarError listing every bad record."""
        text = text.removeprefix("\ufeff")  # spreadsheets save CSV with a byte-order mark
        try:
            rows = _json_rows(text) if (fmt or _sniff(text, source)) == "json" else _csv_rows(text)
        except CalendarError as exc:
            raise CalendarError(exc.problems, source) from None
        records: list[CalendarRecord] = []
        problems: list[str] = []
        for where, raw in rows:
            try:
                records.append(_record(raw))
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
        if not rows:
            problems.append("no records")
        if problems:
            raise CalendarError(problems, source)
        return cls(tuple(records))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SchoolCalendar:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CalendarError([f"cannot read ({exc.strerror or exc})"], str(path)) from None
        try:
            text = _decode(data)
        except CalendarError as exc:
            raise CalendarError(exc.problems, str(path)) from None
        return cls.parse(text, str(path))

    @classmethod
    def default(cls) -> SchoolCalendar:
        """The calendar shipped with vigie (vigie/alerts/data/calendrier-scolaire.json)."""
        return _packaged()

    def closures(self, zone: str) -> tuple[tuple[datetime, datetime], ...]:
        """Wall-clock intervals [start, end) when a school of `zone` ("C" or "Zone C") is
        closed, merged and sorted; académies that disagree are united."""
        wanted = _fold(zone if len(zone) > 1 else f"Zone {zone}")
        spans = sorted((r.start, r.end) for r in self.records
                       if r.closes_schools and _fold(r.zones) == wanted)
        merged: list[tuple[datetime, datetime]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return tuple(merged)

    def coverage(self) -> dict[str, tuple[str, ...]]:
        """School years covered, by zone."""
        years: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            years[r.zones].add(r.annee_scolaire or f"{r.start:%Y}")
        return {zone: tuple(sorted(years[zone])) for zone in sorted(years)}

    def notes(self) -> list[str]:
        """What an operator should know about the file: holidays with no end date yet,
        académies of one zone that disagree."""
        notes: list[str] = []
        periods: dict[tuple[str, str, str], dict[tuple[datetime, datetime], list[str]]] = (
            defaultdict(lambda: defaultdict(list)))
        for r in self.records:
            if r.closes_schools:
                periods[r.zones, r.annee_scolaire, r.description][r.start, r.end].append(
                    r.location)
        for (zone, year, description), spans in periods.items():
            if len(spans) > 1:
                shown = "; ".join(f"{_span(s, e)} ({', '.join(sorted(where))})"
                                  for (s, e), where in sorted(spans.items()))
                notes.append(f"{zone} {year} {description}: académies disagree: {shown}; "
                             "sites are closed over their union")
        for zone, year, description, start in sorted(
                {(r.zones, r.annee_scolaire, r.description, r.start)
                 for r in self.records if r.open_ended}):
            notes.append(f"{zone} {year} {description}: no end date yet, closed from "
                         f"{start:%Y-%m-%d} until 1 September; import the next calendar "
                         "when it is published")
        return notes

    def to_json(self) -> str:
        """The dataset's JSON export format, one record per line."""
        lines = (json.dumps(r.as_dataset(), ensure_ascii=False) for r in self.records)
        return "[\n" + ",\n".join(lines) + "\n]\n"


def _span(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"


@cache
def _packaged() -> SchoolCalendar:
    resource = resources.files("vigie.alerts").joinpath(DEFAULT_CALENDAR_RESOURCE)
    return SchoolCalendar.parse(_decode(resource.read_bytes()), f"vigie/alerts/{resource.name}")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_calendar(source: str | os.PathLike[str],
                    output: str | os.PathLike[str] = DEFAULT_CALENDAR_PATH) -> SchoolCalendar:
    """Validate a dataset export (CSV or JSON) and write it, as JSON, to `output`.

    Nothing is written unless every record is valid; the old file is replaced at once.
    """
    calendar = SchoolCalendar.load(source)
    try:
        _write_atomically(Path(output), calendar.to_json())
    except OSError as exc:
        raise CalendarError([f"cannot write ({exc.strerror or exc})"], str(output)) from None
    return calendar

