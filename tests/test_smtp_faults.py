"""SMTP faults injected for real: server down, 4xx, 5xx, time-out, TLS failure."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import NOTIFY, Cli, mail, offline_runtime, write_config
from servers import Dovecot, SmtpSink

from mailcase.config import SmtpSettings, load_settings
from mailcase.errors import DeliveryError, PermanentDeliveryError
from mailcase.outbox import deliver_outbox, retry_delay
from mailcase.service import Runtime, poll_mailbox
from mailcase.smtp import SmtpConnection
from mailcase.store import Store, utcnow

pytestmark = pytest.mark.integration


def setup(
    tmp_path: Path, imap: Dovecot, sink: SmtpSink, capsys: Any, db_url: str, extra: str = ""
) -> Cli:
    return Cli(write_config(tmp_path, imap, sink, extra=extra, db_url=db_url), capsys)


def outbox(cli: Cli) -> list[dict[str, Any]]:
    return cli.json("outbox", "list")  # type: ignore[no-any-return]


def test_server_down_keeps_notice_queued_then_sends_it_once(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.stop()
    try:
        code, _, err = cli("poll")
        assert code == 0, err  # the mailboxes were read; the notice waits
        [row] = outbox(cli)
        assert row["status"] == "queued" and row["attempts"] == 1
        assert "cannot connect" in row["last_error"]
        assert row["next_attempt_at"] is not None
        assert cli.json("outbox", "list", "--status", "pending") == [row]  # queued, by name
        assert cli.json("outbox", "list", "--status", "sent") == []
    finally:
        sink.start()
    cli.poll()  # not due yet: back-off
    assert sink.messages == []
    code, out, _ = cli("outbox", "retry", "--all")
    assert code == 0 and "1 notice" in out
    cli.poll()
    cli.poll()
    assert len(sink.messages) == 1
    assert outbox(cli)[0]["status"] == "sent"


def test_temporary_failure_is_retried_after_back_off(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.fail_next(451, "4.3.0 Try again later")
    cli.poll()
    [row] = outbox(cli)
    assert row["status"] == "queued" and "451" in row["last_error"]
    settings = load_settings(cli.config)
    store = Store.open(settings.database.url, auto_upgrade=False)
    # Not due a moment later; due once the back-off (about a minute) has passed.
    assert deliver_outbox(store, settings).sent == 0
    report = deliver_outbox(store, settings, now=utcnow() + timedelta(minutes=2))
    assert report.sent == 1
    assert deliver_outbox(store, settings, now=utcnow() + timedelta(hours=2)).sent == 0
    assert len(sink.messages) == 1


def test_permanent_failure_is_recorded_on_the_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.fail_next(550, "5.1.1 No such user")
    cli.poll()
    [row] = outbox(cli)
    assert row["status"] == "failed" and "550" in row["last_error"]
    folio = cli.json("cases", "list")[0]["folio"]
    system = [m for m in cli.json("cases", "show", folio)["messages"] if m["kind"] == "system"]
    assert len(system) == 1 and "550" in system[0]["text"]
    cli.poll()
    assert sink.messages == []  # failed for good: never retried by itself
    code, _, _ = cli("outbox", "retry", str(row["id"]))
    assert code == 0
    cli.poll()
    assert len(sink.messages) == 1


def test_a_slow_reply_to_the_end_of_a_notice_is_waited_for_not_sent_again(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    # The server has the message and answers late (a content scanner): timed out after
    # smtp.timeout_seconds, the notice was deferred and sent again on every retry.
    # RFC 5321 4.5.3.2.6 gives that reply 10 minutes, whatever the command timeout.
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    cfg = cli.config.read_text().replace(
        f"port = {sink.port}\n", f"port = {sink.port}\ntimeout_seconds = 1\n"
    )
    cli.config.write_text(cfg)
    mailboxes.append("contacto", mail())
    sink.hang(3)
    code, _, err = cli("poll")
    assert code == 0, err
    [row] = outbox(cli)
    assert row["status"] == "sent" and row["attempts"] == 1
    assert len(sink.messages) == 1


def test_tls_failure_defers_and_never_falls_back_to_plain_text(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    # The sink speaks plain SMTP: a TLS handshake with it fails.
    cli.config.write_text(
        cli.config.read_text().replace(
            f'port = {sink.port}\nsecurity = "none"', f'port = {sink.port}\nsecurity = "tls"'
        )
    )
    mailboxes.append("contacto", mail())
    code, _, err = cli("poll")
    assert code == 0, err
    [row] = outbox(cli)
    assert row["status"] == "queued" and "cannot connect" in row["last_error"]
    assert sink.messages == []


def test_notice_expires_after_retry_window(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    sink.fail_next(451, "4.3.0 Try again later", count=5)
    cli.poll()
    settings = load_settings(cli.config)
    store = Store.open(settings.database.url, auto_upgrade=False)
    report = deliver_outbox(store, settings, now=utcnow() + timedelta(hours=73))
    assert report.failed == 1
    assert outbox(cli)[0]["status"] == "failed"


def test_outbox_list_shows_no_secrets(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    mailboxes.append("contacto", mail())
    cli.poll()
    code, out, err = cli("outbox", "list", "--json")
    assert code == 0
    assert "contacto-secret" not in out + err
    [row] = outbox(cli)
    assert set(row) >= {"id", "folio", "kind", "status", "to", "attempts", "last_error"}
    assert row["status"] == "sent"
    sent = sink.messages[0]
    assert hashlib.sha256(sent.data).hexdigest()  # delivered bytes exist


def test_permanent_failure_tells_the_agents_once(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url), capsys)
    mailboxes.append("contacto", mail())
    sink.fail_next(550, "5.1.1 No such user")  # the acknowledgement, sent first
    cli.poll()
    ack = next(n for n in outbox(cli) if n["kind"] == "acknowledgement")
    assert ack["status"] == "failed"
    # The agents' alert goes out in the run that met the refusal, not in the next one
    # (for a `mailcase poll` from cron, an hour later).
    [alert] = [n for n in outbox(cli) if n["kind"] == "delivery_failed"]
    assert alert["status"] == "sent"
    cli.poll()

    def told() -> int:
        return sum(
            "No se pudo entregar el acuse de recibo" in m.message.get_body(("plain",)).get_content()
            for m in sink.messages
            if m.rcpt_tos == [NOTIFY]
        )

    assert told() == 1
    # The server's reply as it wrote it: no Python tuple nor bytes literal.
    assert ack["last_error"].endswith(": 550 5.1.1 No such user")
    [alert] = [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]][-1:]
    body = alert.get_body(("plain",)).get_content()
    assert "5.1.1" in body and "(550, b'" not in body and "server refused" not in body
    sink.fail_next(550, "5.1.1 No such user")
    assert cli("outbox", "retry", str(ack["id"]))[0] == 0
    cli.poll()
    cli.poll()
    assert told() == 1  # once, however often it fails


@pytest.mark.parametrize("at", ["MAIL", "DATA"])
def test_421_defers_that_notice_and_the_run_goes_on_over_a_new_connection(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str, at: str
) -> None:
    cli = setup(tmp_path, mailboxes, sink, capsys, db_url)
    senders = [f"cliente{i}@example.com" for i in range(4)]
    mailboxes.append_many("contacto", [mail(sender=s) for s in senders])
    settings = load_settings(cli.config)
    rt = Runtime.open(settings)
    try:
        poll_mailbox(rt, "contacto")  # ingest only: the four acknowledgements wait in one run
        # smtplib closes its socket on a 421: the next notice must not find a dead client.
        sink.drop_next(at=at)
        report = deliver_outbox(rt.store, settings)
        assert (report.sent, report.deferred, report.failed) == (3, 1, 0)
        assert sorted(m.rcpt_tos[0] for m in sink.messages) == senders[1:]
        [dropped] = [n for n in outbox(cli) if n["status"] == "queued"]
        assert dropped["to"] == senders[0] and "421" in dropped["last_error"]
        assert dropped["attempts"] == 1 and dropped["next_attempt_at"] is not None
        # Back-off: not due at once; due after it; never sent again.
        assert deliver_outbox(rt.store, settings).sent == 0
        assert deliver_outbox(rt.store, settings, now=utcnow() + timedelta(minutes=2)).sent == 1
        assert deliver_outbox(rt.store, settings, now=utcnow() + timedelta(hours=2)).sent == 0
    finally:
        rt.store.dispose()
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(senders)
    assert {n["status"] for n in outbox(cli)} == {"sent"}


def test_after_a_hang_up_the_connection_is_tried_again_once(sink: SmtpSink) -> None:
    raw = mail(sender="contacto@internet-plarey.com.mx", to="cliente@example.com")
    settings = SmtpSettings(host=sink.host, port=sink.port, security="none", timeout_seconds=5)
    with SmtpConnection(settings) as connection:
        sink.drop_next(at="MAIL")
        with pytest.raises(DeliveryError, match="421") as refused:
            connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
        assert not isinstance(refused.value, PermanentDeliveryError)
        sink.stop()  # the server went away after its 421
        with pytest.raises(DeliveryError, match="cannot connect") as down:
            connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
        assert not isinstance(down.value, PermanentDeliveryError)
        sink.start()
        # Back already, but this run asked once: the rest waits for the next run.
        with pytest.raises(DeliveryError, match="cannot connect"):
            connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
        assert sink.messages == []
    with SmtpConnection(settings) as connection:  # the next run
        connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
    assert len(sink.wait_for(1)) == 1


def test_one_connection_sends_after_a_refusal_and_to_a_utf8_address(sink: SmtpSink) -> None:
    """A refused message is RSET and the next goes out on the same connection; a non-ASCII
    address goes out with SMTPUTF8 and SIZE; an address that would break the command line is
    refused before anything is sent."""
    raw = mail(sender="contacto@internet-plarey.com.mx", to="cliente@example.com")
    settings = SmtpSettings(host=sink.host, port=sink.port, security="none", timeout_seconds=5)
    with SmtpConnection(settings) as connection:
        sink.fail_next(550, "5.7.1 no")
        with pytest.raises(PermanentDeliveryError, match="550"):
            connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
        connection.send("contacto@internet-plarey.com.mx", "josé@ejemplo.es", raw)
        for bad in ("x@y.com>\r\nRCPT TO:<z@y.com", "<x@y.com>", "x@y.com\x00"):
            with pytest.raises(PermanentDeliveryError, match="not a mail address"):
                connection.send("contacto@internet-plarey.com.mx", bad, raw)
        connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
    utf8, plain = sink.wait_for(2)
    assert (utf8.rcpt_tos, plain.rcpt_tos) == (["josé@ejemplo.es"], ["cliente@example.com"])
    assert "SMTPUTF8" in utf8.mail_options and f"SIZE={len(raw)}" in utf8.mail_options
    assert "SMTPUTF8" not in plain.mail_options
    assert utf8.mail_from == plain.mail_from == "contacto@internet-plarey.com.mx"


@pytest.mark.parametrize(
    ("attempts", "minutes"),
    [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 60), (8, 60), (1000, 60)],
)
def test_retry_delay_doubles_up_to_an_hour_with_a_fifth_of_jitter(
    attempts: int, minutes: int
) -> None:
    base = timedelta(minutes=minutes)
    draws = [retry_delay(attempts) for _ in range(2000)]
    assert all(base * 0.8 <= d <= base * 1.2 for d in draws)
    # Jitter, spread over the whole band: 2000 draws from a uniform ±20% reach its ends.
    assert min(draws) < base * 0.82 and max(draws) > base * 1.18
    assert len(set(draws)) > 1900


def test_notice_is_retried_inside_a_configured_window_then_failed(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    config = write_config(
        tmp_path, mailboxes, sink, db_url=db_url, smtp_extra="retry_for_hours = 2"
    )
    cli = Cli(config, capsys)
    settings = load_settings(config)
    assert settings.smtp.retry_for_hours == 2
    mailboxes.append("contacto", mail())
    sink.fail_next(451, "4.3.0 Try again later", count=10)
    cli.poll()
    [row] = outbox(cli)
    assert (row["status"], row["attempts"]) == ("queued", 1)
    store = Store.open(settings.database.url, auto_upgrade=False)
    try:
        start = utcnow()
        # Inside the two hours: tried again and deferred again, not failed.
        for hours, attempts in ((1, 2), (1.9, 3)):
            report = deliver_outbox(store, settings, now=start + timedelta(hours=hours))
            assert (report.deferred, report.failed) == (1, 0)
            [row] = outbox(cli)
            assert (row["status"], row["attempts"]) == ("queued", attempts)
        # Past them: the next failure is the last.
        report = deliver_outbox(store, settings, now=start + timedelta(hours=2, minutes=5))
        assert (report.deferred, report.failed) == (0, 1)
        [row] = outbox(cli)
        assert (row["status"], row["attempts"]) == ("failed", 4)
        assert deliver_outbox(store, settings, now=start + timedelta(hours=5)).failed == 0
    finally:
        store.dispose()
    assert sink.messages == []


def test_outbox_list_prints_a_readable_table_without_secrets(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    smtp_login = 'username = "relay@internet-plarey.com.mx"\npassword = "relay-secret-5521"'
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=db_url, smtp_extra=smtp_login), capsys)
    mailboxes.append("contacto", mail(sender="uno@example.com", subject="Mi clave es 1234"))
    mailboxes.append("contacto", mail(sender="dos@example.com"))
    sink.fail_next(451, "4.3.0 Try again later")  # the first acknowledgement waits
    cli.poll()
    code, out, err = cli("outbox", "list")
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split() == [
        "ID", "STATUS", "KIND", "FOLIO", "TO", "ATTEMPTS", "NEXT_ATTEMPT_AT", "LAST_ERROR"
    ]  # fmt: skip
    rows = {n["to"]: n for n in cli.json("outbox", "list")}
    assert len(lines) == len(rows) == 2
    for line, to, status in zip(
        lines, ["uno@example.com", "dos@example.com"], ["queued", "sent"], strict=True
    ):
        row = rows[to]
        assert line.split()[:6] == [
            str(row["id"]),
            status,
            "acknowledgement",
            row["folio"],
            to,
            "1",
        ]
    assert "451" in lines[0]
    # Neither a password of the config nor the notice's text (it quotes the subject).
    for secret in ("contacto-secret", "info-secret", "relay-secret-5521", "clave es 1234"):
        assert secret not in out + err


def test_delivery_sends_while_ingest_writes_and_records_each_notice_before_the_next(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, monkeypatch: Any
) -> None:
    """SQLite: while another thread holds the write lock (ingest writing a message),
    delivery reads what is due and sends every notice, each recorded in the sent log
    before the next goes out (a crash can repeat at most one); the notices table gets
    the marks once the lock is free, and nothing is sent twice."""
    cli = setup(tmp_path, mailboxes, sink, capsys, f"sqlite:///{tmp_path}/mailcase.db")
    mailboxes.append_many("contacto", [mail(sender=f"c{i}@example.com") for i in range(4)])
    settings = load_settings(cli.config)
    rt = Runtime.open(settings)
    sent_log = rt.store.sent_log
    assert sent_log is not None
    recorded_before_each_send: list[int] = []
    send = SmtpConnection.send

    def watched_send(self: SmtpConnection, *args: Any) -> None:
        recorded_before_each_send.append(len(sent_log.pending()))
        send(self, *args)

    monkeypatch.setattr(SmtpConnection, "send", watched_send)
    held = threading.Event()
    under_lock: list[Any] = []

    def ingest_writing() -> None:
        with rt.store.writing():
            held.set()
            deadline = time.monotonic() + 5
            while len(sink.messages) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)  # the last record is written after the server's answer
            with rt.store.reading() as conn:
                statuses = conn.execute(sa.text("SELECT status FROM notices")).scalars().all()
            under_lock.append((len(sink.messages), len(sent_log.pending()), statuses))

    try:
        poll_mailbox(rt, "contacto")  # ingest only
        holder = threading.Thread(target=ingest_writing)
        holder.start()
        held.wait(5)
        report = deliver_outbox(rt.store, settings)
        holder.join()
        # All four out while the lock was held, none yet marked in the notices table.
        assert under_lock == [(4, 4, ["queued"] * 4)]
        assert recorded_before_each_send == [0, 1, 2, 3]
        assert report.sent == 4
        assert [n["status"] for n in outbox(cli)] == ["sent"] * 4
        assert sent_log.pending() == []
        assert deliver_outbox(rt.store, settings).sent == 0  # none sent twice
        assert len(sink.messages) == 4
    finally:
        rt.store.dispose()


def test_notices_recorded_in_the_sent_log_before_a_crash_are_not_sent_again(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    """A crash after the sent log's record and before the fold: the next run marks the
    notice sent from the record, and sends only the others."""
    cli = setup(tmp_path, mailboxes, sink, capsys, f"sqlite:///{tmp_path}/mailcase.db")
    mailboxes.append_many("contacto", [mail(sender=f"c{i}@example.com") for i in range(3)])
    settings = load_settings(cli.config)
    rt = Runtime.open(settings)
    try:
        poll_mailbox(rt, "contacto")  # ingest only
        first = min(n["id"] for n in outbox(cli))
        assert rt.store.sent_log is not None
        rt.store.sent_log.append(first, datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC))
        rt.store.dispose()  # the "crashed" process is gone; its record stays on disk
        assert deliver_outbox(rt.store, settings).sent == 2
        assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["c1@example.com", "c2@example.com"]
        by_id = {n["id"]: n for n in outbox(cli)}
        assert {n["status"] for n in by_id.values()} == {"sent"}
        assert by_id[first]["sent_at"].startswith("2031-01-02")
    finally:
        rt.store.dispose()


def test_postgresql_skips_a_notice_another_instance_holds_and_goes_on(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    postgres: Any,
) -> None:
    """Four acknowledgements, the second locked by another instance's transaction: the
    other three go out at once over the run's one connection, the held one after its
    holder lets go, and none twice."""
    postgres.create_database("claims", template="mailcase_template")
    try:
        url = postgres.url("claims")
        cli = setup(tmp_path, mailboxes, sink, capsys, url)
        mailboxes.append_many("contacto", [mail(sender=f"c{i}@example.com") for i in range(4)])
        settings = load_settings(cli.config)
        rt = Runtime.open(settings)
        try:
            poll_mailbox(rt, "contacto")  # ingest only
            ids = [n["id"] for n in sorted(outbox(cli), key=lambda n: n["id"])]
            with rt.store.engine.connect() as other, other.begin():
                other.execute(
                    sa.text("SELECT id FROM notices WHERE id = :id FOR UPDATE"), {"id": ids[1]}
                )
                assert deliver_outbox(rt.store, settings).sent == 3
            by_id = {n["id"]: n["status"] for n in outbox(cli)}
            assert by_id == {ids[0]: "sent", ids[1]: "queued", ids[2]: "sent", ids[3]: "sent"}
            assert deliver_outbox(rt.store, settings).sent == 1
            assert sorted(m.rcpt_tos[0] for m in sink.messages) == [
                f"c{i}@example.com" for i in range(4)
            ]
        finally:
            rt.store.dispose()
    finally:
        postgres.drop_database("claims")


@pytest.mark.parametrize("reply", ["451 4.7.1 Data command rejected: try later", "554 5.7.1 no"])
def test_a_refused_data_command_is_reset_and_the_next_notice_goes_out(
    sink: SmtpSink, reply: str
) -> None:
    """A server refusing the DATA command itself (a policy service, before its 354) keeps
    MAIL and RCPT: without RSET the next notice's MAIL got "503 nested MAIL command"."""
    raw = mail(sender="contacto@internet-plarey.com.mx", to="cliente@example.com")
    settings = SmtpSettings(host=sink.host, port=sink.port, security="none", timeout_seconds=5)
    with SmtpConnection(settings) as connection:
        sink.refuse_next("DATA", reply)
        with pytest.raises(DeliveryError, match=reply.split()[0]) as refused:
            connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
        assert isinstance(refused.value, PermanentDeliveryError) == reply.startswith("5")
        connection.send("contacto@internet-plarey.com.mx", "otro@example.com", raw)
    [sent] = sink.wait_for(1)
    assert sent.rcpt_tos == ["otro@example.com"]


