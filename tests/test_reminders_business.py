"""Reminders counted in business hours (``escalation.clock = "business"``).

The rule with a calendar is tested as a pure function; the rest against real
Dovecot and SMTP servers, on SQLite and PostgreSQL. Time is driven explicitly:
a case's ``last_customer_at`` is set to a known instant and the reminder check
is run at chosen instants (``remind_unanswered(..., now=...)``), never by sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from helpers import NOTIFY, Cli, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import col
from test_agents import AREAS, Desk, text

from mailcase.businesshours import BusinessCalendar
from mailcase.config import Settings, load_settings
from mailcase.models import Case, Checkpoint
from mailcase.reminders import Waiting, remind_unanswered, reminder_due
from mailcase.store import Store

CDMX = ZoneInfo("America/Mexico_City")
WEEKDAYS = {d: "09:00-18:00" for d in ("mon", "tue", "wed", "thu", "fri")}
BUSINESS = AREAS + (
    '[escalation]\nclock = "business"\nunanswered_hours = 4\n'
    "[calendar.hours]\n" + "".join(f'{d} = "{r}"\n' for d, r in WEEKDAYS.items())
)


def local(d: int, h: int, mi: int = 0) -> datetime:
    """``h:mi`` on ``d`` November 2026 in Mexico City (the 20th is a Friday), in UTC."""
    return datetime(2026, 11, d, h, mi, tzinfo=CDMX).astimezone(UTC)


# --- the rule -------------------------------------------------------------------------------


def test_a_reminder_is_due_after_open_hours_only() -> None:
    calendar = BusinessCalendar.from_text(CDMX, WEEKDAYS)
    friday = local(20, 16)  # 2 open hours left that day
    assert reminder_due(Waiting.WAITING, friday, local(20, 20), 4)  # wall clock: Friday night
    for now in (local(20, 20), local(22, 23), local(23, 10, 59)):
        assert not reminder_due(Waiting.WAITING, friday, now, 4, calendar=calendar)
    assert reminder_due(Waiting.WAITING, friday, local(23, 11), 4, calendar=calendar)
    # Written on Saturday: it waits from Monday's opening.
    saturday = local(21, 22)
    assert not reminder_due(Waiting.WAITING, saturday, local(23, 12, 59), 4, calendar=calendar)
    assert reminder_due(Waiting.WAITING, saturday, local(23, 13), 4, calendar=calendar)
    assert not reminder_due(Waiting.WAITING, saturday, local(30, 13), 0, calendar=calendar)  # off


# --- against the servers --------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=BUSINESS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def _settings(desk: Desk) -> Settings:
    return load_settings(desk.cli.config)


def _wrote_at(desk: Desk, folio: str, at: datetime) -> None:
    """Set the customer's latest message on ``folio`` to ``at``."""
    store = Store.open(_settings(desk).database.url, auto_upgrade=False)
    with store.transaction() as session:
        update = sa.update(Case).where(col(Case.folio) == folio)
        session.execute(update.values(last_customer_at=at))
    store.dispose()


def _remind_at(desk: Desk, now: datetime, *, deliver: bool = True) -> list[str]:
    """The reminder check as the daemon runs it, at ``now``; its reminders delivered
    (by a poll: the mailboxes' last read is then after ``now`` again)."""
    settings = _settings(desk)
    store = Store.open(settings.database.url, auto_upgrade=False)
    try:
        folios = remind_unanswered(store, settings, now=now)
    finally:
        store.dispose()
    if deliver:
        desk.cli.poll()
    return folios


