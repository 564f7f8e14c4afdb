"""Hostile headers on the ingest path: a From the address parser cannot follow, the
quarantine notice's sender, a subject of folios, and names longer than their column."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import CONTACTO, mail, offline_runtime
from sqlmodel import select
from test_agents import Desk, desk
from test_desk_fixes import (
    GMAIL_FORWARD,
    ROSA,
    _agent_forwards_rosas_report,
    agent_writes_to_rosa,
)

from mailcase import service
from mailcase.errors import MessageError
from mailcase.imap import FetchedMessage
from mailcase.inbound import MAX_NAME, parse_inbound
from mailcase.models import Case, CaseLink, Checkpoint, LedgerEntry, Notice
from mailcase.reasons import Reason
from mailcase.store import utcnow

__all__ = ["desk"]  # the fixture, shared with test_agents

NESTED = "Juan " + "(" * 600 + " <juan@x.com>"


def _raw(sender: str, subject: str = "Sin servicio") -> bytes:
    # Written by hand: the stdlib's own header folding would choke on NESTED too.
    return (
        f"From: {sender}\r\nTo: {CONTACTO}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((sender, subject)))}@example.com>\r\n\r\nHola.\r\n"
    ).encode()


def _quarantine_notices(rt: Any) -> list[str]:
    """The plain text of each quarantine notice queued for ``agents.notify``."""
    with rt.store.transaction() as session:
        raws = [n.raw for n in session.exec(select(Notice).where(Notice.kind == "quarantined"))]
    texts = []
    for raw in raws:
        message: Any = email.message_from_bytes(raw, policy=email.policy.default)
        texts.append(message.get_body(("plain",)).get_content())
    return texts


# --- A From whose parentheses nest deeper than the address parser recurses ---


@pytest.mark.parametrize("field", ["From", "To", "Cc", "Reply-To"])
def test_an_address_field_nested_too_deeply_is_a_message_error(field: str) -> None:
    raw = mail(message_id="<n@example.com>").replace(
        b"Subject:", f"{field}: {NESTED}\r\nSubject:".encode(), 1
    )
    if field == "From":
        raw = raw.replace(b"From: Juan P", b"X-Old-From: Juan P", 1)
    with pytest.raises(MessageError) as caught:
        parse_inbound(raw)
    assert caught.value.reason.code is Reason.ADDRESS_NESTING
    assert (
        str(caught.value) == f"the {field} field nests parentheses too deeply to read its addresses"
    )


def test_a_from_nested_too_deeply_is_quarantined_and_the_mailbox_goes_on(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path, notify=True)
    try:
        assert service.ingest_message(
            rt, "contacto", 1, FetchedMessage(1, _raw(NESTED), utcnow())
        ) == ("quarantined")
        [notice] = _quarantine_notices(rt)
        assert "(sin remitente)" in notice and "anida paréntesis" in notice
        # The message after it is read: the checkpoint passed the bad one.
        good = FetchedMessage(2, _raw("Ana <ana@example.com>"), utcnow())
        assert service.ingest_message(rt, "contacto", 1, good) == "new_case"
        with rt.store.transaction() as session:
            assert session.get(Checkpoint, "contacto").last_uid == 2  # type: ignore[union-attr]
            rows = session.exec(select(LedgerEntry.disposition).order_by(LedgerEntry.uid)).all()
        assert rows == ["quarantined", "new_case"]
    finally:
        rt.store.dispose()


def test_a_quarantine_notice_survives_an_encoded_from_that_decodes_to_nesting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parsed undecoded the From is fine; something else quarantines the message, and
    # the notice once parsed the decoded From: RecursionError, the row rolled back.
    rt = offline_runtime(tmp_path, notify=True)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "_apply", broken)
    sender = "=?utf-8?q?" + "=28" * 600 + "?= <juan@x.com>"  # "(", encoded
    try:
        fetched = FetchedMessage(1, _raw(sender), utcnow())
        assert service.ingest_message(rt, "contacto", 1, fetched) == "quarantined"
        [notice] = _quarantine_notices(rt)
        assert "De:      juan@x.com" in notice
    finally:
        rt.store.dispose()


# --- The quarantine notice's sender: the raw From's address, not a decoded word's ---


@pytest.mark.parametrize(
    ("sender", "named"),
    [
        # Outlook's "Last, First": the comma is inside the encoded word.
        ("=?utf-8?q?P=C3=A9rez_Garc=C3=ADa=2C_Juan?= <juan@x.com>", "juan@x.com"),
        # A forged name that decodes to a third party's address.
        ("=?utf-8?q?ana=40x=2Ecom?= <mallory@y.com>", "mallory@y.com"),
    ],
)
def test_the_quarantine_notice_names_the_address_of_the_raw_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sender: str, named: str
) -> None:
    rt = offline_runtime(tmp_path, notify=True)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "_apply", broken)
    try:
        fetched = FetchedMessage(1, _raw(sender), utcnow())
        assert service.ingest_message(rt, "contacto", 1, fetched) == "quarantined"
        [notice] = _quarantine_notices(rt)
        [line] = [x for x in notice.splitlines() if x.startswith("De:")]
        assert line.split() == ["De:", named]
    finally:
        rt.store.dispose()


# --- A subject of folios ---


@contextmanager
def _statements(rt: Any) -> Iterator[list[str]]:
    """The SQL statements run on ``rt``'s database while the block runs."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = rt.store.engine
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)