def test_a_server_that_refuses_ehlo_is_greeted_with_helo(sink: SmtpSink) -> None:
    raw = mail(sender="contacto@internet-plarey.com.mx", to="cliente@example.com")
    settings = SmtpSettings(host=sink.host, port=sink.port, security="none", timeout_seconds=5)
    sink.refuse_next("EHLO", "502 5.5.2 Error: command not recognized")
    with SmtpConnection(settings) as connection:
        connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
    [sent] = sink.wait_for(1)
    assert sent.rcpt_tos == ["cliente@example.com"]


@pytest.mark.parametrize(
    "reply", ["530 5.7.0 Authentication required", "503 5.5.1 Error: send HELO/EHLO first"]
)
def test_a_refusal_of_the_session_keeps_the_notice_queued(sink: SmtpSink, reply: str) -> None:
    """A 530 or 503 at MAIL is about the session (a missing smtp.username), not the
    notice: failing it would fail every notice and tell the agents about each one."""
    raw = mail(sender="contacto@internet-plarey.com.mx", to="cliente@example.com")
    settings = SmtpSettings(host=sink.host, port=sink.port, security="none", timeout_seconds=5)
    with SmtpConnection(settings) as connection:
        sink.refuse_next("MAIL", reply)
        with pytest.raises(DeliveryError, match=reply.split()[0]) as refused:
            connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)
        assert not isinstance(refused.value, PermanentDeliveryError)
        sink.fail_next(550, "5.1.1 no such user")  # a refusal of the notice stays permanent
        with pytest.raises(PermanentDeliveryError, match="550"):
            connection.send("contacto@internet-plarey.com.mx", "cliente@example.com", raw)


