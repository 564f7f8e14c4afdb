"""Loops, floods, oversized and hostile mail, file permissions: against the real servers."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers import CONTACTO, Cli, json_events, mail, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration


def cli_for(
    tmp_path: Path,
    imap: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    extra: str = "",
    notify: bool = False,
    db_url: str | None = None,
) -> Cli:
    return Cli(
        write_config(tmp_path, imap, sink, extra=extra, notify=notify, db_url=db_url), capsys
    )


def test_acknowledgements_per_sender_are_capped_but_cases_open(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = cli_for(
        tmp_path,
        mailboxes,
        sink,
        capsys,
        "[limits]\nmax_acks_per_sender_per_hour = 2\n",
        db_url=db_url,
    )
    mailboxes.append_many("contacto", [mail(subject=f"Reporte {i}") for i in range(4)])
    mailboxes.append("contacto", mail(sender="otra@example.com"))
    suppressed = _suppressed_metric()
    code, _, err = cli("poll")
    assert code == 0
    assert len(cli.json("cases", "list")) == 5
    rcpts = sorted(m.rcpt_tos[0] for m in sink.messages)
    assert rcpts == ["juan.perez@example.com"] * 2 + ["otra@example.com"]
    statuses = sorted(n["status"] for n in cli.json("outbox", "list"))
    assert statuses == ["sent"] * 3 + ["suppressed"] * 2
    logged = [line for line in err.splitlines() if '"notices_suppressed"' in line]
    assert len(logged) == 1  # logged once, not per suppressed notice
    # Counted for monitoring: an alert on suppressed notices is how a loop is caught.
    assert _suppressed_metric() == suppressed + 2


def _suppressed_metric() -> float:
    from mailcase import metrics

    value = metrics.REGISTRY.get_sample_value("mailcase_notices_total", {"outcome": "suppressed"})
    return value or 0.0


def test_total_notices_per_hour_cap(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = cli_for(
        tmp_path, mailboxes, sink, capsys, "[limits]\nmax_notices_per_hour = 3\n", db_url=db_url
    )
    mailboxes.append_many("contacto", [mail(sender=f"cliente{i}@example.com") for i in range(5)])
    code, _, err = cli("poll")
    assert code == 0, err
    assert len(cli.json("cases", "list")) == 5
    assert len(sink.messages) == 3
    notices = cli.json("outbox", "list")
    assert sorted(n["status"] for n in notices) == ["sent"] * 3 + ["suppressed"] * 2
    suppressed = [n for n in notices if n["status"] == "suppressed"]
    assert all("limits.max_notices_per_hour (3)" in n["last_error"] for n in suppressed)
    assert len({n["to"] for n in suppressed}) == 2  # two recipients, yet one event
    logged = [e for e in json_events(err) if e.get("event") == "notices_suppressed"]
    assert len(logged) == 1 and "max_notices_per_hour" in logged[0]["reason"]
    # Still the same hour: more suppressed notices, no new event.
    mailboxes.append_many("contacto", [mail(sender=f"otro{i}@example.com") for i in range(2)])
    code, _, err = cli("poll")
    assert code == 0, err
    assert len(cli.json("cases", "list")) == 7
    assert len(sink.messages) == 3
    statuses = sorted(n["status"] for n in cli.json("outbox", "list"))
    assert statuses == ["sent"] * 3 + ["suppressed"] * 4
    assert [e for e in json_events(err) if e.get("event") == "notices_suppressed"] == []


@pytest.mark.parametrize(
    ("sender", "headers", "disposition"),
    [
        (CONTACTO, {}, "auto_reply"),  # our own mailbox: never answered
        ("soporte@internet-plarey.com.mx", {}, "auto_reply"),  # agents.notify
        ("juan@example.com", {"X-Mailcase-Loop": CONTACTO}, "auto_reply"),  # our loop header
    ],
)
def test_never_answers_itself(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    db_url: str,
    sender: str,
    headers: dict[str, str],
    disposition: str,
) -> None:
    cli = cli_for(tmp_path, mailboxes, sink, capsys, notify=True, db_url=db_url)
    mailboxes.append("contacto", mail(sender=sender, headers=headers))
    cli.poll()
    assert [r["disposition"] for r in cli.json("messages", "list")] == [disposition]
    assert sink.messages == []


def test_noreply_sender_opens_a_case_without_notice(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = cli_for(tmp_path, mailboxes, sink, capsys, db_url=db_url)
    mailboxes.append("contacto", mail(sender="no-reply@banco.example.com", subject="Aviso"))
    cli.poll()
    assert len(cli.json("cases", "list")) == 1
    assert sink.messages == []


def test_a_suppressed_notice_queued_again_by_hand_is_still_not_sent(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    # `outbox retry` takes any notice not sent; delivery's own guard keeps the loop shut.
    cli = cli_for(tmp_path, mailboxes, sink, capsys, db_url=db_url)
    mailboxes.append("contacto", mail(sender="no-reply@banco.example.com", subject="Aviso"))
    cli.poll()
    [case] = cli.json("cases", "list")  # opened, and not answered
    code, _, err = cli("cases", "resolve", case["folio"], "--outcome", "valid", "--cause", "Listo.")
    assert code == 0, err
    [notice] = cli.json("outbox", "list")  # the resolution notice, stopped at queueing
    assert notice["status"] == "suppressed"
    code, out, err = cli("outbox", "retry", str(notice["id"]))
    assert (code, out.strip()) == (0, "1 notice(s) queued for delivery"), err
    code, _, err = cli("poll")
    assert code == 0, err
    assert sink.messages == []
    [again] = cli.json("outbox", "list")
    assert again["status"] == "suppressed"
    assert "notice_suppressed" in err


def test_oversized_mail_opens_its_case_without_attachments(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = cli_for(
        tmp_path, mailboxes, sink, capsys, "[limits]\nmax_message_bytes = 100000\n", db_url=db_url
    )
    video = os.urandom(400_000)
    uid = mailboxes.append(
        "contacto",
        mail(
            subject="Video del módem",
            body="Les mando el video del módem parpadeando.",
            attachments=[("módem.mp4", "video/mp4", video)],
        ),
    )
    mailboxes.append("contacto", mail(subject="Otro reporte"))
    cli.poll()
    ledger = cli.json("messages", "list")
    assert [r["disposition"] for r in ledger] == ["new_case", "new_case"]
    assert "max_message_bytes" in ledger[0]["reason"]
    folio = ledger[0]["folio"]
    messages = cli.json("cases", "show", folio)["messages"]
    assert "video del módem parpadeando" in messages[0]["text"]
    assert messages[0]["attachments"] == []
    assert any(m["kind"] == "system" and "not stored" in m["text"] for m in messages)
    # The whole message is kept, byte for byte as the server holds it.
    raw = mailboxes.fetch_raw("contacto")[uid]
    digest = hashlib.sha256(raw).hexdigest()
    assert (tmp_path / "store" / digest[:2] / digest[2:4] / digest).stat().st_size == len(raw)
    assert len(sink.messages) == 2


def test_part_bomb_is_quarantined_then_retried_after_a_fix(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = cli_for(
        tmp_path, mailboxes, sink, capsys, "[limits]\nmax_mime_parts = 50\n", db_url=db_url
    )
    parts = b"".join(b"--x\r\nContent-Type: text/plain\r\n\r\nparte %d\r\n" % i for i in range(80))
    bomb = (
        b"From: a@example.com\r\nTo: contacto@internet-plarey.com.mx\r\nSubject: muchas partes\r\n"
        b"Message-ID: <bomb@example.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n' + parts + b"--x--\r\n"
    )
    uid = mailboxes.append("contacto", bomb)
    mailboxes.append("contacto", mail())
    cli.poll()
    ledger = cli.json("messages", "list")
    assert [r["disposition"] for r in ledger] == ["quarantined", "new_case"]
    assert "MIME parts" in ledger[0]["reason"]
    code, out, _ = cli("messages", "list", "--disposition", "quarantined")
    assert code == 0 and str(uid) in out
    # Who sent it and what about, without a mail client: its headers and its stored file.
    shown = cli.json("messages", "show", str(uid), "--mailbox", "contacto")
    assert (shown["from"], shown["subject"]) == ("a@example.com", "muchas partes")
    assert shown["header_message_id"] == "<bomb@example.com>"
    assert shown["disposition"] == "quarantined" and "MIME parts" in shown["reason"]
    assert Path(shown["raw_path"]).read_bytes() == bomb
    code, out, _ = cli("messages", "show", str(uid), "--mailbox", "contacto")
    assert code == 0 and "muchas partes" in out and shown["raw_path"] in out
    code, _, err = cli("messages", "show", "999", "--mailbox", "contacto")
    assert code == 4 and err.strip() == "mailcase: no message 999 of mailbox contacto in the ledger"
    # The admin raises the limit, then retries the message.
    cli.config.write_text(cli.config.read_text().replace("max_mime_parts = 50", ""))
    code, out, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 0, err
    assert "new_case" in out
    ledger = cli.json("messages", "list")
    assert sorted(r["disposition"] for r in ledger) == ["new_case", "new_case"]
    assert len(ledger) == 2
    code, _, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 4 and "not quarantined" in err


def test_a_retry_that_fails_leaves_the_message_quarantined(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The quarantined row was deleted in a transaction of its own, before the message
    # was ingested again: a retry that failed then left no row, below the checkpoint,
    # and the message was lost for good.
    from mailcase import service
    from mailcase.errors import DatabaseError

    cli = cli_for(
        tmp_path, mailboxes, sink, capsys, "[limits]\nmax_mime_parts = 2\n", db_url=db_url
    )
    uid = mailboxes.append(
        "contacto",
        mail(attachments=[("a.pdf", "application/pdf", b"%PDF"), ("b.txt", "text/plain", b"b")]),
    )
    cli.poll()
    assert [r["disposition"] for r in cli.json("messages", "list")] == ["quarantined"]
    cli.config.write_text(cli.config.read_text().replace("max_mime_parts = 2", ""))

    def database_gone(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseError("database unavailable while ingesting (the test's outage)")

    with monkeypatch.context() as patched:
        patched.setattr(service, "_ingest", database_gone)
        code, _, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 3 and "the test's outage" in err
    [entry] = cli.json("messages", "list")
    assert (entry["uid"], entry["disposition"]) == (uid, "quarantined")
    code, out, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip() == f"message {uid} of mailbox contacto: new_case", err
    [entry] = cli.json("messages", "list")
    assert entry["disposition"] == "new_case"


def test_database_and_store_are_private(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # SQLite only: it checks the mode of the database file, and the blob store it also
    # checks does not depend on the database.
    cli = cli_for(tmp_path, mailboxes, sink, capsys)
    mailboxes.append("contacto", mail(attachments=[("a.pdf", "application/pdf", b"%PDF-1.4")]))
    cli.poll()
    assert stat.S_IMODE((tmp_path / "mailcase.db").stat().st_mode) == 0o600
    store = tmp_path / "store"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    for path in store.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_every_quarantined_message_is_retried_at_once(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # After a fix (here: a limit raised), the admin retried message by message, by UID.
    cli = cli_for(tmp_path, mailboxes, sink, capsys, "[limits]\nmax_mime_parts = 50\n")
    parts = b"".join(b"--x\r\nContent-Type: text/plain\r\n\r\nparte %d\r\n" % i for i in range(80))

    def bomb(sender: bytes) -> bytes:
        return (
            b"From: " + sender + b"\r\nTo: contacto@internet-plarey.com.mx\r\n"
            b"Subject: muchas partes\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n' + parts + b"--x--\r\n"
        )

    mailboxes.append_many("contacto", [bomb(b"a@example.com"), mail(), bomb(b"b@example.com")])
    cli.poll()
    quarantined = cli.json("messages", "list", "--disposition", "quarantined")
    assert len(quarantined) == 2
    code, _, err = cli("messages", "retry", str(quarantined[0]["uid"]))
    assert code == 2 and "needs --mailbox" in err
    cli.config.write_text(cli.config.read_text().replace("max_mime_parts = 50", ""))
    code, out, err = cli("messages", "retry", "--all")
    assert code == 0, err
    assert out.count(": new_case") == 2
    assert {r["disposition"] for r in cli.json("messages", "list")} == {"new_case"}
    assert sorted(m.rcpt_tos[0] for m in sink.wait_for(3))[:2] == ["a@example.com", "b@example.com"]
    code, out, _ = cli("messages", "retry", "--all", "--mailbox", "contacto")
    assert code == 0 and "no quarantined messages" in out
