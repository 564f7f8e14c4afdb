"""Reminders for cases a customer is waiting on (escalation): the rule, `cases remind`,
`cases list --unanswered` and the daemon's job.

The rule is tested as a pure function; the rest against real Dovecot and SMTP
servers, on SQLite and PostgreSQL. Time is moved by setting a case's
``last_customer_at`` back in the database, never by sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from helpers import CONTACTO, NOTIFY, Cli, mail, write_config
from servers import Dovecot, Postgres, SmtpSink
from sqlmodel import col
from test_agents import AREAS, CUSTOMER, Desk, text
from test_config import ISSUE_CONFIG, load_error

from mailcase import daemon
from mailcase.agentmail import SIDE_NOTICE_KINDS
from mailcase.config import load_settings
from mailcase.models import Case, Checkpoint, Notice
from mailcase.reminders import Entry, Waiting, last_held, reminder_due, waiting
from mailcase.service import Runtime
from mailcase.store import Store, as_utc

REDES = "redes@internet-plarey.com.mx"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

# --- the rule -------------------------------------------------------------------------------

CUSTOMER_WROTE = Entry("customer", from_customer=True)
ACK = Entry("notice", notice="acknowledgement")
NOTIFIED = Entry("notice", notice="agent_notification")
RELAY = Entry("notice", notice="relay")
REMINDER = Entry("notice", notice="reminder")
HELD_REMINDER = Entry("notice", notice="reminder", status="suppressed", at=NOW)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([CUSTOMER_WROTE, ACK, NOTIFIED], Waiting.WAITING),
        ([CUSTOMER_WROTE, ACK, NOTIFIED, RELAY], Waiting.ANSWERED),
        ([CUSTOMER_WROTE, RELAY, CUSTOMER_WROTE, NOTIFIED], Waiting.WAITING),
        # Every customer-facing notice answers, but the acknowledgement.
        ([CUSTOMER_WROTE, Entry("notice", notice="resolution_valid")], Waiting.ANSWERED),
        ([CUSTOMER_WROTE, Entry("notice", notice="visit")], Waiting.ANSWERED),
        # A relay a loop guard held, or the server refused, never reached the customer.
        ([CUSTOMER_WROTE, Entry("notice", notice="relay", status="suppressed")], Waiting.WAITING),
        ([CUSTOMER_WROTE, Entry("notice", notice="relay", status="failed")], Waiting.WAITING),
        ([CUSTOMER_WROTE, Entry("notice", notice="relay", status="sent")], Waiting.ANSWERED),
        # The notice of a merge names the folio that follows: nothing of the matter.
        ([CUSTOMER_WROTE, Entry("notice", notice="merged")], Waiting.WAITING),
        # An internal note is no answer.
        ([CUSTOMER_WROTE, Entry("note"), Entry("agent")], Waiting.WAITING),
        # An agent who wrote straight to the customer, the mailbox in copy, answered.
        ([CUSTOMER_WROTE, Entry("agent", to_customer=True)], Waiting.ANSWERED),
        # A participant's message (not the customer's own) does not start a new wait.
        ([CUSTOMER_WROTE, RELAY, Entry("customer")], Waiting.ANSWERED),
        ([CUSTOMER_WROTE, NOTIFIED, REMINDER], Waiting.REMINDED),
        # A reminder a guard held is none (it is tried again later: reminder_due).
        ([CUSTOMER_WROTE, NOTIFIED, HELD_REMINDER], Waiting.WAITING),
        ([CUSTOMER_WROTE, REMINDER, HELD_REMINDER], Waiting.REMINDED),
        ([CUSTOMER_WROTE, REMINDER, CUSTOMER_WROTE], Waiting.WAITING),
        ([CUSTOMER_WROTE, REMINDER, RELAY], Waiting.ANSWERED),
        # A case an agent opened for the customer by writing to them: answered.
        ([Entry("agent", to_customer=True), ACK], Waiting.ANSWERED),
        # ... by forwarding their mail to support: the customer waits.
        ([Entry("agent"), ACK, NOTIFIED], Waiting.WAITING),
    ],
)
def test_what_answers_the_customer(entries: list[Entry], expected: Waiting) -> None:
    assert waiting(entries) is expected


def test_a_reminder_is_due_once_the_period_is_over() -> None:
    hours = 24
    just_in = NOW - timedelta(hours=23, minutes=59)
    assert not reminder_due(Waiting.WAITING, just_in, NOW, hours)
    assert reminder_due(Waiting.WAITING, NOW - timedelta(hours=24), NOW, hours)
    assert not reminder_due(Waiting.REMINDED, NOW - timedelta(days=9), NOW, hours)
    assert not reminder_due(Waiting.ANSWERED, NOW - timedelta(days=9), NOW, hours)
    assert not reminder_due(Waiting.WAITING, NOW - timedelta(days=9), NOW, 0)  # off
    naive = (NOW - timedelta(hours=25)).replace(tzinfo=None)  # a column read as naive UTC
    assert reminder_due(Waiting.WAITING, naive, NOW, hours)


def test_a_held_reminder_is_tried_again_an_hour_later() -> None:
    since = NOW - timedelta(days=2)
    held = [CUSTOMER_WROTE, NOTIFIED, HELD_REMINDER]
    assert last_held(held) == NOW
    assert last_held([HELD_REMINDER, CUSTOMER_WROTE]) is None  # held for an earlier message
    later = NOW + timedelta(minutes=59)
    assert not reminder_due(waiting(held), since, later, 24, held_at=last_held(held))
    later = NOW + timedelta(hours=1)
    assert reminder_due(waiting(held), since, later, 24, held_at=last_held(held))


def test_a_reply_to_a_reminder_is_no_side_notice() -> None:
    # A reply to a side notice is kept as a note; to a reminder it is for the customer.
    assert "reminder" not in SIDE_NOTICE_KINDS


# --- configuration --------------------------------------------------------------------------


def test_unanswered_hours_defaults_to_a_day_and_refuses_a_negative(tmp_path: Path) -> None:
    example = load_settings(Path(__file__).resolve().parents[1] / "config/mailcase.example.toml")
    assert example.escalation.unanswered_hours == 24
    message = load_error(tmp_path, ISSUE_CONFIG + "\n[escalation]\nunanswered_hours = -1\n")
    assert "escalation.unanswered_hours" in message


# --- against the servers --------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path)


def _wait_back(desk: Desk, hours: float, folio: str | None = None) -> None:
    """Set the customer's latest message ``hours`` back (every case's, or ``folio``'s)."""
    store = Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)
    then = datetime.now(UTC) - timedelta(hours=hours)
    update = sa.update(Case).where(col(Case.last_customer_at).is_not(None))
    if folio is not None:
        update = update.where(col(Case.folio) == folio)
    with store.transaction() as session:
        session.execute(update.values(last_customer_at=then))
    store.dispose()


