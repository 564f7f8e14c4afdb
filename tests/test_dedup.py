"""Copies of one message without a Message-ID, delivered to two mailboxes, are one report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, offline_runtime, write_config
from servers import Dovecot, SmtpSink

from mailcase.inbound import parse_inbound

MESSAGE = (
    b"From: Juan Perez <juan@example.com>\r\n"
    b"To: contacto@internet-plarey.com.mx, info@internet-plarey.com.mx\r\n"
    b"Subject: Sin servicio\r\nDate: Fri, 27 Nov 2026 09:00:00 -0600\r\n\r\n"
    b"No tengo internet desde ayer.\r\n"
)


def delivered(to: str, hop: str) -> bytes:
    """``MESSAGE`` as delivered to ``to``: what the receiving servers add on top."""
    return (
        f"Return-Path: <juan@example.com>\r\nDelivered-To: {to}\r\n"
        f"Received: from mx.internet-plarey.com.mx by imap ({hop}) with LMTP\r\n"
        f"\tfor <{to}>; Fri, 27 Nov 2026 09:00:0{len(hop)} -0600\r\n"
        "Authentication-Results: mx.internet-plarey.com.mx; spf=pass\r\n"
        "X-Spam-Score: 0.1\r\n"
    ).encode() + MESSAGE


def test_the_copies_share_their_identity_and_other_mail_does_not() -> None:
    contacto = parse_inbound(delivered("contacto@internet-plarey.com.mx", "a"))
    info = parse_inbound(delivered("info@internet-plarey.com.mx", "bb"))
    assert contacto.message_id is None and contacto.raw_sha256 != info.raw_sha256
    assert contacto.dedup_key == info.dedup_key
    assert contacto.dedup_key.startswith("content:")
    other = parse_inbound(MESSAGE.replace(b"desde ayer", b"desde hoy"))
    assert other.dedup_key != contacto.dedup_key
    with_id = parse_inbound(b"Message-ID: <x@example.com>\r\n" + MESSAGE)
    assert with_id.dedup_key == "<x@example.com>"


@pytest.mark.integration
def test_copies_in_both_mailboxes_open_one_case(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=db_url), capsys)
    mailboxes.append("contacto", delivered("contacto@internet-plarey.com.mx", "a"))
    mailboxes.append("info", delivered("info@internet-plarey.com.mx", "bb"))
    cli.poll()
    assert len(cli.json("cases", "list")) == 1
    dispositions = sorted(e["disposition"] for e in cli.json("messages", "list"))
    assert dispositions == ["duplicate", "new_case"]
    assert len(sink.messages) == 1  # one acknowledgement


def test_mail_keyed_by_its_raw_hash_before_an_upgrade_is_still_recognised(
    tmp_path: Path,
) -> None:
    # A folder rebuilt (new UIDVALIDITY) after the upgrade: its messages are met again.

    import sqlalchemy as sa

    from mailcase import service
    from mailcase.imap import FetchedMessage
    from mailcase.models import LedgerEntry
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path)
    raw = delivered("contacto@internet-plarey.com.mx", "a")
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, utcnow())) == "new_case"
    with rt.store.transaction() as session:  # as an older mailcase keyed it
        session.execute(sa.update(LedgerEntry).values(dedup_key=parse_inbound(raw).raw_key))
    assert service.ingest_message(rt, "contacto", 2, FetchedMessage(1, raw, utcnow())) == "new_case"
    with rt.store.transaction() as session:
        rows = session.execute(sa.text("SELECT uidvalidity FROM ledger")).all()
    assert rows == [(2,)]  # the same row, moved to the new UIDVALIDITY: no second case
    rt.store.dispose()


def test_a_message_another_poll_committed_first_is_not_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Two polls of one mailbox overlapping for a moment: the second's INSERT of the
    # ledger row fails on its unique key. That is not a bad message.

    import sqlalchemy as sa

    from mailcase import service
    from mailcase.imap import FetchedMessage
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path)
    raw = delivered("contacto@internet-plarey.com.mx", "a")
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, utcnow())) == "new_case"
    real = service._existing
    calls: list[int] = []

    def not_yet_seen(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)  # the first look: before the other poll's commit
        return None if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(service, "_existing", not_yet_seen)
    capsys.readouterr()
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, utcnow())) == "new_case"
    logged = "".join(capsys.readouterr())
    assert "message_ingested_elsewhere" in logged and "message_quarantined" not in logged
    with rt.store.transaction() as session:
        rows = session.execute(sa.text("SELECT disposition FROM ledger")).all()
    assert rows == [("new_case",)]
    rt.store.dispose()


def test_another_senders_mail_under_a_reused_message_id_is_not_a_duplicate(
    tmp_path: Path,
) -> None:
    """Devices and web forms that send every message under one fixed Message-ID exist: a
    second customer's report under it was dropped as a "duplicate" of the first's case."""
    from mailcase import service
    from mailcase.imap import FetchedMessage
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path)
    fixed = b"Message-ID: <1@localhost>\r\n"
    ana = fixed + MESSAGE
    beto = fixed + MESSAGE.replace(b"Juan Perez <juan@example.com>", b"Beto <beto@example.org>")
    later = fixed + MESSAGE.replace(b"09:00:00", b"11:30:00")  # Juan again, another day
    copy = b"Delivered-To: info@internet-plarey.com.mx\r\n" + ana  # Cc'd to info@
    ingest = service.ingest_message
    assert ingest(rt, "contacto", 1, FetchedMessage(1, ana, utcnow())) == "new_case"
    assert ingest(rt, "contacto", 1, FetchedMessage(2, beto, utcnow())) == "new_case"
    assert ingest(rt, "contacto", 1, FetchedMessage(3, later, utcnow())) != "duplicate"
    assert ingest(rt, "info", 1, FetchedMessage(1, copy, utcnow())) == "duplicate"
    rt.store.dispose()


def test_a_copy_whose_from_comes_after_a_long_header_is_still_a_copy(tmp_path: Path) -> None:
    # Only the first 64 KB were read back: the From after two long fields was not seen,
    # and the copy in info@ opened a second case with a second acknowledgement.
    from mailcase import service
    from mailcase.imap import FetchedMessage
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path)
    long = "".join(f"X-Relleno-{i}: {'a' * 40_000}\r\n" for i in range(2)).encode()
    raw = b"Message-ID: <largo@example.com>\r\n" + long + MESSAGE
    copy = b"Delivered-To: info@internet-plarey.com.mx\r\n" + raw
    ingest = service.ingest_message
    assert ingest(rt, "contacto", 1, FetchedMessage(1, raw, utcnow())) == "new_case"
    assert ingest(rt, "info", 1, FetchedMessage(1, copy, utcnow())) == "duplicate"
    rt.store.dispose()


def test_two_reports_under_one_fixed_id_without_a_date_are_not_one(tmp_path: Path) -> None:
    # An alarm panel sends every message under one id and no Date: From alone matched,
    # and "Nodo 9 caído" was dropped as a duplicate of "Nodo 4 caído".
    from mailcase import service
    from mailcase.imap import FetchedMessage
    from mailcase.store import utcnow

    rt = offline_runtime(tmp_path)
    undated = b"Message-ID: <alerta@router>\r\n" + MESSAGE.replace(
        b"Date: Fri, 27 Nov 2026 09:00:00 -0600\r\n", b""
    )
    assert b"Date:" not in undated
    node9 = undated.replace(b"No tengo internet desde ayer.", b"Nodo 9 sin enlace.")
    copy = b"Delivered-To: info@internet-plarey.com.mx\r\n" + undated  # Cc'd to info@
    ingest = service.ingest_message
    assert ingest(rt, "contacto", 1, FetchedMessage(1, undated, utcnow())) == "new_case"
    assert ingest(rt, "contacto", 1, FetchedMessage(2, node9, utcnow())) == "new_case"
    assert ingest(rt, "info", 1, FetchedMessage(1, copy, utcnow())) == "duplicate"
    rt.store.dispose()
