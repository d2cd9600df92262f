"""Alerts: rules that turn events into alerts, their lifecycle, schedules."""

from vigie.alerts._calendar import CalendarError, SchoolCalendar
from vigie.alerts._rules import Decision, Raise, Resolve, RuleBook
from vigie.alerts._schedule import Schedule
from vigie.alerts._service import AlertChange, AlertService, Clock, utc_now

__all__ = [
    "AlertChange",
    "AlertService",
    "CalendarError",
    "Clock",
    "Decision",
    "Raise",
    "Resolve",
    "RuleBook",
    "Schedule",
    "SchoolCalendar",
    "utc_now",
]
