"""Observability review: a rebuilt folder is not new mail, a mailbox never read has a
seconds-since-success series, an unreadable SMTP password is not a crash, and
``mailcase_errors_total`` says what failed (imap, smtp, template, storage)."""

from __future__ import annotations

import errno
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from helpers import Cli, mail, write_config
from prometheus_client import generate_latest
from servers import Dovecot, SmtpSink
from test_pipeline import _parser_bomb

from mailcase import blobs, metrics, smtp
from mailcase.config import load_settings
from mailcase.daemon import Daemon
from mailcase.errors import ConfigError, MailboxError, SecretError
from mailcase.models import Checkpoint, Notice
from mailcase.outbox import deliver_outbox
from mailcase.service import Runtime, poll_mailbox
from mailcase.smtp import SmtpConnection

pytestmark = pytest.mark.integration


def _value(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.fixture
def runtime(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink) -> Iterator[Runtime]:
    """A Runtime on a config whose contacto mailbox reads the folder Soporte."""
    rt = Runtime.open(
        load_settings(write_config(tmp_path, mailboxes, sink, contacto_folder="Soporte"))
    )
    try:
        yield rt
    finally:
        rt.store.dispose()


# -- 1. a rebuilt folder: re-mapped, not new ------------------------------------------------


def test_a_rebuilt_folder_counts_no_message_or_case_again(
    runtime: Runtime, mailboxes: Dovecot
) -> None:
    raws = [mail(subject=f"Reporte {i}") for i in range(3)] + [_parser_bomb()]
    mailboxes.append_many("contacto", raws, folder="Soporte")
    first = poll_mailbox(runtime, "contacto")
    assert first.dispositions == {"new_case": 3, "quarantined": 1}
    opened = _value(metrics.CASES_OPENED, "contacto")
    new_cases = _value(metrics.MESSAGES, "contacto", "new_case")
    quarantined = _value(metrics.MESSAGES, "contacto", "quarantined")
    with runtime.store.transaction() as session:
        checkpoint = session.get(Checkpoint, "contacto")
        assert checkpoint is not None
        old_uidvalidity = checkpoint.uidvalidity

    # A server migration: the same messages under a new UIDVALIDITY, and one really new.
    mailboxes.delete_folder("contacto", "Soporte")
    mailboxes.append_many("contacto", [*raws, mail(subject="Reporte nuevo")], folder="Soporte")
    daemon = Daemon(runtime)
    with structlog.testing.capture_logs() as logs:
        status = daemon._poll("contacto")

    assert _value(metrics.CASES_OPENED, "contacto") == opened + 1
    assert _value(metrics.MESSAGES, "contacto", "new_case") == new_cases + 1
    assert _value(metrics.MESSAGES, "contacto", "quarantined") == quarantined
    assert status == "ok (1 new, 4 remapped)"  # systemd's STATUS= word for the mailbox
    [polled] = _events(logs, "mailbox_polled")
    assert (polled["fetched"], polled["new_case"], polled["remapped"]) == (5, 1, 4)
    assert "quarantined" not in polled
    remapped = _events(logs, "message_remapped")
    assert sorted(e["disposition"] for e in remapped) == ["new_case"] * 3 + ["quarantined"]
    assert {e["old_uidvalidity"] for e in remapped} == {old_uidvalidity}
    assert all(e["folio"] for e in remapped if e["disposition"] == "new_case")
    [ingested] = _events(logs, "message_ingested")
    assert ingested["disposition"] == "new_case"


def test_messages_read_again_after_a_lost_checkpoint_are_not_new(
    runtime: Runtime, mailboxes: Dovecot
) -> None:
    # Committed, then a crash before the checkpoint's news: the rows are there already.
    mailboxes.append_many("contacto", [mail(subject=f"R{i}") for i in range(2)], folder="Soporte")
    poll_mailbox(runtime, "contacto")
    opened = _value(metrics.CASES_OPENED, "contacto")
    with runtime.store.transaction() as session:
        checkpoint = session.get(Checkpoint, "contacto")
        assert checkpoint is not None
        checkpoint.last_uid = 0
        session.add(checkpoint)
    with structlog.testing.capture_logs() as logs:
        report = poll_mailbox(runtime, "contacto")
    assert _value(metrics.CASES_OPENED, "contacto") == opened
    assert len(_events(logs, "message_remapped")) == 2
    assert not _events(logs, "message_ingested")
    assert (report.fetched, report.remapped, report.new, dict(report.dispositions)) == (2, 2, 0, {})


# -- 2. a mailbox never read has a series --------------------------------------------------


def test_a_mailbox_never_polled_successfully_has_a_seconds_since_series(
    runtime: Runtime, mailboxes: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_last_success", {})  # as in a new process
    mailboxes.set_password("info", "otra")  # wrong from day one: no checkpoint says otherwise
    daemon = Daemon(runtime)
    daemon.seed_metrics()  # as run() does at start, before the first scrape
    assert daemon._poll("info") == "failed"
    body = generate_latest(metrics.REGISTRY).decode()
    series = {
        line.split('mailbox="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("mailcase_seconds_since_last_successful_poll{")
    }
    # Counted from the daemon's start: small now, growing while the mailbox stays unread.
    assert set(series) == {"contacto", "info"}
    assert 0 <= series["info"] < 60


# -- 3. an SMTP password file unreadable after start-up ------------------------------------


def test_an_unreadable_smtp_password_file_is_one_line_and_leaves_the_notices_queued(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    password_file = tmp_path / "smtp.pw"  # never created: as if removed after start-up
    config = write_config(
        tmp_path,
        mailboxes,
        sink,
        smtp_extra=f'username = "contacto"\npassword_file = "{password_file}"',
    )
    rt = Runtime.open(load_settings(config))
    try:
        Cli(config, capsys)(  # queues an acknowledgement; its own delivery cannot log in
            "cases", "open", "--channel", "phone", "--customer", "juan@example.com",
            "--subject", "Llamada", "--text", "Sin servicio.",
        )  # fmt: skip
        before = _value(metrics.ERRORS, "smtp", "")
        with structlog.testing.capture_logs() as logs:
            Daemon(rt)._deliver_once()
        with rt.store.reading() as conn:
            [notice] = conn.execute(sa.select(Notice.status, Notice.attempts)).all()
    finally:
        rt.store.dispose()
    assert not _events(logs, "outbox_run_crashed")
    [unavailable] = _events(logs, "smtp_unavailable")
    assert str(password_file) in unavailable["error"] and "exc_info" not in unavailable
    assert _value(metrics.ERRORS, "smtp", "") == before + 1
    # Untouched, due: no back-off for a fault of the process that could not log in.
    assert tuple(notice) == ("queued", 0)
    assert sink.messages == []


def test_a_password_file_gone_when_connecting_again_ends_the_run_leaving_the_rest_queued(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file = tmp_path / "smtp.pw"
    password_file.write_text("secreto-smtp\n")
    config = write_config(
        tmp_path,
        mailboxes,
        sink,
        smtp_extra=f'username = "contacto"\npassword_file = "{password_file}"',
    )
    mailboxes.append_many("contacto", [mail(sender=f"c{i}@example.com") for i in range(3)])
    rt = Runtime.open(load_settings(config))
    real_drop = SmtpConnection._drop

    def drop_and_lose_the_file(self: SmtpConnection) -> None:
        password_file.unlink()  # rotated away while the server hung up
        real_drop(self)

    monkeypatch.setattr(SmtpConnection, "_drop", drop_and_lose_the_file)
    try:
        poll_mailbox(rt, "contacto")  # ingest only: three acknowledgements wait
        sink.drop_next(at="MAIL")  # the first notice: 421 and a hang-up
        before = _value(metrics.ERRORS, "smtp", "")
        with pytest.raises(SecretError, match=str(password_file)) as raised:
            deliver_outbox(rt.store, rt.settings)
        with rt.store.reading() as conn:
            notices = conn.execute(sa.select(Notice.status, Notice.attempts)).all()
    finally:
        rt.store.dispose()
    assert "secreto" not in str(raised.value)
    assert _value(metrics.ERRORS, "smtp", "") == before + 1
    assert sorted(tuple(n) for n in notices) == [("queued", 0), ("queued", 0), ("queued", 1)]


def test_a_reconnection_that_fails_mid_run_counts_one_smtp_error(
    runtime: Runtime, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailboxes.append_many(
        "contacto", [mail(sender=f"c{i}@example.com") for i in range(3)], folder="Soporte"
    )
    poll_mailbox(runtime, "contacto")  # ingest only: three acknowledgements wait
    real_greet = smtp._greet
    greetings: list[int] = []

    def refused_after_the_first(client: smtplib.SMTP) -> None:
        greetings.append(1)
        if len(greetings) > 1:  # the server came back refusing sessions
            raise smtplib.SMTPHeloError(421, b"4.3.2 shutting down")
        real_greet(client)

    monkeypatch.setattr(smtp, "_greet", refused_after_the_first)
    sink.drop_next(at="MAIL")  # the first notice: 421 and a hang-up
    before = _value(metrics.ERRORS, "smtp", "")
    with structlog.testing.capture_logs() as logs:
        report = deliver_outbox(runtime.store, runtime.settings)
    assert (report.sent, report.deferred) == (0, 3)
    assert len(greetings) == 2  # asked once again, not for every notice left
    assert _value(metrics.ERRORS, "smtp", "") == before + 1
    assert len(_events(logs, "smtp_unavailable")) == 1


# -- 4. errors_total says what failed -------------------------------------------------------


def test_a_broken_template_is_counted_as_a_template_error_not_imap(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    templates = tmp_path / "tpl"
    (templates / "es").mkdir(parents=True)
    (templates / "es" / "acknowledgement.txt.j2").write_text("Folio {{ follio }}\n")
    config = write_config(
        tmp_path, mailboxes, sink, extra=f'[templates]\ndirectory = "{templates}"'
    )
    mailboxes.append("contacto", mail())
    rt = Runtime.open(load_settings(config))
    try:
        imap = _value(metrics.ERRORS, "imap", "contacto")
        template = _value(metrics.ERRORS, "template", "contacto")
        daemon = Daemon(rt)
        assert daemon._poll("contacto") == "failed"
    finally:
        rt.store.dispose()
    assert _value(metrics.ERRORS, "imap", "contacto") == imap
    assert _value(metrics.ERRORS, "template", "contacto") == template + 1
    # The IMAP connection is not suspect: IDLE keeps watching it.
    assert daemon.health["contacto"].failures == 1
    assert not daemon.health["contacto"].mailbox_at_fault


def test_an_unwritable_store_is_counted_as_a_storage_error_not_imap(
    runtime: Runtime, mailboxes: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailboxes.append("contacto", mail(), folder="Soporte")

    def full(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blobs.tempfile, "mkstemp", full)
    imap = _value(metrics.ERRORS, "imap", "contacto")
    storage = _value(metrics.ERRORS, "storage", "contacto")
    with pytest.raises(MailboxError) as raised:
        poll_mailbox(runtime, "contacto")
    assert _value(metrics.ERRORS, "imap", "contacto") == imap
    assert _value(metrics.ERRORS, "storage", "contacto") == storage + 1
    assert raised.value.component == "storage"


def test_a_refused_login_and_an_unreadable_ca_file_are_imap_errors(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # ConfigError from the mailbox's own login settings, after start-up: the mailbox's.
    config = write_config(tmp_path, mailboxes, sink)
    missing = tmp_path / "ca.pem"
    plain = f'port = {mailboxes.port}\nsecurity = "none"\nusername = "info"'
    tls = f'port = {mailboxes.ssl_port}\nsecurity = "tls"\nca_file = "{missing}"\nusername = "info"'
    text = config.read_text().replace(plain, tls)
    assert str(missing) in text
    config.write_text(text)
    rt = Runtime.open(load_settings(config))
    try:
        imap = _value(metrics.ERRORS, "imap", "info")
        with pytest.raises(ConfigError, match=str(missing)):
            poll_mailbox(rt, "info")  # gone after start-up (never there, here)
        assert _value(metrics.ERRORS, "imap", "info") == imap + 1
        mailboxes.set_password("contacto", "otra")
        before = _value(metrics.ERRORS, "imap", "contacto")
        with pytest.raises(MailboxError) as raised:
            poll_mailbox(rt, "contacto")
        assert raised.value.component == "imap"
        assert _value(metrics.ERRORS, "imap", "contacto") == before + 1
    finally:
        rt.store.dispose()
