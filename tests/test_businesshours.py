"""The desk's business hours (mailcase.businesshours) and the [calendar] configuration.

Pure and fast: no server, no clock. Instants are written in the business's local
time (``local(...)``) and compared in UTC.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from test_config import ISSUE_CONFIG, load_error, write

from mailcase.businesshours import (
    DEFAULT_HOURS,
    SHORTEST_RANGE_MINUTES,
    WALK_LIMIT_DAYS,
    BusinessCalendar,
    mexican_rest_days,
    parse_date,
    parse_range,
)
from mailcase.config import load_settings

CDMX = ZoneInfo("America/Mexico_City")
TIJUANA = ZoneInfo("America/Tijuana")
WEEKDAYS_ONLY = {d: "09:00-18:00" for d in ("mon", "tue", "wed", "thu", "fri")}
H = timedelta(hours=1)


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, zone: ZoneInfo = CDMX) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=zone)


def tijuana(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return local(y, mo, d, h, mi, zone=TIJUANA)


def desk(
    hours: dict[str, str] | None = None,
    holidays: tuple[str, ...] = (),
    *,
    zone: ZoneInfo = CDMX,
    mexican: bool = True,
) -> BusinessCalendar:
    given = DEFAULT_HOURS if hours is None else hours
    return BusinessCalendar.from_text(zone, given, holidays, mexican_holidays=mexican)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("09:00-18:00", (540, 1080)),
        ("00:00-24:00", (0, 1440)),
        (" 07:30-07:35 ", (450, 455)),
        ("23:00-23:59", (1380, 1439)),
    ],
)
def test_a_range_is_minutes_since_midnight(text: str, expected: tuple[int, int]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("18:00-09:00", "ends before it starts"),
        ("09:00-09:00", "ends before it starts"),
        ("25:00-26:00", "not a time of day"),
        ("09:00-24:30", "not a time of day"),
        ("09:60-10:00", "not a time of day"),
        ("9:00-18:00", "not a range"),
        ("09:00 - 18:00", "not a range"),
        ("", "not a range"),
        ("09:00-18:00,19:00-20:00", "not a range"),
    ],
)
def test_a_bad_range_is_refused_with_a_sentence(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_range(text)


def test_a_holiday_is_a_date_of_the_calendar() -> None:
    assert parse_date("2028-02-29") == date(2028, 2, 29)  # a leap year
    assert parse_date(date(2026, 12, 24)) == date(2026, 12, 24)  # a TOML date
    for bad in ("2027-02-29", "2026-13-01", "20261224", "24/12/2026", "2026-12-24T00:00"):
        with pytest.raises(ValueError, match="not a date"):
            parse_date(bad)
    with pytest.raises(ValueError, match="not a date"):
        parse_date(datetime(2026, 12, 24, tzinfo=UTC))


def test_a_calendar_with_no_open_day_is_refused() -> None:
    with pytest.raises(ValueError, match="no day of the week is open"):
        BusinessCalendar(CDMX, {})
    with pytest.raises(ValueError, match="unknown weekday"):
        desk({"monday": "09:00-18:00"})


# --- the rest days of the Ley Federal del Trabajo, art. 74 ----------------------------------


@pytest.mark.parametrize(
    ("year", "expected"),
    [
        # The days the Secretaría del Trabajo published for each year.
        (2024, ["01-01", "02-05", "03-18", "05-01", "09-16", "10-01", "11-18", "12-25"]),
        (2025, ["01-01", "02-03", "03-17", "05-01", "09-16", "11-17", "12-25"]),
        (2026, ["01-01", "02-02", "03-16", "05-01", "09-16", "11-16", "12-25"]),
        (2028, ["01-01", "02-07", "03-20", "05-01", "09-16", "11-20", "12-25"]),  # leap
        (2030, ["01-01", "02-04", "03-18", "05-01", "09-16", "10-01", "11-18", "12-25"]),
        (2036, ["01-01", "02-04", "03-17", "05-01", "09-16", "10-01", "11-17", "12-25"]),
        # Before the 2014 reform took effect, the inauguration was on 1 December.
        (2018, ["01-01", "02-05", "03-19", "05-01", "09-16", "11-19", "12-01", "12-25"]),
    ],
)
def test_the_statutory_rest_days(year: int, expected: list[str]) -> None:
    assert sorted(mexican_rest_days(year)) == [date.fromisoformat(f"{year}-{d}") for d in expected]


def test_rest_days_close_the_desk_unless_turned_off() -> None:
    monday = local(2026, 11, 16, 10)  # the third Monday of November (Revolución)
    assert not desk().is_open(monday)
    assert desk(mexican=False).is_open(monday)
    assert desk().is_holiday(date(2026, 11, 16))
    # A listed holiday closes the whole day, statutory or not.
    assert not desk(holidays=("2026-12-24",)).is_open(local(2026, 12, 24, 10))
    assert desk().is_open(local(2026, 12, 24, 10))


# --- is_open: a day's edges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (local(2026, 11, 23, 9), True),  # Monday's opening counts
        (local(2026, 11, 23, 8, 59), False),
        (local(2026, 11, 23, 17, 59), True),
        (local(2026, 11, 23, 18), False),  # the closing does not
        (local(2026, 11, 28, 13, 59), True),  # Saturday, until 14:00
        (local(2026, 11, 28, 14), False),
        (local(2026, 11, 29, 12), False),  # Sunday
        (local(2026, 1, 1, 12), False),  # New Year's Day, a Thursday
        (datetime(2026, 11, 23, 15, 0), True),  # naive: UTC, as the database reads it
        (datetime(2026, 11, 23, 14, 59, 59, tzinfo=UTC), False),  # 08:59:59 in CDMX
    ],
)
def test_is_open_at_the_edges_of_a_day(at: datetime, expected: bool) -> None:
    assert desk().is_open(at) is expected


def test_a_day_open_until_midnight() -> None:
    calendar = desk({"sat": "00:00-24:00"}, mexican=False)
    assert calendar.is_open(local(2026, 11, 28, 0))
    assert calendar.is_open(local(2026, 11, 28, 23, 59) + timedelta(seconds=59))
    assert not calendar.is_open(local(2026, 11, 29, 0))
    assert calendar.open_time(local(2026, 11, 27), local(2026, 11, 30)) == 24 * H


# --- adding and subtracting open hours ------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "hours", "end"),
    [
        (local(2026, 11, 23, 10), 2, local(2026, 11, 23, 12)),  # within a day
        (local(2026, 11, 23, 17), 1, local(2026, 11, 23, 18)),  # to the closing exactly
        (local(2026, 11, 23, 17), 2, local(2026, 11, 24, 10)),  # over a night
        (local(2026, 11, 27, 17), 2, local(2026, 11, 28, 10)),  # Friday to Saturday
        (local(2026, 11, 28, 13), 2, local(2026, 11, 30, 10)),  # over Sunday
        (local(2026, 11, 28, 22), 24, local(2026, 12, 2, 15)),  # Saturday night, 24 hours
        (local(2026, 11, 29, 3), 1, local(2026, 11, 30, 10)),  # out of hours: from the opening
        (local(2026, 11, 13, 17), 8, local(2026, 11, 17, 11)),  # over a rest day (16 Nov)
        (local(2026, 11, 23, 10), 0, local(2026, 11, 23, 10)),
    ],
)
def test_add_and_subtract(start: datetime, hours: int, end: datetime) -> None:
    calendar, period = desk(), hours * H
    assert calendar.add(start, period) == end
    assert calendar.open_time(start, end) == period
    if calendar.is_open(start) or hours == 0:
        assert calendar.subtract(end, period) == start
    else:  # the latest start that has waited that long is the opening itself
        assert calendar.subtract(end, period) == calendar.add(start, H) - H  # its next opening


def test_the_wall_clock_rule_of_the_task_a_saturday_night_message() -> None:
    # The README's case: a Saturday-night message with a 24-hour target is due on
    # Sunday night by the wall clock; with business hours, three working days on.
    calendar = desk(WEEKDAYS_ONLY)
    wrote = local(2026, 11, 28, 22)
    due = calendar.add(wrote, 24 * H)
    assert due == local(2026, 12, 2, 15)  # Mon 9 + Tue 9 + Wed 6
    # The reminders' cutoff: the latest arrival that has waited 24 open hours by then.
    assert calendar.subtract(due, 24 * H) == local(2026, 11, 30, 9)
    assert wrote <= calendar.subtract(due, 24 * H)
    assert wrote > calendar.subtract(due - timedelta(seconds=1), 24 * H)


def test_subtract_from_a_closed_moment_walks_back_to_the_last_open_hours() -> None:
    calendar = desk(WEEKDAYS_ONLY)
    sunday = local(2026, 11, 29, 12)
    assert calendar.subtract(sunday, 2 * H) == local(2026, 11, 27, 16)
    assert calendar.subtract(sunday, 9 * H) == local(2026, 11, 27, 9)
    assert calendar.subtract(sunday, 10 * H) == local(2026, 11, 26, 17)


def test_a_span_of_several_weeks() -> None:
    # June to August 2026 has no rest day: 50 open hours a week (5 x 9 + 5).
    calendar = desk()
    start = local(2026, 6, 1, 9)  # a Monday's opening
    assert calendar.add(start, 500 * H) == local(2026, 8, 8, 14)  # ten weeks on, Sat closing
    assert calendar.subtract(local(2026, 8, 8, 14), 500 * H) == start
    assert calendar.open_time(start, local(2026, 8, 10, 9)) == 500 * H
    # Over September: its 16th (a Wednesday) is closed.
    assert calendar.open_time(local(2026, 9, 14), local(2026, 9, 21)) == 41 * H


def test_a_leap_day_is_counted() -> None:
    calendar = desk(WEEKDAYS_ONLY)
    # 2028-02-28 is a Monday, 02-29 a Tuesday: three open days to Thursday's opening.
    assert calendar.open_time(local(2028, 2, 28), local(2028, 3, 2)) == 27 * H
    assert calendar.add(local(2028, 2, 28, 17), 2 * H) == local(2028, 2, 29, 10)
    with_holiday = desk(WEEKDAYS_ONLY, holidays=("2028-02-29",))
    assert with_holiday.add(local(2028, 2, 28, 17), 2 * H) == local(2028, 3, 1, 10)


def test_add_and_subtract_are_inverse_everywhere() -> None:
    # Every quarter hour of a fortnight that holds a rest day, and several periods:
    # what add reaches holds exactly that much open time; subtract is the latest
    # start that has waited it (a minute later has waited less).
    calendars = [desk(), desk(WEEKDAYS_ONLY, holidays=("2026-11-19",)), desk(zone=TIJUANA)]
    starts = [local(2026, 11, 12) + n * timedelta(minutes=15) for n in range(0, 14 * 96, 7)]
    periods = [timedelta(minutes=1), H, 9 * H, 24 * H, 61 * H + timedelta(minutes=7)]
    for calendar, at, period in itertools.product(calendars, starts, periods):
        later = calendar.add(at, period)
        assert calendar.open_time(at, later) == period
        assert calendar.open_time(at, later - timedelta(minutes=1)) < period
        earlier = calendar.subtract(at, period)
        assert calendar.open_time(earlier, at) == period
        assert calendar.open_time(earlier + timedelta(minutes=1), at) < period


def test_open_time_is_zero_for_an_empty_or_closed_span() -> None:
    calendar = desk()
    assert calendar.open_time(local(2026, 11, 23, 12), local(2026, 11, 23, 11)) == timedelta(0)
    assert calendar.open_time(local(2026, 11, 28, 14), local(2026, 11, 30, 9)) == timedelta(0)


def test_a_calendar_open_five_minutes_a_week_gives_up_after_a_century() -> None:
    calendar = desk({"sun": "12:00-12:05"}, mexican=False)
    at = local(2026, 11, 30)
    cutoff = calendar.subtract(at, 87_600 * H)  # escalation.unanswered_hours at its highest
    assert cutoff <= at - timedelta(days=WALK_LIMIT_DAYS)  # before any mail kept
    assert calendar.add(at, 87_600 * H) > at + timedelta(days=WALK_LIMIT_DAYS - 7)


# --- time zones -----------------------------------------------------------------------------


def test_mexico_city_has_no_daylight_saving_time_since_2022() -> None:
    calendar = desk()
    # 09:00 in April: UTC-5 in 2021 (summer time then), UTC-6 from 2023 on.
    assert calendar.opening(date(2021, 4, 5)) == (
        datetime(2021, 4, 5, 14, tzinfo=UTC),
        datetime(2021, 4, 5, 23, tzinfo=UTC),
    )
    assert calendar.opening(date(2026, 4, 6)) == (
        datetime(2026, 4, 6, 15, tzinfo=UTC),
        datetime(2026, 4, 6, 0, tzinfo=UTC) + 24 * H,
    )


def test_a_border_zone_opens_at_nine_local_on_both_sides_of_its_change() -> None:
    # America/Tijuana follows US daylight saving time: 8 March and 1 November 2026.
    calendar = desk(zone=TIJUANA)
    friday, monday = calendar.opening(date(2026, 3, 6)), calendar.opening(date(2026, 3, 9))
    assert friday is not None and monday is not None
    assert friday[0] == datetime(2026, 3, 6, 17, tzinfo=UTC)  # 09:00 PST
    assert monday[0] == datetime(2026, 3, 9, 16, tzinfo=UTC)  # 09:00 PDT
    # Friday 9-18, Saturday 9-14, Monday 9-18: 23 open hours, though the weekend lost one.
    assert calendar.open_time(tijuana(2026, 3, 6, 9), tijuana(2026, 3, 9, 18)) == 23 * H
    assert calendar.add(tijuana(2026, 3, 7, 13), 2 * H) == tijuana(2026, 3, 9, 10)
    assert calendar.subtract(tijuana(2026, 11, 2, 10), 2 * H) == tijuana(2026, 10, 31, 13)


def test_a_day_that_loses_or_gains_an_hour_is_that_much_shorter_or_longer() -> None:
    calendar = desk({"sun": "00:00-24:00"}, zone=TIJUANA, mexican=False)
    assert calendar.open_time(tijuana(2026, 3, 8), tijuana(2026, 3, 9)) == 23 * H
    assert calendar.open_time(tijuana(2026, 11, 1), tijuana(2026, 11, 2)) == 25 * H
    # 02:30 does not exist on 8 March: read with the offset before the change (03:30 PDT).
    gap = desk({"sun": "02:30-05:00"}, zone=TIJUANA, mexican=False)
    assert gap.opening(date(2026, 3, 8)) == (
        datetime(2026, 3, 8, 10, 30, tzinfo=UTC),
        datetime(2026, 3, 8, 12, tzinfo=UTC),
    )


# --- configuration --------------------------------------------------------------------------


def test_the_calendar_defaults_and_the_example(tmp_path: Path) -> None:
    example = load_settings(Path(__file__).resolve().parents[1] / "config/mailcase.example.toml")
    assert example.escalation.clock == "wall"
    assert example.calendar.mexican_holidays is True
    calendar = example.business_calendar()
    assert calendar.hours == {d: (540, 1080) for d in range(5)} | {5: (540, 840)}
    assert calendar.zone == ZoneInfo(example.folio.timezone)
    default = load_settings(write(tmp_path, ISSUE_CONFIG))
    assert default.calendar == example.calendar


def test_a_calendar_as_configured(tmp_path: Path) -> None:
    tijuana = ISSUE_CONFIG.replace("[folio]\n", '[folio]\ntimezone = "America/Tijuana"\n')
    text = tijuana + (
        '\n[escalation]\nclock = "business"\n'
        '[calendar]\nholidays = ["2026-12-24", 2026-12-31]\nmexican_holidays = false\n'
        '[calendar.hours]\nmon = "08:00-17:00"\nsun = "10:00-12:00"\n'
    )
    settings = load_settings(write(tmp_path, text))
    calendar = settings.business_calendar()
    assert settings.escalation.clock == "business"
    # The days left out are closed: only Monday and Sunday open.
    assert calendar.hours == {0: (480, 1020), 6: (600, 720)}
    assert calendar.holidays == {date(2026, 12, 24), date(2026, 12, 31)}
    assert not calendar.mexican_holidays and calendar.zone == TIJUANA


@pytest.mark.parametrize(
    ("toml", "key", "why"),
    [
        ('[calendar.hours]\nmon = "18:00-09:00"\n', "calendar.hours.mon", "ends before"),
        ('[calendar.hours]\nfri = "25:00-26:00"\n', "calendar.hours.fri", "not a time of day"),
        ('[calendar.hours]\nmonday = "09:00-18:00"\n', "calendar.hours.monday", "unknown key"),
        ("[calendar]\nhours = {}\n", "calendar.hours", "no day of the week is open"),
        ('[calendar]\nholidays = ["2026-02-30"]\n', "calendar.holidays", "not a date"),
        ('[calendar]\nholidays = ["24/12/2026"]\n', "calendar.holidays", "not a date"),
        ("[calendar]\nholidays = [1798761600]\n", "calendar.holidays", "not a date"),
        ('[calendar]\nholidays = "2026-12-24"\n', "calendar.holidays", "list"),
        ('[escalation]\nclock = "office"\n', "escalation.clock", "'wall' or 'business'"),
    ],
)
def test_a_bad_calendar_is_a_configuration_error_naming_the_key(
    tmp_path: Path, toml: str, key: str, why: str
) -> None:
    message = load_error(tmp_path, ISSUE_CONFIG + "\n" + toml)
    assert key in message and why in message


# --- eighth review round ------------------------------------------------------------------


def test_a_range_shorter_than_the_reminders_check_is_refused(tmp_path: Path) -> None:
    # Open 09:00-09:03 and checked every 5 minutes from 00:03:30: never reminded.
    from mailcase.reminders import CHECK_MINUTES

    assert CHECK_MINUTES <= SHORTEST_RANGE_MINUTES
    message = load_error(tmp_path, ISSUE_CONFIG + '\n[calendar.hours]\nmon = "09:00-09:03"\n')
    assert "calendar.hours.mon" in message and "less than 5 minutes" in message
    assert parse_range("09:00-09:05") == (540, 545)


def test_a_range_opening_in_the_skipped_hour_and_closing_before_it_ends_is_no_range() -> None:
    # 8 March 2026, Tijuana: 02:00 becomes 03:00. "02:30-03:15" read 10:30Z-10:15Z, and
    # its negative open time pushed a cutoff back by a week.
    calendar = desk({"sun": "02:30-03:15", "mon": "09:00-18:00"}, zone=TIJUANA, mexican=False)
    assert calendar.opening(date(2026, 3, 8)) is None
    assert calendar.open_time(tijuana(2026, 3, 7, 12), tijuana(2026, 3, 9)) == timedelta(0)
    # 60 minutes of this Monday, 15 of the one before: Sunday gives none (it gave
    # minus 15, and the cutoff was 17:30).
    monday_ten = tijuana(2026, 3, 9, 10)
    assert calendar.subtract(monday_ten, timedelta(minutes=75)) == tijuana(2026, 3, 2, 17, 45)


def test_one_day_from_the_environment_changes_that_day_of_the_default_week(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without [calendar.hours] in the file, MAILCASE_CALENDAR__HOURS__SAT made a week of
    # Saturday alone: every weekday closed, reminders late by a week.
    monkeypatch.setenv("MAILCASE_CALENDAR__HOURS__SAT", "09:00-13:00")
    settings = load_settings(write(tmp_path, ISSUE_CONFIG))
    hours = settings.business_calendar().hours
    assert hours == {d: (540, 1080) for d in range(5)} | {5: (540, 780)}