def _remind(desk: Desk) -> list[str]:
    return list(desk.cli.json("cases", "remind"))


def _unanswered(desk: Desk) -> list[str]:
    return [c["folio"] for c in desk.cli.json("cases", "list", "--unanswered")]


def _reminders(desk: Desk, rcpt: str = NOTIFY) -> list[EmailMessage]:
    return [m for m in desk.to(rcpt) if text(m).startswith("Recordatorio")]


def _customer_writes(desk: Desk, folio: str, body: str) -> None:
    desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", body=body))


@pytest.mark.integration
def test_an_unanswered_customer_earns_one_reminder_per_unanswered_message(desk: Desk) -> None:
    folio = desk.open_case(subject="Sin servicio", body="Desde ayer no tengo internet.")
    [notification] = desk.to(NOTIFY)
    assert _remind(desk) == []  # written just now
    assert _unanswered(desk) == [folio]  # however long: unanswered is unanswered

    _wait_back(desk, 25)
    desk.cli.poll()  # a one-shot read of the mailboxes: no reminders
    assert _reminders(desk) == []
    code, out, err = desk.cli("cases", "remind")
    assert (code, out) == (0, f"{folio}\n"), err

    [reminder] = _reminders(desk)
    body = text(reminder)
    assert f"el cliente del caso {folio} espera respuesta desde hace 1 día y 1 hora" in body
    assert "Desde ayer no tengo internet." in body and CUSTOMER in body
    # In the case's conversation, and a reply to it comes back to the mailbox.
    assert reminder["In-Reply-To"].strip() == notification["Message-ID"].strip()
    assert notification["Message-ID"].strip() in reminder["References"]
    assert reminder["Reply-To"].addresses[0].addr_spec == CONTACTO
    assert reminder["Subject"] == notification["Subject"]  # Gmail threads by subject too
    assert _remind(desk) == []  # once per unanswered message
    assert len(_reminders(desk)) == 1

    # The agent answers the reminder itself: relayed to the customer, as a reply to
    # the case's notification is (not kept as a note, as a reply to a side notice is).
    desk.agent_reply(reminder, "Buenas tardes, hoy pasa un técnico a revisar su línea.")
    relayed = desk.last_to(CUSTOMER)
    assert "hoy pasa un técnico" in text(relayed) and "Recordatorio" not in text(relayed)
    # The agent's words, the relay, and the agent becoming the owner (auto_assign).
    assert [m["kind"] for m in desk.case(folio)["messages"][-3:]] == ["agent", "notice", "system"]
    _wait_back(desk, 48)
    assert _remind(desk) == [] and _unanswered(desk) == []

    # The customer writes again; an internal note is no answer to them.
    _customer_writes(desk, folio, "Sigue sin funcionar.")
    desk.agent_reply(notification, "#nota\nRevisar el nodo del poste 14.")
    assert _unanswered(desk) == [folio]
    _wait_back(desk, 30)
    assert _remind(desk) == [folio]
    second = _reminders(desk)[-1]
    assert "Sigue sin funcionar." in text(second) and "1 día y 6 horas" in text(second)
    assert len(_reminders(desk)) == 2


