"""`messages retry` when the ground moved: the folder rebuilt, the stored copy lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration

LIMITED = "[limits]\nmax_mime_parts = 3\n"


def _photos(n: int, name: str = "") -> bytes:
    files = [(f"f{i}.png", "image/png", b"x" * 10 + bytes([i, n])) for i in range(5)]
    sender = f'"{name}" <c{n}@example.com>' if name else f"c{n}@example.com"
    return mail(sender=sender, subject=f"Fotos {n}", attachments=files)


def _quarantined(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, raws: list[bytes], **kw: Any
) -> tuple[Path, Cli, list[int]]:
    """``raws`` quarantined (too many parts), then the limit raised."""
    config = write_config(tmp_path, mailboxes, sink, extra=LIMITED, **kw)
    folder = kw.get("contacto_folder", "INBOX")
    uids = mailboxes.append_many("contacto", raws, folder=folder)
    cli = Cli(config, capsys)
    cli.poll()
    assert [r["disposition"] for r in cli.json("messages", "list")] == ["quarantined"] * len(raws)
    config.write_text(config.read_text().replace("max_mime_parts = 3", "max_mime_parts = 500"))
    return config, cli, uids


def test_a_quarantined_message_stays_retryable_after_the_folder_is_rebuilt(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    with mailboxes.client("contacto") as imap:
        imap.create_folder("Soporte")
    photos = _photos(0)
    _, cli, [uid] = _quarantined(
        tmp_path, mailboxes, sink, capsys, [photos], contacto_folder="Soporte"
    )
    with mailboxes.client("contacto") as imap:  # a server migration: new UIDVALIDITY
        imap.delete_folder("Soporte")
        imap.create_folder("Soporte")
    mailboxes.append("contacto", photos, folder="Soporte")
    cli.poll()  # the copy in the rebuilt folder opens the case, under the same UID
    first, second = cli.json("messages", "list")
    assert first["uidvalidity"] != second["uidvalidity"]
    code, out, err = cli("messages", "retry", "--all")
    assert code == 0, err
    assert out.strip() == f"message {uid} of mailbox contacto: duplicate"
    rows = cli.json("messages", "list")
    # Each row keeps its own address: the copy in the rebuilt folder was not moved onto
    # the old UIDVALIDITY by the retry of the old one.
    assert {(r["disposition"], r["uidvalidity"]) for r in rows} == {
        ("duplicate", first["uidvalidity"]),
        ("new_case", second["uidvalidity"]),
    }
    assert len(cli.json("cases", "list")) == 1 and len(sink.messages) == 1


def test_retry_all_goes_on_past_a_message_whose_stored_copy_is_lost(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    _, cli, uids = _quarantined(tmp_path, mailboxes, sink, capsys, [_photos(n) for n in range(3)])
    for uid in uids[:2]:  # a store restored from an older backup
        shown = cli.json("messages", "show", str(uid), "--mailbox", "contacto")
        Path(shown["raw_path"]).unlink()
    with mailboxes.client("contacto") as imap:  # the first one is gone from the server too
        imap.select_folder("INBOX")
        imap.delete_messages([uids[0]])
        imap.expunge()
    code, out, err = cli("messages", "retry", "--all")
    assert code == 1
    # The second is fetched from the server again; the third from its stored copy.
    assert out.splitlines() == [
        f"message {uids[1]} of mailbox contacto: new_case",
        f"message {uids[2]} of mailbox contacto: new_case",
    ]
    [line] = [line for line in err.splitlines() if line.startswith("mailcase:")]
    assert f"message {uids[0]}" in line and "cannot be read" in line
    assert "no longer on the server" in line and "Traceback" not in err
    [row] = cli.json("messages", "list", "--disposition", "quarantined")
    assert row["uid"] == uids[0]


def test_a_quarantined_message_nothing_can_bring_back_can_be_dismissed(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    _, cli, [uid] = _quarantined(tmp_path, mailboxes, sink, capsys, [_photos(0)])
    code, out, err = cli(
        "messages", "dismiss", str(uid), "--mailbox", "contacto", "--reason", "spam"
    )
    assert code == 0 and out.strip() == f"message {uid} of mailbox contacto: dismissed", err
    [row] = cli.json("messages", "list")
    assert row["disposition"] == "dismissed" and row["reason"].endswith(": spam")
    assert "MIME parts" in row["reason"] and "dismissed by cli:" in row["reason"]
    assert cli.json("status", "--offline")["quarantined"] == 0  # not waiting for anyone
    code, _, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 4 and "is dismissed, not quarantined" in err
    code, _, err = cli("messages", "dismiss", str(uid), "--mailbox", "contacto")
    assert code == 4 and "is dismissed" in err


def test_the_agents_are_told_once_of_a_message_quarantined(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A customer whose mail cannot be processed gets no acknowledgement; nobody heard
    # of it until an admin looked at `status` or the ledger.
    spam = _photos(0, name="Gane en premios-plarey.example")
    _, cli, [uid] = _quarantined(tmp_path, mailboxes, sink, capsys, [spam], notify=True)
    [told] = [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]]
    assert told["Subject"] == "Correo en cuarentena: «Fotos 0»"
    body = " ".join(told.get_body(("plain",)).get_content().split())
    assert "De: c0@example.com Asunto:" in body and "más que el límite de 3" in body
    assert "premios-plarey" not in body  # the sender's display name is free text
    assert f"mailcase messages show {uid} --mailbox contacto" in body
    # Met again (a retry that fails again): not told twice.
    cli.config.write_text(
        cli.config.read_text().replace("max_mime_parts = 500", "max_mime_parts = 3")
    )
    _, out, _ = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert out.strip() == f"message {uid} of mailbox contacto: quarantined"
    assert len([m for m in sink.messages if m.rcpt_tos == [NOTIFY]]) == 1


def test_notices_of_quarantined_mail_are_capped_per_hour(tmp_path: Path) -> None:
    from helpers import offline_runtime

    from mailcase.notices import queue_without_case

    rt = offline_runtime(tmp_path, notify=True)
    context = {
        "sender": "x@example.com",
        "mailbox": "contacto",
        "uid": 1,
        "reason": "r",
        "reason_text": "r",
        "stored": True,
    }
    with rt.store.transaction() as session:
        held = [
            queue_without_case(
                session, rt.settings, "quarantined", to=NOTIFY, mailbox="contacto",
                subject="spam", context=context,
            ).held
            for _ in range(11)
        ]  # fmt: skip
    rt.store.dispose()
    assert [bool(h) for h in held] == [False] * 10 + [True]


def test_old_mail_met_after_the_first_contact_is_answered_when_retried(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Mail that reached the server days before mailcase met it (an outage, mail moved out
    # of a junk folder) is answered by a poll; quarantined first, it was not when retried.
    config = write_config(tmp_path, mailboxes, sink, extra=LIMITED)
    cli = Cli(config, capsys)
    cli.poll()  # the mailbox's first contact: empty, over
    days_ago = datetime.now(UTC) - timedelta(days=5)
    uid = mailboxes.append("contacto", _photos(1), internal_date=days_ago)
    cli.poll()
    [row] = cli.json("messages", "list")
    assert row["disposition"] == "quarantined"
    config.write_text(config.read_text().replace("max_mime_parts = 3", "max_mime_parts = 500"))
    code, out, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    [row] = cli.json("messages", "list")
    assert "max_age_hours" not in row["reason"]
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["c1@example.com"]]


def test_old_mail_of_the_first_contact_stays_unanswered_when_retried(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink, extra=LIMITED)
    cli = Cli(config, capsys)
    days_ago = datetime.now(UTC) - timedelta(days=5)
    uid = mailboxes.append("contacto", _photos(1), internal_date=days_ago)
    cli.poll()  # the first contact: a backlog from before mailcase
    config.write_text(config.read_text().replace("max_mime_parts = 3", "max_mime_parts = 500"))
    code, out, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    [row] = cli.json("messages", "list")
    assert "older than notices.max_age_hours: not answered" in row["reason"]
    assert cli.json("outbox", "list") == []


def test_a_new_folders_backlog_stays_unanswered_when_retried_mid_first_contact(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Pointed at another folder, the mailbox meets its history for the first time: the
    # old folder's first contact, long over, must not make that backlog answered.
    from mailcase import service
    from mailcase.config import load_settings

    config = write_config(tmp_path, mailboxes, sink, extra=LIMITED)
    cli = Cli(config, capsys)
    cli.poll()  # INBOX: the first contact is over
    long_ago = datetime.now(UTC) - timedelta(days=400)
    uid = mailboxes.append("contacto", _photos(1), internal_date=long_ago, folder="Soporte")
    old = mail(sender="viejo@example.com")
    mailboxes.append("contacto", old, internal_date=long_ago, folder="Soporte")
    config.write_text(config.read_text().replace('folder = "INBOX"', 'folder = "Soporte"'))
    rt = service.Runtime.open(load_settings(config))

    def stop_after_one(done: int, total: int) -> None:
        if done == 1:
            rt.stop.set()  # a restart in the middle of the new folder's first poll

    assert service.poll_mailbox(rt, "contacto", stop_after_one).fetched == 1
    rt.store.dispose()
    config.write_text(config.read_text().replace("max_mime_parts = 3", "max_mime_parts = 500"))
    code, out, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    row = next(r for r in cli.json("messages", "list") if r["uid"] == uid and r["folio"])
    assert "older than notices.max_age_hours: not answered" in row["reason"]
    assert sink.messages == []


def test_after_an_upgrade_the_first_polls_own_quarantined_mail_is_answered_when_retried(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # No record of the first contact's end (an installation older than it): the first
    # complete poll stands for it, and what that poll met was met after the first contact.
    import sqlalchemy as sa

    config = write_config(tmp_path, mailboxes, sink, extra=LIMITED)
    cli = Cli(config, capsys)
    cli.poll()
    engine = sa.create_engine(f"sqlite:///{tmp_path}/mailcase.db")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM key_values WHERE key LIKE 'firstpoll:%'"))
    engine.dispose()
    days_ago = datetime.now(UTC) - timedelta(days=5)
    uid = mailboxes.append("contacto", _photos(1), internal_date=days_ago)
    cli.poll()
    config.write_text(config.read_text().replace("max_mime_parts = 3", "max_mime_parts = 500"))
    code, out, err = cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["c1@example.com"]]
