"""One stranger's message must cost a bounded amount (sixth review round).

A 44 MB message of repeated ``Cc:`` lines, each field short enough for
``max_field_bytes``, made 1.6 million participants in six minutes at 4.8 GB of
memory; sent with a victim's folio, every later message of their case loaded
them all.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from helpers import mail, offline_runtime
from sqlmodel import func, select

from mailcase import service
from mailcase.casework import MAX_NEW_PARTICIPANTS, MAX_PARTICIPANTS
from mailcase.errors import MessageError
from mailcase.imap import FetchedMessage
from mailcase.inbound import MAX_HEADER_BYTES, MAX_RECIPIENTS, parse_inbound
from mailcase.models import Case, LedgerEntry, Participant

_uids = itertools.count(1)


def _with_cc(raw: bytes, addresses: list[str], per_field: int = 50) -> bytes:
    fields = b"".join(
        b"Cc: " + ", ".join(addresses[i : i + per_field]).encode() + b"\r\n"
        for i in range(0, len(addresses), per_field)
    )
    return fields + raw


def test_a_header_section_over_the_limit_is_refused_before_parsing() -> None:
    many = [f"vecino{i}@example.com" for i in range(MAX_HEADER_BYTES // 20)]
    raw = _with_cc(mail(), many)
    assert len(raw) > MAX_HEADER_BYTES
    with pytest.raises(MessageError, match="header section longer than the limit"):
        parse_inbound(raw)


def test_a_long_body_is_not_a_long_header() -> None:
    raw = mail(body="Adjunto el detalle.\n" + "x" * (2 * MAX_HEADER_BYTES))
    assert parse_inbound(raw).sender == "juan.perez@example.com"


def test_recipients_kept_per_field_are_bounded() -> None:
    many = [f"vecino{i}@example.com" for i in range(3 * MAX_RECIPIENTS)]
    parsed = parse_inbound(_with_cc(mail(), many))
    assert parsed.cc == tuple(many[:MAX_RECIPIENTS])


def _participants(rt: Any) -> int:
    with rt.store.read_session() as session:
        return int(session.exec(select(func.count()).select_from(Participant)).one())


def test_a_message_makes_a_bounded_number_of_participants(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path)
    first = [f"a{i}@example.com" for i in range(150)]
    raw = _with_cc(mail(), first)
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, None)) == "new_case"
    assert _participants(rt) == MAX_NEW_PARTICIPANTS
    with rt.store.read_session() as session:
        folio = session.exec(select(Case.folio)).one()
    for n in range(2, 12):  # the customer writes again and again, a new Cc each time
        more = [f"b{n}.{i}@example.com" for i in range(150)]
        reply = _with_cc(mail(subject=f"Re: [Folio {folio}] Sin servicio"), more)
        fetched = FetchedMessage(n, reply, None)
        assert service.ingest_message(rt, "contacto", 1, fetched) == "follow_up"
    assert _participants(rt) == MAX_PARTICIPANTS
    with rt.store.read_session() as session:
        assert len(session.exec(select(LedgerEntry)).all()) == 11
