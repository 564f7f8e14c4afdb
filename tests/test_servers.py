"""The test servers themselves work: quick checks of tests/servers.py via the fixtures."""

from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from servers import Dovecot, SmtpSink, make_self_signed_cert

pytestmark = pytest.mark.integration

RAW = b"From: cliente@example.com\r\nTo: contacto@example.org\r\nSubject: Hola\r\n\r\nCuerpo\r\n"


def _message(
    subject: str = "Acuse [Caso #123456]", to: str = "cliente@example.com"
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "contacto@example.org"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hemos recibido su mensaje.\n")
    return msg


def _can_login(server: Dovecot, user: str, password: str) -> bool:
    with IMAPClient(server.host, port=server.port, ssl=False, timeout=10) as imap:
        try:
            imap.login(user, password)
        except LoginError:
            return False
        return True


def test_append_then_fetch(mailboxes: Dovecot) -> None:
    uid = mailboxes.append("contacto", RAW, flags=[r"\Seen"])
    with mailboxes.client("contacto") as imap:
        imap.select_folder("INBOX", readonly=True)
        assert imap.search("ALL") == [uid]
        assert imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"] == RAW
    assert mailboxes.fetch_flags("contacto") == {uid: (rb"\Seen",)}
    assert mailboxes.fetch_flags("info") == {}


def test_append_many_into_new_folder_and_clear(mailboxes: Dovecot) -> None:
    uids = mailboxes.append_many("info", [RAW, RAW, RAW], folder="Procesados/2024")
    assert len(set(uids)) == 3
    assert set(mailboxes.fetch_raw("info", "Procesados/2024")) == set(uids)
    mailboxes.append("info", RAW)
    mailboxes.clear("info")
    assert sorted(mailboxes.list_folders("info")) == ["Drafts", "INBOX", "Junk", "Sent", "Trash"]
    assert mailboxes.fetch_flags("info") == {}


def test_set_password(mailboxes: Dovecot) -> None:
    # Same length as the old one, to catch Dovecot's mtime+size change detection.
    mailboxes.set_password("contacto", "contacto-secreX")
    assert _can_login(mailboxes, "contacto", "contacto-secreX")
    assert not _can_login(mailboxes, "contacto", "contacto-secret")


def test_add_user(mailboxes: Dovecot) -> None:
    mailboxes.add_user("ventas", "ventas-secret")
    mailboxes.append("ventas", RAW)
    assert len(mailboxes.fetch_flags("ventas")) == 1


def test_passwords_are_reset_between_tests(mailboxes: Dovecot) -> None:
    assert mailboxes.users == {"contacto": "contacto-secret", "info": "info-secret"}
    assert _can_login(mailboxes, "contacto", "contacto-secret")


def test_create_and_delete_folder(mailboxes: Dovecot) -> None:
    mailboxes.create_folder("contacto", "Casos")
    assert "Casos" in mailboxes.list_folders("contacto")
    mailboxes.delete_folder("contacto", "Casos")
    assert "Casos" not in mailboxes.list_folders("contacto")


def test_restart_keeps_mail(mailboxes: Dovecot) -> None:
    uid = mailboxes.append("contacto", RAW)
    port = mailboxes.port
    mailboxes.restart()
    assert mailboxes.port == port
    assert list(mailboxes.fetch_flags("contacto")) == [uid]
    mailboxes.stop(fast=True)
    assert not mailboxes.running
    mailboxes.start()
    assert list(mailboxes.fetch_flags("contacto")) == [uid]


def test_imaps_with_ca_file(dovecot: Dovecot) -> None:
    assert dovecot.ssl_port is not None and dovecot.ca_file is not None
    context = ssl.create_default_context(cafile=dovecot.ca_file)
    with IMAPClient("localhost", port=dovecot.ssl_port, ssl_context=context, timeout=10) as imap:
        imap.login("info", dovecot.users["info"])


def test_start_failure_shows_the_log() -> None:
    # Bound but not listening: the "already in use" probe passes, Dovecot's bind() fails.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        server = Dovecot(port=blocker.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="Address already in use"):
                server.start()
        finally:
            server.close()


def test_sink_receives_message(sink: SmtpSink) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.login("contacto@example.org", "pw")
        smtp.send_message(_message(to="josé@ejemplo.es"))  # SMTPUTF8 address
    (mail,) = sink.wait_for(1)
    assert mail.mail_from == "contacto@example.org"
    assert mail.rcpt_tos == ["josé@ejemplo.es"]
    assert "SMTPUTF8" in mail.mail_options
    assert mail.auth_login == "contacto@example.org"
    assert mail.message["Subject"] == "Acuse [Caso #123456]"
    assert mail.message.get_content() == "Hemos recibido su mensaje.\n"


def test_sink_fail_next(sink: SmtpSink) -> None:
    sink.fail_next(451, "4.3.0 Try again later")
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as excinfo:
            smtp.send_message(_message())
        assert excinfo.value.smtp_code == 451
        smtp.send_message(_message("second"))  # same connection: smtplib sent RSET
    assert [m.message["Subject"] for m in sink.wait_for(1)] == ["second"]


def test_sink_hang(sink: SmtpSink) -> None:
    sink.hang(1.0)
    smtp = smtplib.SMTP(sink.host, sink.port, timeout=0.3)
    try:
        # smtplib turns the read timeout into SMTPServerDisconnected (and closes).
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            smtp.send_message(_message())
    finally:
        smtp.close()
    # The client hung up during the hang: aiosmtpd cancelled that transaction.
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
        smtp.send_message(_message("after the hang"))
    assert [m.message["Subject"] for m in sink.wait_for(1)] == ["after the hang"]


def test_sink_stop_start(sink: SmtpSink) -> None:
    idle = smtplib.SMTP(sink.host, sink.port, timeout=10)  # open connection across stop()
    try:
        sink.stop()
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP(sink.host, sink.port, timeout=10)
        sink.start()
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
            smtp.send_message(_message())
        assert len(sink.wait_for(1)) == 1
    finally:
        idle.close()


def test_sink_starttls(tmp_path_factory: pytest.TempPathFactory) -> None:
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    with SmtpSink(tls_cert=cert, tls_key=key) as tls_sink:
        with smtplib.SMTP(tls_sink.host, tls_sink.port, timeout=10) as smtp:
            smtp.starttls(context=ssl.create_default_context(cafile=cert))
            smtp.send_message(_message())
        (mail,) = tls_sink.wait_for(1)
        assert mail.tls