def test_a_non_ascii_domain_goes_out_in_its_ascii_form(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    """Only the domain is non-ASCII: its IDNA form is the same mailbox and needs no SMTPUTF8,
    which many relays lack (they refused the notice for good)."""
    cli = setup(tmp_path, mailboxes, sink, capsys, f"sqlite:///{tmp_path}/mailcase.db")
    code, _, err = cli(
        "cases", "open", "--channel", "phone", "--customer", "juan@telefonía-señal.mx",
        "--subject", "Sin servicio", "--text", "Llamó por teléfono.",
    )  # fmt: skip
    assert code == 0, err
    [ack] = sink.wait_for(1)
    assert ack.rcpt_tos == ["juan@xn--telefona-seal-2ib8d.mx"]
    assert "SMTPUTF8" not in ack.mail_options
    assert ack.data.isascii() and "juan@xn--telefona-seal-2ib8d.mx" in str(ack.message["To"])


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("connection lost while sending (timed out)", "(sin código)"),
        (
            "server refused the message to x@example.com: 550 5.1.1 <x@example.com>: Unknown",
            "5.1.1",
        ),
        ("server refused the message to x@example.com: 554 Rejected", "554"),
    ],
)
def test_the_agents_alert_shows_a_status_only_when_the_server_gave_one(
    tmp_path: Path, error: str, status: str
) -> None:
    # Without a reply code the alert showed the error's first three letters ("con").
    import email
    from email import policy

    from sqlmodel import select

    from mailcase import casework
    from mailcase.models import Notice
    from mailcase.notices import queue_notice
    from mailcase.outbox import _tell_agents
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path, notify=True)
    with rt.store.transaction() as session:
        case = casework.open_case(
            rt.settings, session, customer="x@example.com", customer_name="X",
            subject="s", mailbox="contacto", now=utcnow(),
        )  # fmt: skip
        queued = queue_notice(session, rt.settings, case, "acknowledgement", to="x@example.com")
        notice = session.get(Notice, queued.id)
        assert notice is not None
        _tell_agents(session, rt.settings, notice, error)
        alert = session.exec(select(Notice).where(Notice.kind == "delivery_failed")).one()
    rt.store.dispose()
    body = email.message_from_bytes(alert.raw, policy=policy.default).get_body(("plain",))
    assert body is not None
    [line] = [x for x in body.get_content().splitlines() if x.startswith("Estado")]
    assert line.split(":", 1)[1].strip() == status


def test_an_auth_challenge_that_cannot_be_decoded_is_a_delivery_error() -> None:
    # "334 abc" is not base64: smtplib's CRAM-MD5 raised binascii.Error, which
    # crashed every delivery run with a traceback (seen: a broken relay).
    import socket

    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection, connection.makefile("rwb") as stream:

            def say(line: str) -> None:
                stream.write(line.encode() + b"\r\n")
                stream.flush()

            say("220 relay ESMTP")
            for raw in stream:
                command = raw.decode().strip().upper()
                if command.startswith("EHLO"):
                    say("250-relay")
                    say("250 AUTH CRAM-MD5")
                elif command.startswith("AUTH"):
                    say("334 abc")
                elif command.startswith("QUIT"):
                    say("221 bye")
                    return
                else:
                    say("500 no")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    settings = SmtpSettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": server.getsockname()[1],
            "security": "none",
            "username": "soporte",
            "password": "S3cret",
        }
    )
    try:
        with pytest.raises(DeliveryError, match="its answer to AUTH could not be read"):
            SmtpConnection(settings).__enter__()
    finally:
        thread.join(5)
        server.close()
