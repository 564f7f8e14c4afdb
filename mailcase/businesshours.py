"""The desk's business hours: when it is open, and time counted only while it is.

A :class:`BusinessCalendar` is one opening range a weekday (a day without one
is closed, as is every holiday), read in the business's time zone. It answers
whether the desk is open at an instant (:meth:`~BusinessCalendar.is_open`),
how much open time lies between two instants
(:meth:`~BusinessCalendar.open_time`), and where N open hours after or before
an instant end (:meth:`~BusinessCalendar.add`,
:meth:`~BusinessCalendar.subtract`): Zammad's SLA calendars, OTRS/Znuny's
calendars and django-helpdesk's escalation exclusions count the same way.

Every instant is aware and every sum is done in UTC: the ranges are wall-clock
times of the zone, turned into instants one day at a time, so a zone with
daylight saving time (America/Tijuana) opens at 09:00 local time on both sides
of its change, and a day that loses or gains an hour inside the range is that
much shorter or longer. A wall time that does not exist on the day of a change
(02:30 on a spring-forward night) is read with the offset before the change
(``fold=0``), as :mod:`zoneinfo` does.

The statutory rest days of Mexico's Ley Federal del Trabajo, art. 74
(:func:`mexican_rest_days`), are computed, not listed. Pure: no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order
DEFAULT_HOURS: Mapping[str, str] = {
    "mon": "09:00-18:00",
    "tue": "09:00-18:00",
    "wed": "09:00-18:00",
    "thu": "09:00-18:00",
    "fri": "09:00-18:00",
    "sat": "09:00-14:00",
}
_DAY = 24 * 60  # minutes
# How far a walk goes before it gives up (a century): a calendar open one minute a
# week needs that long for a few thousand hours. Far beyond any mail kept.
WALK_LIMIT_DAYS = 36_525
_RANGE = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# No reminder goes out while the desk is closed, and the daemon checks every 5 minutes
# (mailcase.reminders.CHECK_MINUTES): a shorter range could fall between two checks.
SHORTEST_RANGE_MINUTES = 5


def parse_range(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as minutes since midnight (opening, closing); raise ValueError
    with a sentence for anything else. The closing may be ``24:00`` (midnight at the
    day's end); it must come after the opening."""
    match = _RANGE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a range HH:MM-HH:MM such as 09:00-18:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59, or 24:00 to close)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end <= start:
        raise ValueError(f"{text!r} ends before it starts (one range a day, within the day)")
    if end - start < SHORTEST_RANGE_MINUTES:
        raise ValueError(
            f"{text!r} is open for less than {SHORTEST_RANGE_MINUTES} minutes, how often the"
            " reminders are checked: they would go out only when a check fell in it"
        )
    return start, end


def parse_date(value: str | date) -> date:
    """A holiday given as ``"YYYY-MM-DD"`` (or a TOML date); raise ValueError otherwise."""
    if isinstance(value, datetime):  # a TOML date-time: a moment, not a day
        raise ValueError(f"{value.isoformat()} is not a date YYYY-MM-DD")
    if isinstance(value, date):
        return value
    if not _DATE.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a date of the calendar") from None


def _nth_monday(year: int, month: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(7 - first.weekday()) % 7 + 7 * (n - 1))


