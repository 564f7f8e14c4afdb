"""First contact with a mailbox full of old mail: all ingested, only recent mail answered."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import NOTIFY, Cli, mail, offline_runtime, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration


def test_only_mail_that_arrived_recently_is_answered(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    now = datetime.now(UTC)
    for days in (900, 400, 10, 4):  # years-old mail, and mail just past the 72 h window
        mailboxes.append(
            "contacto",
            mail(sender=f"viejo{days}@example.com", subject=f"Reporte de hace {days} días"),
            internal_date=now - timedelta(days=days),
        )
    mailboxes.append(
        "contacto", mail(sender="nuevo@example.com"), internal_date=now - timedelta(hours=2)
    )
    cli.poll()
    cases = cli.json("cases", "list")
    assert len(cases) == 5  # everything is ingested
    rcpts = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert rcpts == sorted(["nuevo@example.com", NOTIFY])  # one ack, one agent notice
    old = next(c for c in cases if c["customer"] == "viejo900@example.com")
    texts = [m["text"] for m in cli.json("cases", "show", old["folio"])["messages"]]
    assert any("max_age_hours" in t for t in texts)
    ledger = cli.json("messages", "list")
    assert sum("max_age_hours" in r["reason"] for r in ledger) == 4


def test_window_is_configurable(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILCASE_NOTICES__MAX_AGE_HOURS", "1000")
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    mailboxes.append("contacto", mail(), internal_date=datetime.now(UTC) - timedelta(days=10))
    cli.poll()
    assert [m.rcpt_tos for m in sink.messages] == [["juan.perez@example.com"]]


def test_an_old_thread_is_kept_whole_and_tells_nobody(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A reply in the old backlog joins its case quietly: no acknowledgement, no agent notice.
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    long_ago = datetime.now(UTC) - timedelta(days=300)
    first = mail(subject="Sin servicio", message_id="<viejo-1@example.com>")
    reply = mail(
        subject="Re: Sin servicio",
        headers={"In-Reply-To": "<viejo-1@example.com>"},
        body="Sigue sin funcionar el módem.",
    )
    mailboxes.append("contacto", first, internal_date=long_ago)
    mailboxes.append("contacto", reply, internal_date=long_ago + timedelta(hours=5))
    cli.poll()
    [case] = cli.json("cases", "list")
    assert [r["disposition"] for r in cli.json("messages", "list")] == ["new_case", "follow_up"]
    assert sink.messages == []
    messages = cli.json("cases", "show", case["folio"])["messages"]
    follow_up = next(m for m in messages if "módem" in (m["text"] or ""))
    assert (follow_up["direction"], follow_up["kind"]) == ("in", "customer")
    assert sum("max_age_hours" in (m["text"] or "") for m in messages) == 2


def test_arrival_times_are_right_whatever_the_hosts_time_zone(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server in Mexico runs with TZ=America/Mexico_City. imapclient hands INTERNALDATE
    # over in the host's local time without a zone unless told not to: read as UTC, every
    # arrival was six hours early, and mail 67 hours old counted as past the 72-hour window.
    monkeypatch.setenv("TZ", "America/Mexico_City")
    time.tzset()
    try:
        cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
        arrived = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=67)
        mailboxes.append("contacto", mail(), internal_date=arrived)
        cli.poll()
        [row] = cli.json("messages", "list")
        assert datetime.fromisoformat(row["received_at"]) == arrived
        assert "max_age_hours" not in row["reason"]
        assert [m.rcpt_tos for m in sink.messages] == [["juan.perez@example.com"]]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_after_the_first_contact_old_mail_is_answered_and_agents_told(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Mail an agent moves out of Junk days later keeps its arrival time (IMAP's
    # INTERNALDATE), and so does mail that waited out an outage: it is a report
    # of a customer like any other, not a backlog from before mailcase.
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    cli.poll()  # the first contact: an empty mailbox
    four_days_ago = datetime.now(UTC) - timedelta(days=4)
    mailboxes.append("contacto", mail(sender="rescatado@example.com"), internal_date=four_days_ago)
    cli.poll()
    rcpts = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert rcpts == sorted(["rescatado@example.com", NOTIFY])
    [row] = cli.json("messages", "list")
    assert "max_age_hours" not in row["reason"]


def test_a_first_contact_cut_short_stays_silent_for_its_backlog(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    import sqlalchemy as sa

    from mailcase.config import load_settings
    from mailcase.store import Store

    config = write_config(tmp_path, mailboxes, sink, notify=True)
    cli = Cli(config, capsys)
    long_ago = datetime.now(UTC) - timedelta(days=400)
    mailboxes.append("contacto", mail(sender="viejo1@example.com"), internal_date=long_ago)
    cli.poll()
    # As if that first poll had stopped midway (a kill, a lost lease): no poll completed.
    store = Store.open(load_settings(config).database.url, auto_upgrade=False)
    with store.transaction() as session:
        session.execute(sa.text("UPDATE checkpoints SET last_poll_at = NULL"))
    store.dispose()
    mailboxes.append("contacto", mail(sender="viejo2@example.com"), internal_date=long_ago)
    cli.poll()
    assert sink.messages == []
    assert all("max_age_hours" in r["reason"] for r in cli.json("messages", "list"))


def test_a_first_poll_stopped_midway_completes_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # SIGTERM (a restart, systemd's start timeout) during the first import of a
    # years-old mailbox: the next poll must not answer the rest of that history.
    from mailcase import service
    from mailcase.config import load_settings

    config = write_config(tmp_path, mailboxes, sink, notify=True)
    long_ago = datetime.now(UTC) - timedelta(days=400)
    for n in range(4):
        mailboxes.append("contacto", mail(sender=f"viejo{n}@example.com"), internal_date=long_ago)
    rt = service.Runtime.open(load_settings(config))

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            rt.stop.set()

    assert service.poll_mailbox(rt, "contacto", stop_after_two).fetched == 2
    rt.store.dispose()
    Cli(config, capsys).poll()  # the rest of the backlog
    assert sink.messages == []
    rows = Cli(config, capsys).json("messages", "list")
    assert len(rows) == 4 and all("max_age_hours" in r["reason"] for r in rows)


def test_a_mailbox_pointed_at_another_folder_meets_it_for_the_first_time(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    cli = Cli(config, capsys)
    cli.poll()  # INBOX read: the first contact is over
    long_ago = datetime.now(UTC) - timedelta(days=400)
    mailboxes.append(
        "contacto", mail(sender="viejo@example.com"), internal_date=long_ago, folder="Soporte"
    )
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('folder = "INBOX"', 'folder = "Soporte"'), encoding="utf-8")
    cli.poll()
    assert sink.messages == []  # that folder's history is not answered
    [row] = cli.json("messages", "list")
    assert row["disposition"] == "new_case" and "max_age_hours" in row["reason"]
    # From then on it is an ordinary mailbox: new mail is answered.
    mailboxes.append("contacto", mail(sender="nuevo@example.com"), folder="Soporte")
    cli.poll()
    assert [m.rcpt_tos for m in sink.messages] == [["nuevo@example.com"]]


def test_a_retry_answers_a_message_that_was_recent_when_first_met(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import offline_runtime
    from sqlmodel import select

    from mailcase import quarantine, service
    from mailcase.imap import FetchedMessage
    from mailcase.models import Notice

    rt = offline_runtime(tmp_path)
    arrived = datetime.now(UTC)
    fetched = FetchedMessage(uid=1, raw=mail(sender="cliente@example.com"), internal_date=arrived)
    real_apply = service._apply

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of the release before")

    monkeypatch.setattr(service, "_apply", broken)
    assert service.ingest_message(rt, "contacto", 1, fetched, first_contact=True) == "quarantined"
    monkeypatch.setattr(service, "_apply", real_apply)  # the fix, installed 80 hours later
    later = arrived + timedelta(hours=80)
    monkeypatch.setattr(service, "utcnow", lambda: later)
    assert quarantine.retry_message(rt, "contacto", 1) == "new_case"
    with rt.store.transaction() as session:
        kinds = [n.kind for n in session.exec(select(Notice)).all()]
    rt.store.dispose()
    assert kinds == ["acknowledgement"]


def test_a_new_source_with_the_same_uidvalidity_does_not_inherit_the_old_rows(
    tmp_path: Path,
) -> None:
    # Dovecot gives accounts made in the same second the same UIDVALIDITY: pointed at
    # one, the mailbox took its UIDs 1 and 2 for the old folder's, ingested already.
    import structlog

    from mailcase import service
    from mailcase.imap import FetchedMessage
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path)
    log = structlog.get_logger()
    assert service._checkpoint(rt.store, "contacto", 7, log, '["contacto", "INBOX"]') == (0, True)
    assert service.ingest_message(rt, "contacto", 7, FetchedMessage(1, mail(), utcnow()))
    # The configuration now reads another account, whose folder has UIDVALIDITY 7 too.
    assert service._checkpoint(rt.store, "contacto", 7, log, '["info", "INBOX"]') == (0, True)
    with rt.store.transaction() as session:
        assert service._existing(session, "contacto", 7, 1) is None
    other = mail(sender="otra@example.com")
    assert service.ingest_message(rt, "contacto", 7, FetchedMessage(1, other, utcnow())) == (
        "new_case"
    )
    rt.store.dispose()


def test_the_same_server_under_another_name_is_not_read_again(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    cli = Cli(config, capsys)
    mailboxes.append("contacto", mail())
    cli.poll()
    text = config.read_text().replace('host = "127.0.0.1"', 'host = "localhost"', 1)
    config.write_text(text.replace('folder = "INBOX"', 'folder = "inbox"', 1))
    code, _, err = cli("poll")
    assert code == 0 and "mailbox_source_changed" not in err
    assert len(cli.json("messages", "list")) == 1
