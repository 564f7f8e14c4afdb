"""Spam through a real poll: set aside, never answered, released by a person."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import CONTACTO, INFO, NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase import casework

pytestmark = pytest.mark.integration

SPAMMER = "ofertas@promo.example.net"
FLAGGED = {"X-Spam-Flag": "YES", "X-Spam-Status": "Yes, score=9.1 required=5.0"}


def _spam(**kw: Any) -> bytes:
    return mail(
        sender=f"Ofertas <{SPAMMER}>",
        subject="Gane dinero desde casa",
        body="Oferta por tiempo limitado.",
        headers=FLAGGED,
        **kw,
    )


def _desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, **kw: Any) -> Cli:
    """The desk, the agents told of every new case (agents.notify)."""
    return Cli(write_config(tmp_path, mailboxes, sink, notify=True, **kw), capsys)


def test_spam_opens_no_case_and_gets_no_answer_but_a_customers_reply_is_kept(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys, db_url=db_url)
    mailboxes.append("contacto", mail())
    cli.poll()
    [case] = cli.json("cases", "list")
    sink.wait_for(2)  # acknowledgement and agents' notice
    sink.clear()
    # A customer's reply that the filter misjudged, and a spam mail.
    reply = mail(subject=f"Re: [Folio {case['folio']}] Sin servicio", headers=FLAGGED)
    spam_uid, reply_uid = mailboxes.append_many("contacto", [_spam(), reply])
    cli.poll()
    rows = {r["uid"]: r for r in cli.json("messages", "list")}
    assert rows[spam_uid]["disposition"] == "spam" and rows[spam_uid]["folio"] is None
    assert rows[spam_uid]["reason"] == "X-Spam-Flag: YES"
    assert rows[reply_uid]["disposition"] == "follow_up"
    assert rows[reply_uid]["folio"] == case["folio"]
    assert "X-Spam-Flag: YES set aside: it follows a case" in rows[reply_uid]["reason"]
    assert len(cli.json("cases", "list")) == 1
    # The reply told the agents; the spam told nobody, least of all its forged sender.
    received = sink.wait_for(1)
    assert [m.rcpt_tos for m in received] == [[NOTIFY]]
    assert not any(SPAMMER in m.rcpt_tos for m in sink.messages)
    # Flagged as handled on the server, as other mail that opens no case.
    with mailboxes.client("contacto") as imap:
        imap.select_folder("INBOX")
        flags = imap.get_flags([spam_uid])[spam_uid]
    assert b"\\Seen" in flags
    # status says how much was set aside lately, for a person to look over.
    status = cli.json("status", "--offline")
    assert status["spam_last_7_days"] == 1
    code, out, _ = cli("status", "--offline")
    assert code == 0 and "spam: 1 message(s) set aside in the last 7 days" in out
    assert cli.json("messages", "list", "--disposition", "spam")[0]["uid"] == spam_uid
    shown = cli.json("messages", "show", str(spam_uid), "--mailbox", "contacto")
    assert shown["from"] == f"Ofertas <{SPAMMER}>" and shown["subject"] == "Gane dinero desde casa"


def test_a_released_message_opens_its_case_and_is_acknowledged(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys, db_url=db_url)
    [uid] = mailboxes.append_many("contacto", [_spam()])
    cli.poll()
    assert cli.json("cases", "list") == []
    code, out, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 0, err
    assert out.strip() == f"message {uid} of mailbox contacto: new_case"
    [case] = cli.json("cases", "list")
    assert case["customer"] == SPAMMER
    [row] = cli.json("messages", "list")
    assert row["disposition"] == "new_case" and row["folio"] == case["folio"]
    assert re.search(r"released from spam by cli:\S+", row["reason"]), row["reason"]
    # The acknowledgement went out at once, as after `messages retry`.
    received = sink.wait_for(2)
    acknowledgement = [m for m in received if m.rcpt_tos == [SPAMMER]]
    assert len(acknowledgement) == 1 and case["folio"] in acknowledgement[0].message["Subject"]
    shown = cli.json("cases", "show", case["folio"])
    assert any("released from spam by cli:" in m["text"] for m in shown["messages"])
    # Once released it is spam no more: a second release is refused, naming its state.
    code, _, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 4 and f"message {uid} of mailbox contacto is new_case, not spam" in err


def test_releasing_one_copy_brings_its_copies_to_the_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys, db_url=db_url)
    raw = _spam(to=f"{CONTACTO}, {INFO}")
    [uid] = mailboxes.append_many("contacto", [raw])
    mailboxes.append("info", raw)
    cli.poll()
    dispositions = {r["mailbox"]: r["disposition"] for r in cli.json("messages", "list")}
    assert dispositions == {"contacto": "spam", "info": "duplicate"}
    code, out, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    [case] = cli.json("cases", "list")
    # Without this the release found its own copy and called itself its duplicate.
    folios = {r["mailbox"]: r["folio"] for r in cli.json("messages", "list")}
    assert folios == {"contacto": case["folio"], "info": case["folio"]}


def test_only_spam_rows_are_released(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys)
    [uid] = mailboxes.append_many("contacto", [mail()])
    cli.poll()
    code, out, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert (code, out) == (4, "")
    assert err.strip() == f"mailcase: message {uid} of mailbox contacto is new_case, not spam"
    code, _, err = cli("messages", "release", "99", "--mailbox", "contacto")
    assert code == 4 and "message 99 of mailbox contacto does not exist, not spam" in err
    code, _, err = cli("messages", "release", "1", "--mailbox", "ventas")
    assert code == 4 and "no mailbox named ventas in the configuration" in err


def test_an_erased_spam_message_is_not_brought_back(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys)
    [uid] = mailboxes.append_many("contacto", [_spam()])
    cli.poll()
    code, _, err = cli("customers", "forget", SPAMMER, "--yes")
    assert code == 0, err
    code, _, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    # Fetched again from the server, the erasure would be undone.
    assert code == 4 and "its stored copy was erased" in err
    assert cli.json("cases", "list") == []


def test_with_the_filter_off_spam_is_mail_like_any_other(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys, extra="[spam]\nenabled = false\n")
    mailboxes.append("contacto", _spam())
    cli.poll()
    [row] = cli.json("messages", "list")
    assert row["disposition"] == "new_case"
    assert any(m.rcpt_tos == [SPAMMER] for m in sink.wait_for(2))


def test_copies_judged_differently_make_one_case_whichever_mailbox_is_read_first(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    # Cc to both mailboxes, one filter (per-mailbox preferences) marking it and the other
    # not. Read first, the marked copy had made the clean one a duplicate of no case.
    cli = _desk(tmp_path, mailboxes, sink, capsys, db_url=db_url)
    both = {"to": f"{CONTACTO}, {INFO}", "message_id": "<cc-both@example.net>"}
    mailboxes.append("contacto", mail(headers=FLAGGED, **both))
    mailboxes.append("info", mail(**both))
    cli.poll()
    [case] = cli.json("cases", "list")
    rows = {r["mailbox"]: r for r in cli.json("messages", "list")}
    assert {m: (r["disposition"], r["folio"]) for m, r in rows.items()} == {
        "contacto": ("duplicate", case["folio"]),
        "info": ("new_case", case["folio"]),
    }
    assert "its copy in mailbox info was not judged spam" in rows["contacto"]["reason"]
    assert len([m for m in sink.wait_for(2) if m.rcpt_tos == ["juan.perez@example.com"]]) == 1


def test_mail_that_waited_on_the_server_is_answered_when_released(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Not a first poll: mail that reached the server days before mailcase met it (moved
    # out of a junk folder, an outage) is answered, released or never marked alike.
    cli = _desk(tmp_path, mailboxes, sink, capsys)
    cli.poll()  # the first poll of the mailbox, empty
    days_ago = datetime.now(UTC) - timedelta(days=5)
    uid = mailboxes.append("contacto", _spam(), internal_date=days_ago)
    cli.poll()
    code, out, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    [row] = cli.json("messages", "list")
    assert "not answered" not in row["reason"]
    assert any(m.rcpt_tos == [SPAMMER] for m in sink.wait_for(2))


def test_old_mail_of_a_first_poll_stays_unanswered_when_released(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys)
    days_ago = datetime.now(UTC) - timedelta(days=5)
    uid = mailboxes.append("contacto", _spam(), internal_date=days_ago)
    cli.poll()  # the mailbox's first poll: years of mail open their cases silently
    code, out, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err
    [row] = cli.json("messages", "list")
    assert "older than notices.max_age_hours: not answered" in row["reason"]
    assert cli.json("outbox", "list") == []


def test_a_release_that_fails_says_so_and_leaves_the_message_spam(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, monkeypatch: Any
) -> None:
    cli = _desk(tmp_path, mailboxes, sink, capsys)
    [uid] = mailboxes.append_many("contacto", [_spam()])
    cli.poll()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(casework, "open_case", broken)
    code, out, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert (code, out) == (1, "")
    said = f"mailcase: message {uid} of mailbox contacto stays spam: RuntimeError: boom"
    assert err.strip() == said
    [row] = cli.json("messages", "list")
    assert row["disposition"] == "spam" and row["reason"] == "X-Spam-Flag: YES"
    monkeypatch.undo()
    code, out, err = cli("messages", "release", str(uid), "--mailbox", "contacto")
    assert code == 0 and out.strip().endswith(": new_case"), err


def test_spam_met_again_in_its_rebuilt_folder_is_the_same_message(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Its row moves to the new address, whatever a filter says of it now (the admin
    # turned the verdicts off meanwhile): not a new case answering the spammer.
    with mailboxes.client("contacto") as imap:
        imap.create_folder("Soporte")
    cli = _desk(tmp_path, mailboxes, sink, capsys, contacto_folder="Soporte")
    raw = _spam()
    mailboxes.append("contacto", raw, folder="Soporte")
    cli.poll()
    [before] = cli.json("messages", "list")
    assert before["disposition"] == "spam"
    cli.config.write_text(cli.config.read_text() + "\n[spam]\nenabled = false\n")
    with mailboxes.client("contacto") as imap:  # a server migration: new UIDVALIDITY
        imap.delete_folder("Soporte")
        imap.create_folder("Soporte")
    mailboxes.append("contacto", raw, folder="Soporte")
    cli.poll()
    [after] = cli.json("messages", "list")
    assert after["disposition"] == "spam" and after["uidvalidity"] != before["uidvalidity"]
    assert cli.json("cases", "list") == [] and sink.messages == []