@lru_cache(maxsize=256)
def mexican_rest_days(year: int) -> frozenset[date]:
    """The statutory rest days of ``year`` (Ley Federal del Trabajo, art. 74): 1 January;
    the first Monday of February; the third Monday of March; 1 May; 16 September; the
    third Monday of November; 25 December; and the day of the transmission of the
    federal executive, every six years: 1 October from 2024 (2030, 2036 ...), 1 December
    before (2018, 2012 ...). Election days (art. 74 IX) are set by the electoral laws
    each time: add them to ``holidays``."""
    days = {
        date(year, 1, 1),
        _nth_monday(year, 2, 1),
        _nth_monday(year, 3, 3),
        date(year, 5, 1),
        date(year, 9, 16),
        _nth_monday(year, 11, 3),
        date(year, 12, 25),
    }
    if (year - 2024) % 6 == 0:
        # The 2014 political reform moved the inauguration to 1 October from 2024.
        days.add(date(year, 10, 1) if year >= 2024 else date(year, 12, 1))
    return frozenset(days)


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    """When the desk is open: ``hours`` maps a weekday (0 = Monday) to its range in
    minutes since midnight (:func:`parse_range`; a weekday left out is closed), in
    ``zone``; every date of ``holidays`` is closed, and with ``mexican_holidays`` so is
    every rest day of :func:`mexican_rest_days`.

    Raises ValueError when no weekday is open: such a calendar never opens, and
    every wait on it would be endless."""

    zone: ZoneInfo
    hours: Mapping[int, tuple[int, int]]
    holidays: frozenset[date] = field(default_factory=frozenset)
    mexican_holidays: bool = True

    def __post_init__(self) -> None:
        if not self.hours:
            raise ValueError("no day of the week is open")
        for day, (start, end) in self.hours.items():
            if day not in range(7) or not 0 <= start < end <= _DAY:
                raise ValueError(f"bad opening range for weekday {day}: {start}-{end}")

    @classmethod
    def from_text(
        cls,
        zone: ZoneInfo,
        hours: Mapping[str, str],
        holidays: Iterable[str | date] = (),
        *,
        mexican_holidays: bool = True,
    ) -> BusinessCalendar:
        """A calendar from the configuration's words: ``{"mon": "09:00-18:00", ...}``
        and ``"YYYY-MM-DD"`` dates; ValueError for a bad weekday, range or date."""
        ranges = {}
        for key, text in hours.items():
            if key not in WEEKDAYS:
                raise ValueError(f"unknown weekday {key!r} (one of {', '.join(WEEKDAYS)})")
            ranges[WEEKDAYS.index(key)] = parse_range(text)
        return cls(
            zone,
            ranges,
            frozenset(parse_date(d) for d in holidays),
            mexican_holidays=mexican_holidays,
        )

    def is_holiday(self, day: date) -> bool:
        """Whether ``day`` is closed as a holiday (listed, or a statutory rest day)."""
        return day in self.holidays or (
            self.mexican_holidays and day in mexican_rest_days(day.year)
        )

    def opening(self, day: date) -> tuple[datetime, datetime] | None:
        """``day``'s open range as UTC instants [opening, closing), or None when the
        desk is closed all that day (its weekday has no range, or it is a holiday)."""
        span = self.hours.get(day.weekday())
        if span is None or self.is_holiday(day):
            return None
        opens, closes = self._instant(day, span[0]), self._instant(day, span[1])
        if opens >= closes:
            # Opening in the hour a clock skips (02:30 on Tijuana's spring-forward
            # Sunday, read with the offset before it) and closing soon after: the
            # range would end before it begins, and count as negative open time.
            return None
        return opens, closes

    def _instant(self, day: date, minutes: int) -> datetime:
        # Wall time of the zone, then UTC: sums on aware datetimes sharing a tzinfo
        # are wall-clock sums in Python, wrong across a DST change.
        if minutes == _DAY:
            day, minutes = day + timedelta(days=1), 0
        local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=self.zone)
        return local.astimezone(UTC)

    def _local_day(self, at: datetime) -> date:
        return _aware(at).astimezone(self.zone).date()

    def is_open(self, at: datetime) -> bool:
        """Whether the desk is open at ``at`` (aware): within its day's range, the
        opening included, the closing not."""
        span = self.opening(self._local_day(at))
        return span is not None and span[0] <= _aware(at) < span[1]

    def _forward(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The open ranges from ``start`` on, clipped to it, oldest first (a century)."""
        at = _aware(start).astimezone(UTC)
        day = self._local_day(at)
        for n in range(WALK_LIMIT_DAYS):
            span = self.opening(day + timedelta(days=n))
            if span is not None and span[1] > at:
                yield max(span[0], at), span[1]

    def _backward(self, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The open ranges up to ``end``, clipped to it, newest first (a century)."""
        at = _aware(end).astimezone(UTC)
        day = self._local_day(at)
        for n in range(WALK_LIMIT_DAYS):
            span = self.opening(day - timedelta(days=n))
            if span is not None and span[0] < at:
                yield span[0], min(span[1], at)

    def open_time(self, start: datetime, end: datetime) -> timedelta:
        """How long the desk is open between ``start`` and ``end`` (zero when ``end``
        is not after ``start``)."""
        total = timedelta(0)
        if _aware(end) <= _aware(start):
            return total
        for begin, finish in self._forward(start):
            if begin >= _aware(end):
                break
            total += min(finish, _aware(end)) - begin
        return total

    def add(self, at: datetime, period: timedelta) -> datetime:
        """The earliest instant (UTC) by which ``period`` of open time has passed
        since ``at``: ``at`` itself for a zero period; a message that arrives while
        the desk is closed starts counting at the next opening. A period the calendar
        cannot hold within a century ends where the walk gave up."""
        remaining, reached = period, _aware(at).astimezone(UTC)
        if remaining <= timedelta(0):
            return reached
        for begin, finish in self._forward(at):
            if remaining <= finish - begin:
                return begin + remaining
            remaining -= finish - begin
            reached = finish
        return reached

    def subtract(self, at: datetime, period: timedelta) -> datetime:
        """The latest instant (UTC) from which ``period`` of open time has passed by
        ``at``: anything at or before it has waited at least ``period`` of open time
        at ``at``, anything after it less. ``at`` itself for a zero period. A period
        the calendar cannot hold within a century ends where the walk gave up (a
        century back: before any mail kept)."""
        remaining, reached = period, _aware(at).astimezone(UTC)
        if remaining <= timedelta(0):
            return reached
        for begin, finish in self._backward(at):
            if remaining <= finish - begin:
                return finish - remaining
            remaining -= finish - begin
            reached = begin
        return min(reached, _aware(at) - timedelta(days=WALK_LIMIT_DAYS))


def _aware(at: datetime) -> datetime:
    """``at`` as an aware instant: a naive one is UTC (as the database returns it)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
