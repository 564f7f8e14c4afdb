"""Home visits' dates: which may be booked, which are still ahead, and how one reads (no I/O).

A technician visits a customer's home on a day, at a time or any time of it
(``cases.visit_date``, ``cases.visit_time``). :func:`visit_problem` says why a visit
cannot be booked (a case closed or resolved, a date past or a year mistyped, a time
outside :data:`VISIT_HOURS`); :func:`visit_ahead` whether a booked visit is still to
come (a resolution or a closing cancels only such a one), :func:`visit_cancellable`
whether an agent may still call it off; :func:`visit_text` and :func:`clock_text` write
a visit as its customer is told it, in Spanish (es-MX) or English. Pure: every answer
is read from its arguments, ``now_local`` being now in the business's time zone.

mailcase.casework (a visit cancelled by a resolution or a closing, the commands of one
reply checked) and mailcase.visits (a visit booked or called off) build on this module,
which imports neither.
"""

from __future__ import annotations

from datetime import date, datetime

from mailcase.models import Case, CaseStatus

# When technicians visit homes. An hour outside is a mistake, not a plan: agents
# write "4:30" for the afternoon, which would tell the customer 4:30 a.m.
VISIT_HOURS = ("07:00", "21:00")
# How far ahead a visit may be. Visits are booked days or weeks ahead; one
# years ahead is a typo in the year (2062 for 2026) that would tell the
# customer a date nobody will keep.
VISIT_MAX_DAYS_AHEAD = 180


def visit_problem(status: str, day: date, hour: str | None, now_local: datetime) -> str | None:
    """Why a visit on ``day`` at ``hour`` ("HH:MM") cannot be scheduled, or ``None``.

    ``now_local`` is now in the business's time zone: a visit before it (a
    typo in the year, say) would tell the customer a date that has passed,
    and one more than :data:`VISIT_MAX_DAYS_AHEAD` days after it (the same
    typo the other way) a date nobody will keep. A time outside
    :data:`VISIT_HOURS` is refused too, and today with no time once those
    hours are over. A resolved case is reopened first: its resolution told the
    customer the matter is settled, and the closing that follows would
    cancel the visit.
    """
    if status == CaseStatus.CLOSED:
        return "case_closed"
    if status == CaseStatus.RESOLVED:
        return "case_resolved"
    today = now_local.date()
    # Today without a time once visiting hours are over is past too: the customer
    # would be told to wait for a technician who comes no more today.
    past = hour if hour is not None else VISIT_HOURS[1]
    if day < today or (day == today and past < now_local.strftime("%H:%M")):
        return "visit_in_past"
    # Compared as a number of days: today + timedelta overflows near date.max.
    if (day - today).days > VISIT_MAX_DAYS_AHEAD:
        return "visit_too_far"
    if hour is not None and not VISIT_HOURS[0] <= hour <= VISIT_HOURS[1]:
        return "visit_hours"
    return None


def visit_ahead(case: Case, now_local: datetime) -> bool:
    """Whether ``case`` has a home visit still ahead of ``now_local`` (business time).

    Today with no time is not ahead: the technician may have come already (a
    resolution in the afternoon after the morning's visit), and the customer
    must never be told a visit that took place was cancelled.
    """
    if case.visit_date is None:
        return False
    if case.visit_time is None and case.visit_date == now_local.date():
        return False
    past = visit_problem(CaseStatus.OPEN, case.visit_date, case.visit_time, now_local)
    return past != "visit_in_past"


def visit_cancellable(case: Case, now_local: datetime) -> bool:
    """Whether an agent may still call off ``case``'s home visit at ``now_local``: one
    :func:`visit_ahead`, or today's with no time until visiting hours end (the moment
    up to which it could be booked: the customer told "today" waits at home until then).
    """
    if case.visit_date is None:
        return False
    hour = case.visit_time
    return visit_problem(CaseStatus.OPEN, case.visit_date, hour, now_local) != "visit_in_past"


def visit_text(day: date | None, hour: str | None, language: str) -> str:
    """A visit as the customer was told it ("lunes 30 de noviembre de 2026 a las 10:00")."""
    if day is None:
        return ""
    if language == "es":
        return spanish_date(day) + (f" a las {hour}" if hour else "")
    return english_date(day) + (f" at {clock_text(hour, language)}" if hour else "")


def clock_text(hour: str, language: str) -> str:
    """A visit's time (``HH:MM``, 24-hour) as the customer reads it: ``16:30`` in
    Spanish (the written usage in Mexico, as on a bill or an appointment), ``4:30 PM``
    in English (en-US, where the 24-hour clock reads as military time)."""
    if language == "es":
        return hour
    hours, minutes = (int(part) for part in hour.split(":"))
    return f"{hours % 12 or 12}:{minutes:02d} {'AM' if hours < 12 else 'PM'}"


_MONTHS_ES = (
    *("enero", "febrero", "marzo", "abril", "mayo", "junio"),
    *("julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre"),
)
_DAYS_ES = ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"]


def spanish_date(day: date) -> str:
    """``jueves 3 de diciembre de 2026``: dates as customers in Mexico read them."""
    return f"{_DAYS_ES[day.weekday()]} {day.day} de {_MONTHS_ES[day.month - 1]} de {day.year}"


def english_date(day: date) -> str:
    return day.strftime("%A, %B %-d, %Y")