def test_a_subject_naming_fifty_cases_links_and_locks_only_a_few(
    tmp_path: Path, db_url: str
) -> None:
    rt = offline_runtime(tmp_path, db_url)
    try:
        for uid in range(1, 51):
            raw = _raw(f"cliente{uid}@example.com")
            assert service.ingest_message(rt, "contacto", 1, FetchedMessage(uid, raw, utcnow()))
        with rt.store.transaction() as session:
            folios = list(session.exec(select(Case.folio).order_by(Case.id)))
        assert len(folios) == 50

        def stranger(uid: int, subject: str) -> list[str]:
            raw = _raw("extrano@example.net", subject)
            with _statements(rt) as seen:
                got = service.ingest_message(rt, "contacto", 1, FetchedMessage(uid, raw, utcnow()))
            assert got == "new_case"
            return seen

        one = stranger(51, f"Sobre {folios[0]}")
        fifty = stranger(52, "Sobre " + " ".join(folios))
        with rt.store.transaction() as session:
            newest = session.exec(select(Case).order_by(sa.desc(Case.id))).first()
            assert newest is not None
            links = session.exec(select(CaseLink).where(CaseLink.case_id == newest.id)).all()
        assert len(links) == service._FOLIOS_IN_SUBJECT
        # Each folio looked up costs a few statements, not fifty of them.
        assert len(fifty) - len(one) < 12 * service._FOLIOS_IN_SUBJECT
        # A stranger's folios end nobody's wait: no case of theirs is locked.
        assert not [s for s in fifty if "FOR UPDATE" in s and "cases.folio" in s]
    finally:
        rt.store.dispose()


# --- Names longer than the column that keeps them ---

LONG_NAME = "Rosa " + "D" * 254  # 259 characters; cases.customer_name holds 200


def test_an_agent_forwarding_mail_from_a_long_name_opens_the_case(desk: Desk) -> None:
    # A "De:" line may hold 300 characters (mailcase.quoting).
    _agent_forwards_rosas_report(desk, GMAIL_FORWARD.replace("Rosa Díaz", LONG_NAME))
    [case] = desk.cli.json("cases", "list")
    shown = desk.case(case["folio"])
    assert shown["customer"] == ROSA and shown["customer_name"] == LONG_NAME[:MAX_NAME]


def test_an_agent_writing_to_a_long_name_opens_the_case(desk: Desk) -> None:
    agent_writes_to_rosa(desk, name=LONG_NAME)
    [case] = desk.cli.json("cases", "list")
    shown = desk.case(case["folio"])
    assert shown["customer"] == ROSA and shown["customer_name"] == LONG_NAME[:MAX_NAME]
