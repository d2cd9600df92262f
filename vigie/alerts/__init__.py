"""Alerts: rules that turn events into alerts, their lifecycle (escalations, silences,
operator actions), schedules."""

from vigie.alerts._calendar import CalendarError, SchoolCalendar
from vigie.alerts._rules import Decision, Raise, Resolve, RuleBook, escalation_by_severity
from vigie.alerts._schedule import Schedule
from vigie.alerts._service import CHANGES, AlertChange, AlertService, Clock, utc_now
from vigie.alerts._timers import AlertTimers

__all__ = [
    "CHANGES",
    "AlertChange",
    "AlertService",
    "AlertTimers",
    "CalendarError",
    "Clock",
    "Decision",
    "Raise",
    "Resolve",
    "RuleBook",
    "Schedule",
    "SchoolCalendar",
    "escalation_by_severity",
    "utc_now",
]