@pytest.mark.integration
def test_an_agent_writing_straight_to_the_customer_answers_them(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    assert _unanswered(desk) == [folio]
    # From the agent's own client, to the customer with the mailbox in copy: sent by
    # the agent's server, recorded on the case, and an answer all the same.
    desk.agent_reply(notification, "Le escribo directamente.", to=f"{CUSTOMER}, {CONTACTO}")
    _wait_back(desk, 30)
    assert _unanswered(desk) == [] and _remind(desk) == []


@pytest.mark.integration
def test_an_english_case_is_reminded_in_english(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(tmp_path, mailboxes, sink, notify=True, language="en", db_url=db_url)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case(body="My internet is down.")
    _wait_back(desk, 50)
    assert _remind(desk) == [folio]
    body = text(desk.last_to(NOTIFY))
    assert f"the customer of case {folio} has been waiting 2 days and 2 hours" in body
    assert "My internet is down." in body and "Recordatorio" not in body


@pytest.mark.integration
def test_only_open_cases_with_a_customer_address_are_reminded(desk: Desk) -> None:
    waiting_case = desk.open_case(sender="Rosa <rosa@example.com>", body="Sin señal.")
    closed = desk.open_case(sender="Luis <luis@example.com>")
    resolved = desk.open_case(sender="Eva <eva@example.com>")
    first = desk.open_case(sender="Juan <juan@example.com>", subject="Sin internet")
    second = desk.open_case(sender="Juan <juan@example.com>", subject="Sigo sin internet")
    phone = desk.open_phone_case()
    assert desk.cli("cases", "close", closed)[0] == 0
    assert desk.cli("cases", "resolve", resolved, "--outcome", "valid", "--cause", "Listo.")[0] == 0
    assert desk.cli("cases", "merge", second, "--into", first, "--no-notice")[0] == 0
    assert desk.cli("cases", "route", waiting_case, "--area", "redes")[0] == 0
    _wait_back(desk, 100)

    assert sorted(_unanswered(desk)) == sorted([waiting_case, first])
    assert sorted(_remind(desk)) == sorted([waiting_case, first])
    # A routed case's reminder goes to its area too.
    [to_area] = _reminders(desk, REDES)
    assert waiting_case in to_area["Subject"]
    reminded = {m["Subject"].split("]")[0].removeprefix("[Folio ") for m in _reminders(desk)}
    assert reminded == {waiting_case, first}
    assert not {closed, resolved, second, phone} & reminded


@pytest.mark.integration
def test_the_longest_wait_is_listed_first(desk: Desk) -> None:
    newer = desk.open_case(sender="Rosa <rosa@example.com>")
    older = desk.open_case(sender="Luis <luis@example.com>")
    _wait_back(desk, 2, newer)
    _wait_back(desk, 5, older)
    assert _unanswered(desk) == [older, newer]
    # Since when each customer waits, in the JSON rows.
    rows = desk.cli.json("cases", "list", "--unanswered")
    waits = [datetime.fromisoformat(r["waiting_since"]) for r in rows]
    now = datetime.now(UTC)
    assert abs(now - waits[0] - timedelta(hours=5)) < timedelta(minutes=1)
    assert abs(now - waits[1] - timedelta(hours=2)) < timedelta(minutes=1)
    assert "waiting_since" not in desk.cli.json("cases", "list")[0]
    code, out, _ = desk.cli("cases", "list", "--unanswered")
    assert code == 0 and out.index(older) < out.index(newer)
    # The listing's other filters still apply.
    only = desk.cli.json("cases", "list", "--unanswered", "--customer", "rosa@example.com")
    assert [c["folio"] for c in only] == [newer]


@pytest.mark.integration
def test_zero_hours_turns_reminders_off(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    extra = "[escalation]\nunanswered_hours = 0\n"
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=extra, db_url=db_url)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    desk.open_case()
    _wait_back(desk, 1000)
    sent = len(sink.messages)
    code, out, _ = desk.cli("cases", "remind")
    assert (code, out) == (0, "")
    assert len(sink.messages) == sent


# --- the daemon -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("hours", [24, 0])
def test_the_daemon_reminds_every_few_minutes(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, hours: int
) -> None:
    extra = f"{AREAS}[escalation]\nunanswered_hours = {hours}\n"
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=extra)
    config.write_text(config.read_text().replace("[poll]\n", "[poll]\nidle = false\n", 1))
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case()
    _wait_back(desk, 30)
    rt = Runtime.open(load_settings(config))
    the_daemon = daemon.Daemon(rt)
    seen: dict[str, Any] = {}

    def watch() -> None:
        try:
            deadline = time.monotonic() + 30
            while not the_daemon.scheduler.running and time.monotonic() < deadline:
                time.sleep(0.05)
            job = the_daemon.scheduler.get_job(daemon.REMIND_JOB)
            seen["interval"] = job.trigger.interval if job is not None else None
            if job is not None:  # its first run is at the start
                while not _reminders(desk) and time.monotonic() < deadline:
                    time.sleep(0.1)
            else:
                time.sleep(1)
        finally:
            rt.stop.set()

    driver = threading.Thread(target=watch, daemon=True)
    driver.start()
    try:
        the_daemon.run()  # the main thread: it installs the signal handlers
    finally:
        driver.join(30)
        rt.store.dispose()
    if hours:
        assert seen["interval"] == timedelta(minutes=5)
        [reminder] = _reminders(desk)
        assert folio in reminder["Subject"]
    else:
        assert seen["interval"] is None
        assert _reminders(desk) == []


@pytest.mark.integration
def test_reminding_with_the_database_down_is_one_line(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, postgres: Postgres, pg_url: str
) -> None:
    # Expected trouble, as for closing stale cases: the next run tries again.
    rt = Runtime.open(load_settings(write_config(tmp_path, mailboxes, sink, db_url=pg_url)))
    the_daemon = daemon.Daemon(rt)
    postgres.stop(fast=True)
    try:
        with structlog.testing.capture_logs() as logs:
            the_daemon.remind()
    finally:
        postgres.start()
        rt.store.dispose()
    assert [(e["event"], e["log_level"]) for e in logs] == [("remind_failed", "warning")]
    assert "exc_info" not in logs[0] and logs[0]["error"]


# --- seventh review round -------------------------------------------------------------------


def _store(desk: Desk) -> Store:
    return Store.open(load_settings(desk.cli.config).database.url, auto_upgrade=False)


def _last_customer_at(desk: Desk, folio: str) -> datetime | None:
    store = _store(desk)
    with store.reading() as conn:
        at = conn.execute(sa.select(Case.last_customer_at).where(Case.folio == folio)).scalar()
    store.dispose()
    return as_utc(at)


@pytest.mark.integration
def test_old_mail_met_on_a_first_poll_starts_no_wait(
    desk: Desk, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # Opened silently (no acknowledgement, the agents not told): a day later the agents
    # were reminded of every case of the backlog at once.
    now = datetime.now(UTC)
    for n in range(3):
        mailboxes.append(
            "contacto",
            mail(sender=f"viejo{n}@example.com", subject=f"Reporte viejo {n}"),
            internal_date=now - timedelta(days=400 + n),
        )
    old = mail(subject="Sin servicio")
    mailboxes.append("contacto", old, internal_date=now - timedelta(days=100))
    desk.cli.poll()
    assert len(desk.cli.json("cases", "list")) == 4 and sink.messages == []
    assert _unanswered(desk) == [] and _remind(desk) == []
    # The customer's next message starts the wait: from when it reached the server.
    folio = desk.cli.json("cases", "list", "--customer", CUSTOMER)[0]["folio"]
    _customer_writes(desk, folio, "¿Siguen ahí?")
    assert _unanswered(desk) == [folio]
    _wait_back(desk, 25)
    assert _remind(desk) == [folio]


@pytest.mark.integration
def test_a_merge_notice_is_no_answer(desk: Desk) -> None:
    # The customer is told "we attend them together under the first folio": nothing
    # about the matter, so the case that stays still waits for an answer.
    first = desk.open_case(subject="Sin internet", body="Desde ayer no tengo internet.")
    second = desk.open_case(subject="Sigo sin internet", body="¿Alguien me puede ayudar?")
    assert desk.cli("cases", "merge", second, "--into", first)[0] == 0
    assert "los atenderemos juntos" in text(desk.last_to(CUSTOMER))
    _wait_back(desk, 30)
    assert _unanswered(desk) == [first]
    assert _remind(desk) == [first]


@pytest.mark.integration
def test_a_relay_the_server_refused_is_no_answer(desk: Desk, sink: SmtpSink) -> None:
    folio = desk.open_case(body="Sin internet.")
    [notification] = desk.to(NOTIFY)
    sink.fail_next(550, "5.7.1 message refused")
    desk.agent_reply(notification, "Le llamamos mañana para revisar.")
    assert [m["status"] for m in desk.cli.json("outbox", "list", "--all")].count("failed") == 1
    _wait_back(desk, 30)
    assert _unanswered(desk) == [folio]
    assert _remind(desk) == [folio]


def _poll_back(desk: Desk, hours: float) -> None:
    """Set every mailbox's last successful poll ``hours`` back."""
    store = _store(desk)
    then = datetime.now(UTC) - timedelta(hours=hours)
    with store.transaction() as session:
        session.execute(sa.update(Checkpoint).values(last_poll_at=then))
    store.dispose()


@pytest.mark.integration
def test_no_reminder_before_the_mailbox_is_read_after_the_wait(
    desk: Desk, mailboxes: Dovecot
) -> None:
    # An agent's answer may sit unread in a mailbox that cannot be read: the wait is
    # judged only once the mailbox has been read without error after it ended.
    folio = desk.open_case()
    _wait_back(desk, 25)  # the wait ended an hour ago ...
    _poll_back(desk, 2)  # ... and the mailbox was last read before that
    assert _remind(desk) == [] and _unanswered(desk) == [folio]
    mailboxes.stop()
    try:
        assert desk.cli("poll")[0] != 0  # read after the wait, but the read failed
        assert _remind(desk) == []
    finally:
        mailboxes.start()
    desk.cli.poll()
    assert _remind(desk) == [folio]


@pytest.mark.integration
def test_the_daemon_reminds_only_after_its_first_polls(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # The daemon restarts while the mailbox cannot be read, an agent's answer in it:
    # its first reminder run came at the start, before any poll, and told the agents
    # nobody had answered.
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=AREAS)
    config.write_text(config.read_text().replace("[poll]\n", "[poll]\nidle = false\n", 1))
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    desk.open_case(body="Sin internet desde ayer.")
    [notification] = desk.to(NOTIFY)
    mailboxes.append("contacto", mail(
        sender="Ana Técnica <ana.tecnica@internet-plarey.com.mx>", to=CONTACTO,
        subject=f"Re: {notification['Subject']}", body="Hoy pasa el técnico.",
        headers={"In-Reply-To": notification["Message-ID"].strip()},
    ))  # fmt: skip
    mailboxes.stop()
    _wait_back(desk, 25)
    rt = Runtime.open(load_settings(config))
    the_daemon = daemon.Daemon(rt)
    seen: dict[str, Any] = {}

    def watch() -> None:
        try:
            deadline = time.monotonic() + 30
            while not the_daemon.ready and time.monotonic() < deadline:
                time.sleep(0.05)
            job = the_daemon.scheduler.get_job(daemon.REMIND_JOB)
            seen["started"] = job is not None and job.next_run_time is not None
            time.sleep(1.5)  # the first reminder run, right after the first polls
        finally:
            rt.stop.set()

    driver = threading.Thread(target=watch, daemon=True)
    driver.start()
    try:
        with structlog.testing.capture_logs() as logs:
            the_daemon.run()
    finally:
        driver.join(30)
        rt.store.dispose()
        mailboxes.start()
    assert seen["started"]
    assert _reminders(desk) == []
    assert "mailbox_failed" in [e["event"] for e in logs]


@pytest.mark.integration
def test_a_held_reminder_is_no_reminder_and_is_tried_again_an_hour_later(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    extra = AREAS + "[limits]\nmax_notices_per_hour = 2\n"
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=extra, db_url=db_url)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    folio = desk.open_case()  # the acknowledgement and the agents' notice: the cap is reached
    _wait_back(desk, 25)
    code, out, _ = desk.cli("cases", "remind")
    assert (code, out) == (0, "")  # held: not reminded, so not printed
    assert _unanswered(desk) == [folio] and _reminders(desk) == []
    assert _remind(desk) == []  # not tried again on every run ...
    statuses = [m["status"] for m in desk.cli.json("outbox", "list", "--all")]
    assert statuses.count("suppressed") == 1
    store = _store(desk)  # ... but an hour later, the cap free again
    with store.transaction() as session:
        then = datetime.now(UTC) - timedelta(minutes=61)
        session.execute(sa.update(Notice).values(created_at=then, queued_at=then))
    store.dispose()
    assert _remind(desk) == [folio]
    assert len(_reminders(desk)) == 1


@pytest.mark.integration
def test_the_wait_counts_from_when_the_mail_reached_the_server(
    desk: Desk, mailboxes: Dovecot
) -> None:
    # The mailbox was unreadable for 30 hours: the customer waited that long, not 0.
    desk.cli.poll()  # the first contact is over (an empty mailbox)
    now = datetime.now(UTC)
    mailboxes.append(
        "contacto", mail(body="No tengo servicio."), internal_date=now - timedelta(hours=30)
    )
    desk.cli.poll()
    [case] = desk.cli.json("cases", "list")
    folio = case["folio"]
    assert _remind(desk) == [folio]
    at = _last_customer_at(desk, folio)
    assert at is not None and abs(at - (now - timedelta(hours=30))) < timedelta(minutes=1)
    # A follow-up: from its arrival too, but never back before a later message.
    _wait_back(desk, 40)
    subject = f"Re: [Folio {folio}] Sin servicio"
    mailboxes.append(
        "contacto", mail(subject=subject, body="¿Hay novedades?"),
        internal_date=now - timedelta(hours=26),
    )  # fmt: skip
    mailboxes.append(
        "contacto", mail(subject=subject, body="Sigo esperando."),
        internal_date=now - timedelta(hours=28),
    )  # fmt: skip
    desk.cli.poll()
    at = _last_customer_at(desk, folio)
    assert at is not None and abs(at - (now - timedelta(hours=26))) < timedelta(minutes=1)
    assert _remind(desk) == [folio]


@pytest.mark.integration
def test_a_reminder_that_cannot_be_rendered_costs_one_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    # An override failing on one case's data (render.py's own example): the case that
    # waited longest stopped every other reminder, every run.
    override = tmp_path / "tpl" / "es"
    override.mkdir(parents=True)
    shipped = (Path(__file__).resolve().parents[1] / "templates/es/reminder.txt.j2").read_text()
    (override / "reminder.txt.j2").write_text("({{ customer_name.split()[1] }})\n" + shipped)
    extra = f'{AREAS}[templates]\ndirectory = "{tmp_path / "tpl"}"\n'
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=extra, db_url=db_url)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path)
    nameless = desk.open_case(sender="sinnombre@example.com", subject="Falla 1")
    named = desk.open_case(sender="Rosa Díaz <rosa@example.com>", subject="Falla 2")
    _wait_back(desk, 30, named)
    _wait_back(desk, 40, nameless)  # the first in line
    code, out, err = desk.cli("cases", "remind")
    assert (code, out) == (0, f"{named}\n")
    assert "reminder_failed" in err and nameless in err
    reminded = [m for m in desk.to(NOTIFY) if "Recordatorio" in text(m)]
    assert [named in m["Subject"] for m in reminded] == [True]
    # The daemon's job: one line for the case, no traceback, on every run.
    rt = Runtime.open(load_settings(config))
    try:
        with structlog.testing.capture_logs() as logs:
            daemon.Daemon(rt).remind()
    finally:
        rt.store.dispose()
    assert [(e["event"], e["log_level"], e.get("folio")) for e in logs] == [
        ("reminder_failed", "warning", nameless)
    ]
    assert "exc_info" not in logs[0]