def _read_at(desk: Desk, at: datetime) -> None:
    """Set every mailbox's last successful poll to ``at``."""
    store = Store.open(_settings(desk).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(sa.update(Checkpoint).values(last_poll_at=at))
    store.dispose()


def _reminders(desk: Desk) -> list[str]:
    return [text(m) for m in desk.to(NOTIFY) if text(m).startswith("Recordatorio")]


@pytest.mark.integration
def test_no_reminder_over_a_weekend_then_one_once_business_hours_run_out(desk: Desk) -> None:
    # Friday 16:00, a 4-hour target: by the wall clock due at 20:00 that night; in
    # business hours 2 hours on Friday and 2 on Monday: Monday 11:00.
    friday = desk.open_case(subject="Sin servicio", body="No tengo internet.")
    saturday = desk.open_case(subject="Lento", body="El internet va lento.")
    _wrote_at(desk, friday, local(20, 16))
    _wrote_at(desk, saturday, local(21, 22))  # out of hours: waits from Monday 09:00
    for now in (local(20, 20), local(21, 12), local(22, 23, 55), local(23, 9), local(23, 10, 59)):
        assert _remind_at(desk, now) == [], now
    assert _reminders(desk) == []
    assert _remind_at(desk, local(23, 11)) == [friday]
    assert _remind_at(desk, local(23, 12, 59)) == []
    assert _remind_at(desk, local(23, 13)) == [saturday]
    reminders = _reminders(desk)
    assert len(reminders) == 2
    # The reminder says the target is in business hours; the wait itself is real time.
    assert "4 horas hábiles" in reminders[0]
    assert "espera respuesta desde hace 2 días y 19 horas" in reminders[0]
    assert _remind_at(desk, local(24, 13)) == []  # once per unanswered message


@pytest.mark.integration
def test_no_reminder_goes_out_while_the_desk_is_closed(desk: Desk) -> None:
    # Due at Friday's closing (14:00 + 4 open hours): the check a few minutes later
    # finds the desk closed, and the reminder goes out at Monday's opening.
    folio = desk.open_case()
    _wrote_at(desk, folio, local(20, 14))
    assert _remind_at(desk, local(20, 17, 59)) == []  # not due yet
    assert _remind_at(desk, local(20, 18, 0)) == []  # due, but closed
    assert _remind_at(desk, local(21, 10)) == []  # Saturday: closed
    assert _remind_at(desk, local(23, 9)) == [folio]


@pytest.mark.integration
def test_the_mailbox_must_be_read_after_the_business_hours_ran_out(desk: Desk) -> None:
    # Read on Friday at 20:30, after the wall-clock period but two open hours into the
    # business one: an answer mailed on Monday morning may still be unread.
    folio = desk.open_case()
    _wrote_at(desk, folio, local(20, 16))
    _read_at(desk, local(20, 20, 30))
    assert _remind_at(desk, local(23, 11, 30), deliver=False) == []
    _read_at(desk, local(23, 11, 5))
    assert _remind_at(desk, local(23, 11, 30)) == [folio]


@pytest.mark.integration
def test_a_rest_day_is_no_business_day(desk: Desk) -> None:
    # Monday 16 November 2026 is the third Monday of November (art. 74 VI).
    folio = desk.open_case()
    _wrote_at(desk, folio, local(13, 16))
    assert _remind_at(desk, local(16, 12)) == []  # closed: a rest day
    assert _remind_at(desk, local(17, 10, 59)) == []
    assert _remind_at(desk, local(17, 11)) == [folio]


@pytest.mark.integration
def test_the_wall_clock_is_unchanged_by_default(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    extra = AREAS + "[escalation]\nunanswered_hours = 4\n"
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=extra)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case()
    _wrote_at(desk, folio, local(20, 16))
    assert _remind_at(desk, local(20, 19, 59)) == []
    assert _remind_at(desk, local(20, 20)) == [folio]  # Friday night: nobody at the desk
    assert "4 horas," in _reminders(desk)[0]
    [row] = desk.cli.json("cases", "list", "--unanswered")
    assert "waiting_business_hours" not in row


@pytest.mark.integration
def test_unanswered_cases_show_the_business_hours_waited(desk: Desk) -> None:
    folio = desk.open_case()
    since = local(20, 16)
    _wrote_at(desk, folio, since)
    [row] = desk.cli.json("cases", "list", "--unanswered")
    calendar = _settings(desk).business_calendar()
    expected = calendar.open_time(since, datetime.now(UTC)).total_seconds() / 3600
    assert row["folio"] == folio
    assert abs(row["waiting_business_hours"] - expected) < 0.05
