"""Hypothesis properties of the pure core that the per-module tests do not already state.

Each module's own test file has its examples and a few properties (folio
canonical form, quoting never raising, classify on hand-built values, the
command block being a suffix, no header injection through the subject and the
From name). This file adds what those leave open:

* folio: what find_folios returns really occurs in the subject and finds
  itself again; tagging with any folio of any valid prefix is idempotent;
* quoting: the result is never longer than the input, is the input itself when
  there is nothing to strip, and stripping twice changes nothing;
* inbound: no header value (bad encoded words, 8-bit bytes, absurd dates) makes
  a plain message unreadable;
* classify: on messages *parsed* from arbitrary header names and bytes; and
  ``Auto-Submitted: auto-replied`` makes any message an auto-reply, unless it
  is a delivery report;
* triage: the invariants of a Decision over every combination of Facts;
* commands: commands built from structured values parse back to those values;
* render: customer strings and relayed bodies never become template syntax,
  markup or headers, and the customer reads exactly what was rendered;
* dsn: parse_dsn never raises on arbitrary bytes, and reads every failed
  recipient and the returned Message-ID of classic and RFC 6533 global reports,
  transfer-encoded or not.
"""

from __future__ import annotations

import base64
import email
import email.policy
import quopri
import re
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from types import MappingProxyType
from typing import Any

from helpers import COMPANY, FOLIO, NOTICE_HEADERS
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mailcase.classify import (
    LOOP_HEADER,
    Classification,
    MailKind,
    classify,
    is_automatic_address,
)
from mailcase.commands import (
    Command,
    CommandKind,
    CommandProblem,
    line_start,
    parse_commands,
)
from mailcase.dsn import parse_dsn
from mailcase.errors import MessageError
from mailcase.folio import find_folios, format_folio, tagged_subject
from mailcase.inbound import InboundMail, parse_inbound
from mailcase.models import Disposition
from mailcase.quoting import strip_quoted
from mailcase.render import Envelope, build_message, render_body
from mailcase.triage import CaseRef, Facts, Role, triage

# Parsing and rendering cost milliseconds per example: no deadline, so a slow
# CI machine cannot turn a pass into a flaky DeadlineExceeded.
HEAVY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIGHT = settings(max_examples=300, deadline=None)


# --- folio -----------------------------------------------------------------------

# Prefixes exactly as the configuration allows them (config.FolioSettings.prefix).
PREFIXES = st.from_regex(r"[A-Z][A-Z0-9]{0,9}", fullmatch=True)
DASHES = st.sampled_from(["-", " - ", "_-_", "‐", "–", "—", " -", "--", " "])
FOLIO_DASHES = st.sampled_from(["-", "-", " - ", "_-_", " _ - ", "‐", "–", "—"])
YEARS = st.integers(min_value=1000, max_value=9999).map(str)
NUMBERS = st.integers(min_value=0, max_value=999_999_999).map(lambda n: f"{n:06d}")


@st.composite
def mangled_folios(draw: st.DrawFn, prefix: str) -> str:
    """A folio of ``prefix`` as clients and customers mangle it."""
    return "".join(
        [
            draw(st.sampled_from([prefix, prefix.lower(), prefix.title()])),
            draw(FOLIO_DASHES),
            draw(YEARS),
            draw(FOLIO_DASHES),
            draw(NUMBERS),
        ]
    )


@st.composite
def near_misses(draw: st.DrawFn, prefix: str) -> str:
    """Almost a folio: glued to a word, a 3- or 5-digit year, a 10-digit number…"""
    return "".join(
        [
            draw(st.sampled_from([prefix, f"x{prefix}", f"{prefix}1", "PL"])),
            draw(DASHES),
            draw(st.from_regex(r"[0-9]{3,5}", fullmatch=True)),
            draw(DASHES),
            draw(st.from_regex(r"[0-9]{1,11}", fullmatch=True)),
        ]
    )


@st.composite
def folio_subjects(draw: st.DrawFn, prefix: str) -> str:
    """Subjects made of arbitrary text, (mangled) folios and pieces of them, glued any way."""
    piece = st.one_of(
        mangled_folios(prefix),
        near_misses(prefix),
        st.text(max_size=12),
        st.sampled_from([prefix, "[Folio ", "]", "Re: ", "RV:", "folio", " ", ", "]),
        DASHES,
        st.from_regex(r"[0-9]{1,10}", fullmatch=True),
    )
    return "".join(draw(st.lists(piece, max_size=8)))


PREFIXED_SUBJECTS = PREFIXES.flatmap(lambda p: st.tuples(st.just(p), folio_subjects(p)))


@LIGHT
@given(PREFIXED_SUBJECTS)
@example(("PLR", "re: [folio plr - 2026 - 123]"))
@example(("PLR", "PLR-2026-0 PLR_-_2026_-_7 xPLR-2026-1 PLR-2026-0000000012"))
@example(("PLR", "ＰＬＲ-２０２６-１ plr\u20132026\u20140001"))
def test_found_folios_occur_in_the_subject_and_find_themselves(
    prefixed: tuple[str, str],
) -> None:
    prefix, subject = prefixed
    found = find_folios(subject, prefix)
    assert len(set(found)) == len(found)
    folded = subject.casefold()
    for folio in found:
        assert folio.isascii() and folio.startswith(f"{prefix}-")
        _, year, number = folio.rsplit("-", 2)
        # Every part of it is in the subject: nothing is made up.
        assert prefix.casefold() in folded
        assert year in subject
        assert str(int(number)) in subject
        # The canonical form is a folio of its own, and only of itself.
        assert find_folios(folio, prefix) == [folio]
    # Written out canonically, the same folios come back in the same order.
    assert find_folios(" ".join(found), prefix) == found


@LIGHT
@given(
    prefix=PREFIXES,
    year=st.integers(min_value=1000, max_value=9999),
    number=st.integers(min_value=1, max_value=999_999_999),
    data=st.data(),
)
def test_tagging_with_any_folio_is_idempotent_and_the_tag_is_found_first(
    prefix: str, year: int, number: int, data: st.DataObject
) -> None:
    folio = format_folio(prefix, year, number)
    subject = data.draw(st.one_of(st.text(), folio_subjects(prefix)))
    tagged = tagged_subject(folio, subject)
    assert tagged.startswith(f"[Folio {folio}]")
    assert tagged_subject(folio, tagged) == tagged
    # Replies keep the tag behind their "Re:", and tagging them changes nothing.
    assert tagged_subject(folio, f"RE: Re:{tagged}") == tagged
    # The folio we tag with is the one a reply is threaded by.
    assert find_folios(tagged, prefix)[0] == folio
    assert "\n" not in tagged and "\r" not in tagged


# --- quoting ------------------------------------------------------------------------


def _normalized(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


QUOTE_LINES = st.sampled_from(
    [
        "> citado",
        ">> más citado",
        "El lun, 3 nov 2026 a las 10:15, Juan <j@x.mx> escribió:",
        "On Mon, Nov 3, 2026 at 10:15 AM Juan <j@x.mx> wrote:",
        "-----Mensaje original-----",
        "________________________________",
        "De: Soporte <s@x.mx>",
        "Enviado: lunes, 3 de noviembre de 2026 10:15",
        "Para: Juan",
        "Asunto: Re: folio",
        "-- ",
        "--",
        "Enviado desde mi iPhone",
        "Sent from my iPad",
        "",
        "   ",
    ]
)
REPLY_TEXT = st.lists(QUOTE_LINES | st.text(max_size=30), max_size=25).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n", "\r"]).map(lambda nl: nl.join(lines))
)


@LIGHT
@given(st.one_of(st.text(), REPLY_TEXT))
def test_strip_quoted_never_grows_the_text(text: str) -> None:
    result = strip_quoted(text)
    assert isinstance(result, str)
    assert len(result) <= len(_normalized(text))
    assert "\r" not in result
    assert result == result.strip()


# No ">" (quotes), ":" (attributions, header blocks, forward markers), "-" or
# "_" (markers, rules, the signature delimiter): prose with nothing to strip.
PROSE = st.text(
    alphabet=st.sampled_from(
        list("abcdefghijklmnopqrstuvwxyzáéíóúñ ABCDEFGÑ0123456789.,;!?¿¡()\t")
    ),
    max_size=60,
)
PROSE_TEXT = st.lists(PROSE, max_size=12).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n"]).map(lambda nl: nl.join(lines))
)


@LIGHT
@given(PROSE_TEXT)
@example("Hola, no tengo internet.\r\n\r\nEl módem parpadea en rojo.\r\n  ")
@example("  El lunes 3 Juan escribió que\nno hay servicio desde el sabado")
def test_text_without_quotes_or_signature_is_returned_stripped(text: str) -> None:
    # A last line such as "Enviado desde mi casa" is a device signature; the
    # alphabet can spell one, so leave those to the quoting tests.
    last = (text.strip().splitlines() or [""])[-1].strip().lower()
    assume(
        not re.match(
            r"(sent (from|with)|enviado desde|get outlook|obtener outlook"
            r"|descargar outlook)\b",
            last,
        )
    )
    assert strip_quoted(text) == _normalized(text).strip()


@LIGHT
@given(st.one_of(st.text(), REPLY_TEXT))
@example("Hola\nEl lun 3 nov 2026\n> citado\nJuan escribió:\ncita")
@example("Hola\nSent from my iPhone\nSent from my iPad")
@example("Hola\nDe: Soporte\n> 1\n> 2\n> 3\n> 4\n> 5\n> 6\n> 7\n> 8\n> 9\nPara: x\nAsunto: y")
def test_strip_quoted_is_idempotent(text: str) -> None:
    once = strip_quoted(text)
    assert strip_quoted(once) == once


# --- classify on parsed messages ----------------------------------------------------

# RFC 5322 2.2: a field name is printable ASCII except ":".
FIELD_NAMES = st.one_of(
    st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(
        [
            "From",
            "To",
            "Subject",
            "Return-Path",
            "Sender",
            "Reply-To",
            "Content-Type",
            "Precedence",
            "List-Id",
            "X-Autoreply",
            "X-Failed-Recipients",
            LOOP_HEADER,
            "Auto-Submitted",
            "Message-ID",
            "References",
            "In-Reply-To",
            "Date",
        ]
    ),
)
# Encoded words, some of which broke mail-parser's header decoding (and so the
# whole message was refused).
ENCODED_WORDS = st.sampled_from(
    [
        b"=?utf-8?q?=C3=A1?=",
        b"=?utf-8?b?QUJD?=",
        b"=?utf-8?b?QUJ?=",  # bad base64 padding
        b"=?utf-8?b?****?=",
        b"=?x?b?@@?=",
        b"=?x\x00y?q?a?=",  # a NUL in the charset name
        b"=??q?a?=",
        b"=?utf-8*es?q?a?=",
    ]
)
# Field bodies as they arrive: UTF-8, Latin-1 or any other bytes, but no line break
# (a CR or LF would end the field; folding is exercised through the corpus fuzz).
FIELD_VALUES = st.one_of(
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
    st.sampled_from([b"<>", b"no", b"auto-replied", b"bulk", b"Juan <j@x.mx>", b'"a" <b@c>']),
    st.lists(ENCODED_WORDS | st.sampled_from([b"Juan", b"<j@x.mx>", b","]), max_size=4).map(
        b" ".join
    ),
).map(lambda b: b.replace(b"\r", b" ").replace(b"\n", b" "))


def _raw(fields: list[tuple[str, bytes]], body: bytes) -> bytes:
    return b"".join(n.encode("ascii") + b": " + v + b"\r\n" for n, v in fields) + b"\r\n" + body


@HEAVY
@given(
    fields=st.lists(
        st.tuples(
            FIELD_NAMES.filter(lambda n: not n.lower().startswith(("content-", "mime-"))),
            FIELD_VALUES,
        ),
        max_size=8,
    )
)
@example(fields=[("From", b"=?utf-8?b?QUJ?= <juan@example.com>")])
@example(fields=[("Subject", b"=?x\x00y?q?a?=")])
@example(fields=[("Date", b"Mon, 3 Nov 99999999999999999999 10:15:00 +0000")])
@example(fields=[("Date", b"Mon, 3 Nov 2026 10:15:00 +99999999999999999999")])
def test_no_header_value_makes_a_plain_message_unreadable(
    fields: list[tuple[str, bytes]],
) -> None:
    # "Never raises for bad charsets or encodings": whatever the sender's
    # headers say (MIME headers aside), the message is read, not quarantined.
    mail = parse_inbound(_raw(fields, b"Hola, no tengo internet.\r\n"))
    assert mail.text == "Hola, no tengo internet."
    assert mail.date is None or mail.date.tzinfo is not None
    for values in mail.headers.values():
        for value in values:
            value.encode("utf-8")  # valid Unicode: no lone surrogates


@HEAVY
@given(
    fields=st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=8),
    body=st.binary(max_size=200),
)
def test_classify_any_parsed_message(fields: list[tuple[str, bytes]], body: bytes) -> None:
    raw = _raw(fields, body)
    try:
        mail = parse_inbound(raw)
    except MessageError:
        assume(False)
        return
    result = classify(mail, own_addresses=frozenset({"contacto@internet-plarey.com.mx"}))
    assert isinstance(result.kind, MailKind)
    assert (result.kind is MailKind.CUSTOMER) == (result.reason == "")
    assert "\n" not in result.reason and "\r" not in result.reason
    if result.kind is MailKind.CUSTOMER:
        # RFC 3834 section 5: whatever else the message says, this makes it automatic.
        marked = parse_inbound(b"Auto-Submitted: auto-replied\r\n" + raw)
        assert classify(marked).kind is MailKind.AUTO_REPLY
        assert classify(marked).reason == "Auto-Submitted: auto-replied"


def _mail(**changes: Any) -> InboundMail:
    values: dict[str, Any] = {
        "sender": "juan.perez@example.com",
        "sender_name": "",
        "from_address": "juan.perez@example.com",
        "to": (),
        "cc": (),
        "reply_to": (),
        "subject": "",
        "message_id": "<m1@example.com>",
        "in_reply_to": (),
        "references": (),
        "date": None,
        "text": "",
        "attachments": (),
        "headers": MappingProxyType({}),
        "content_type": "text/plain",
        "raw_sha256": "0" * 64,
        "size": 0,
    }
    values.update(changes)
    return InboundMail(**values)


@LIGHT
@given(
    headers=st.dictionaries(
        st.sampled_from(
            ["precedence", "list-id", "list-unsubscribe", "x-other", "content-type", "subject"]
        ),
        st.lists(st.text(max_size=30), min_size=1, max_size=2),
    ),
    subject=st.text(max_size=40),
    sender=st.text(max_size=40),
    content_type=st.sampled_from(
        ["text/plain", "multipart/mixed", "multipart/report", "message/delivery-status"]
    ),
)
def test_auto_submitted_outranks_everything_but_a_delivery_report(
    headers: dict[str, list[str]], subject: str, sender: str, content_type: str
) -> None:
    # Built directly (no parser): any header map classify may be handed.
    values = {k: tuple(v) for k, v in headers.items()}
    values["auto-submitted"] = ("auto-replied",)
    mail = _mail(
        headers=MappingProxyType(values),
        subject=subject,
        sender=sender,
        from_address=sender,
        content_type=content_type,
    )
    result = classify(mail, own_addresses=frozenset({sender}))
    if result.kind is MailKind.BOUNCE:
        # Only bounce evidence is a bounce before it is an auto-reply: here an RFC 3464
        # report, or a sender such as "POSTMASTER" (these headers never hold
        # X-Failed-Recipients).
        if result.reason.startswith("From: "):
            assert is_automatic_address(sender)
        else:
            assert content_type in ("multipart/report", "message/delivery-status")
            assert result.reason.startswith("Content-Type: ")
    else:
        assert result == Classification(MailKind.AUTO_REPLY, "Auto-Submitted: auto-replied")


# --- triage -----------------------------------------------------------------------

OWN_ADDRESS = "contacto@internet-plarey.com.mx"
AGENT_ADDRESS = "ana.tecnica@internet-plarey.com.mx"
ADDRESSES = st.sampled_from(
    [
        "juan.perez@example.com",
        "maria@example.com",
        OWN_ADDRESS,
        AGENT_ADDRESS,
        "mailer-daemon@example.com",
        "noreply@banco.mx",
        "",
    ]
)
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

CASES = st.builds(
    CaseRef,
    id=st.integers(min_value=1, max_value=5),
    folio=st.integers(min_value=1, max_value=5).map(lambda n: format_folio("PLR", 2026, n)),
    customer=ADDRESSES,
    status=st.sampled_from(["open", "resolved", "closed"]),
    participants=st.frozensets(ADDRESSES, max_size=2),
    resolved_at=st.none()
    | st.integers(min_value=0, max_value=90).map(lambda d: NOW - timedelta(days=d)),
)
FACTS = st.builds(
    Facts,
    duplicate_of=st.none() | CASES,
    is_duplicate=st.booleans(),
    by_reference=st.none() | CASES,
    by_folio=st.lists(CASES, max_size=3).map(tuple),
    signed_case=st.none() | CASES,
    sender_authenticated=st.booleans(),
)
CLASSIFICATIONS = st.sampled_from(
    [
        Classification(MailKind.CUSTOMER, ""),
        Classification(MailKind.AUTO_REPLY, "Auto-Submitted: auto-replied"),
        Classification(MailKind.BOUNCE, "Return-Path: <>"),
        Classification(MailKind.BULK, "Precedence: bulk"),
    ]
)
AUTOMATIC = {
    MailKind.AUTO_REPLY: Disposition.AUTO_REPLY,
    MailKind.BOUNCE: Disposition.BOUNCE,
    MailKind.BULK: Disposition.BULK,
}


@settings(max_examples=1000, deadline=None)
@given(
    sender=ADDRESSES,
    classification=CLASSIFICATIONS,
    facts=FACTS,
    now=st.none() | st.just(NOW),
    reopen_days=st.integers(min_value=0, max_value=60),
)
def test_triage_decisions_are_consistent(
    sender: str,
    classification: Classification,
    facts: Facts,
    now: datetime | None,
    reopen_days: int,
) -> None:
    mail = _mail(sender=sender, from_address=sender)
    decision = triage(
        mail,
        classification,
        facts,
        own_addresses=frozenset({OWN_ADDRESS}),
        agent_addresses=frozenset({AGENT_ADDRESS}),
        now=now,
        reopen_days=reopen_days,
    )
    # A decision never both opens a case and joins (or is recorded on) one.
    assert not (decision.open_case and decision.case is not None)
    assert decision.open_case == (decision.disposition is Disposition.NEW_CASE)
    # Only a new case is acknowledged, and never to us or to a machine.
    if decision.acknowledge:
        assert decision.open_case
        assert sender not in (OWN_ADDRESS, "mailer-daemon@example.com", "noreply@banco.mx", "")
    # Duplicate always wins: the first copy's case, nothing else happens.
    if facts.is_duplicate:
        assert decision.disposition is Disposition.DUPLICATE
        assert decision.case == facts.duplicate_of
        assert not decision.open_case and not decision.acknowledge and not decision.reopen
        return
    assert decision.disposition is not Disposition.DUPLICATE
    # Automatic mail never opens, never acknowledges, never reopens.
    if classification.kind is not MailKind.CUSTOMER:
        assert decision.disposition is AUTOMATIC[classification.kind]
        assert not decision.open_case and not decision.acknowledge and not decision.reopen
        assert decision.role is Role.CUSTOMER
        return
    if not sender:
        assert decision.disposition is Disposition.QUARANTINED
        return
    # Only a case that was resolved (and may have closed since) reopens, and only by a
    # follow-up within the window.
    if decision.reopen:
        assert decision.disposition is Disposition.FOLLOW_UP
        assert decision.case is not None and decision.case.status in ("resolved", "closed")
        assert decision.case.status == "resolved" or decision.case.resolved_at is not None
    # Only a configured agent with proof acts as an agent.
    if decision.role is Role.AGENT:
        assert sender == AGENT_ADDRESS
        assert facts.signed_case is not None or facts.sender_authenticated
    # A follow-up joins a case that is named, and that is not closed (unless it reopens it).
    if decision.disposition is Disposition.FOLLOW_UP:
        named = [facts.signed_case, facts.by_reference, *facts.by_folio]
        assert decision.case in named
        if decision.role is Role.CUSTOMER:
            assert decision.case is not None
            assert decision.case.status != "closed" or decision.reopen
            assert decision.case == facts.by_reference or decision.case.admits(sender)


# --- commands ---------------------------------------------------------------------

NAMES = {
    CommandKind.NOTE: ["nota", "note", "NOTA", "Nota:"],
    CommandKind.CLOSE: ["cerrar", "close", "Cerrar"],
    CommandKind.REOPEN: ["reabrir", "reopen", "REABRIR"],
    CommandKind.RESOLVE: ["resolver", "resolve", "Resolver"],
    CommandKind.VISIT: ["visita", "visit", "Visita:"],
    CommandKind.ROUTE: ["area", "área", "ÁREA", "route", "a\u0301rea"],
    CommandKind.PARTICIPANT: ["participante", "participant", "Participante:"],
    CommandKind.MERGE: ["fusionar", "merge", "Fusionar:"],
    CommandKind.TYPE: ["tipo", "type", "Tipo:", "TYPE"],
    CommandKind.ASSIGN: ["asignar", "assign", "Asignar:", "ASSIGN"],
    CommandKind.PENDING: ["pendiente", "pending", "Pendiente:", "PENDING"],
    CommandKind.OUTAGE: ["masivo", "outage", "Masivo:", "OUTAGE"],
    CommandKind.REPLY: ["respuesta", "reply", "Respuesta:", "REPLY"],
    CommandKind.SPAM: ["spam", "SPAM", "correo-basura", "Spam:"],
}
# The words "#masivo" reads as other than a folio: "no"/"off" and "aviso"/"update".
OUTAGE_WORDS = {"no": "stop", "Off": "stop", "aviso": "update", "Update.": "update"}
# What may follow "#asignar" besides an address, and what it means.
WHOM = {
    "yo": "myself",
    "Yo": "myself",
    "me": "myself",
    "a mí": "myself",
    "to me": "myself",
    "nadie": "nobody",
    "NADIE": "nobody",
    "none": "nobody",
    "Nobody.": "nobody",
}
TYPES = {
    "queja": "complaint",
    "Consulta": "question",
    "Aclaración": "clarification",
    "CANCELACIÓN": "cancellation",
    "complaint": "complaint",
    "Question": "question",
    "clarification.": "clarification",
    "cancellation": "cancellation",
}
OUTCOMES = {
    "procedente": "valid",
    "Improcedente": "invalid",
    "VALID": "valid",
    "invalid": "invalid",
}


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[str, Command]:
    """A well-formed command line, and the Command it must parse to."""
    kind = draw(st.sampled_from(list(CommandKind)))
    name = draw(st.sampled_from(NAMES[kind]))
    indent = draw(st.sampled_from(["", " ", "\t"]))
    trailer = draw(st.sampled_from(["", " ", "\r"]))
    args: list[str] = []
    expected: dict[str, Any] = {}
    if kind is CommandKind.RESOLVE:
        word = draw(st.sampled_from(sorted(OUTCOMES)))
        args, expected = [word], {"outcome": OUTCOMES[word]}
    elif kind is CommandKind.VISIT:
        day = draw(st.dates(min_value=date(1000, 1, 1)))
        args, expected = [day.isoformat()], {"visit_date": day}
        if draw(st.booleans()):
            at = draw(st.times()).replace(second=0, microsecond=0)
            args.append(at.strftime("%H:%M"))
            expected["visit_time"] = at
    elif kind is CommandKind.ROUTE:
        area = draw(st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True))
        args, expected = [area.upper() if draw(st.booleans()) else area], {"area": area}
    elif kind is CommandKind.PARTICIPANT:
        address = draw(st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,20}\.mx", fullmatch=True))
        args, expected = [address.upper() if draw(st.booleans()) else address], {"address": address}
    elif kind is CommandKind.MERGE:
        # The folio as written, in one word or several ("PLR 2026 123"): read by the service.
        args = draw(st.lists(st.from_regex(r"[A-Za-z0-9\[\]-]{1,12}", fullmatch=True), min_size=1))
        expected = {"folio": " ".join(args)}
    elif kind is CommandKind.OUTAGE and draw(st.booleans()):
        word = draw(st.sampled_from(sorted(OUTAGE_WORDS)))
        args, expected = [word], {OUTAGE_WORDS[word]: True}
    elif kind is CommandKind.OUTAGE:
        # The main case's folio as written, as #fusionar's: never one of its words.
        words = {"no", "off", "fin", "end", "cancelar", "cancel", "aviso", "avisar", "update"}
        args = draw(
            st.lists(st.from_regex(r"[A-Za-z0-9\[\]-]{1,12}", fullmatch=True), min_size=1).filter(
                lambda a: a[0].lower().rstrip(".:,;") not in words
            )
        )
        expected = {"folio": " ".join(args)}
    elif kind is CommandKind.TYPE:
        word = draw(st.sampled_from(sorted(TYPES)))
        args, expected = [word], {"case_type": TYPES[word]}
    elif kind is CommandKind.ASSIGN and draw(st.booleans()):
        words = draw(st.sampled_from(sorted(WHOM)))
        args, expected = words.split(), {WHOM[words]: True}
    elif kind is CommandKind.ASSIGN:
        address = draw(st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,20}\.mx", fullmatch=True))
        args, expected = [address.upper() if draw(st.booleans()) else address], {"owner": address}
    elif kind is CommandKind.PENDING and draw(st.booleans()):
        days = draw(st.integers(min_value=1, max_value=90))
        args, expected = [str(days)], {"days": days}
    elif kind is CommandKind.SPAM and draw(st.booleans()):
        word = draw(st.sampled_from(["no", "off", "No.", "OFF"]))
        args, expected = [word], {"stop": True}
    elif kind is CommandKind.REPLY:
        reply = draw(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True))
        args, expected = [reply.upper() if draw(st.booleans()) else reply], {"reply": reply}
    line = f"#{name}" + "".join(" " + a for a in args)
    return indent + line + trailer, Command(kind, line=line, **expected)


BLOCK_LINES = st.one_of(
    command_lines().map(lambda pair: (pair[0], pair[1])),
    st.text(max_size=20).map(lambda s: ("#" + s.replace("\n", " "), None)),  # anything after "#"
    st.sampled_from(["", "  ", "\r"]).map(lambda s: (s, None)),  # blank lines in the block
)


@LIGHT
@given(
    block=st.lists(BLOCK_LINES, max_size=10),
    rest=st.text(max_size=60),
)
def test_commands_parse_back_to_what_was_written(
    block: list[tuple[str, Command | None]], rest: str
) -> None:
    rest_lines = rest.split("\n")
    # The text starts at its first line that is neither blank nor a "#" line.
    assume(line_start(rest_lines[0]) and not line_start(rest_lines[0]).startswith("#"))
    text = "\n".join([line for line, _ in block] + [rest])
    parsed = parse_commands(text)
    hash_lines = [line.strip() for line, _ in block if line.strip().startswith("#")]
    # Below the block, a line naming a command is a problem (misplaced), not text.
    in_block = [p for p in parsed.problems if p.problem != "misplaced_command"]
    assert len(parsed.commands) + len(in_block) == len(hash_lines)
    assert parsed.text == rest
    # Every well-formed line is exactly the command it was built from, in order.
    wanted = [command for _, command in block if command is not None]
    assert _subsequence(wanted, list(parsed.commands))
    for command in parsed.commands:
        _assert_only_its_fields(command)
    for problem in in_block:
        assert isinstance(problem, CommandProblem) and problem.line in hash_lines


def _subsequence(needles: list[Command], haystack: list[Command]) -> bool:
    # A free-form "#..." line may itself be a valid command (e.g. "#nota"),
    # so the built commands are a subsequence of what was parsed.
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


def _assert_only_its_fields(command: Command) -> None:
    kind = command.kind
    assert (command.outcome is not None) == (kind is CommandKind.RESOLVE)
    assert (command.visit_date is not None or command.cancel) == (kind is CommandKind.VISIT)
    assert command.visit_time is None or kind is CommandKind.VISIT
    assert (command.area is not None) == (kind is CommandKind.ROUTE)
    assert (command.address is not None) == (kind is CommandKind.PARTICIPANT)
    outage = kind is CommandKind.OUTAGE
    # "#masivo" names a folio, or is "#masivo no" (stop) or "#masivo aviso" (update).
    assert (command.folio is not None) == (kind is CommandKind.MERGE) or (
        outage and (command.folio is not None) + command.stop + command.update == 1
    )
    assert not command.update or outage
    assert not command.stop or outage or kind in (CommandKind.PENDING, CommandKind.SPAM)
    assert (command.case_type is not None) == (kind is CommandKind.TYPE)
    whom = (command.owner is not None, command.myself, command.nobody)
    assert sum(whom) == (1 if kind is CommandKind.ASSIGN else 0)
    assert command.days is None or kind is CommandKind.PENDING
    assert (command.reply is not None) == (kind is CommandKind.REPLY)
    if command.reply is not None:
        assert re.fullmatch(r"[a-z0-9-]+", command.reply)
    if command.area is not None:
        assert re.fullmatch(r"[a-z0-9_-]+", command.area)
    assert command.line == command.line.strip() and command.line.startswith("#")


# --- render -----------------------------------------------------------------------

# Customer strings: arbitrary text spliced with template syntax, markup, line
# breaks of every kind and NUL.
HOSTILE = st.lists(
    st.one_of(
        st.text(max_size=15),
        st.sampled_from(
            [
                "{{7*7}}",
                "{{ 7*7 }}",
                "{%",
                "%}",
                "{% if 1 %}x{% endif %}",
                "{#",
                "#}",
                "{{ company.__class__ }}",
                "<script>alert(1)</script>",
                "<SCRIPT src=x>",
                "<img onerror=x>",
                "&lt;",
                "\r\n",
                "\n",
                "\r",
                "\u2028",
                "\u2029",
                "\x85",
                "\x00",
                "\n\n",
                "Bcc: evil@example.com",
                "\r\nSubject: otro",
                "=?utf-8?q?a?=",
                "Juan Pérez",
                "ñ",
            ]
        ),
    ),
    max_size=8,
).map("".join)


def _context(name: str, subject: str, text: str) -> dict[str, Any]:
    return {
        "folio": FOLIO,
        "customer": "juan.perez@example.com",
        "customer_name": name,
        "subject": subject,
        "mailbox_address": COMPANY["email"],
        "company": COMPANY,
        "text": text,
        "agent_name": name,
    }


def _reparse(raw: bytes, to: str) -> EmailMessage:
    # As the outbox queues it, read as a receiving MTA would.
    if to.isascii():
        raw.decode("ascii")  # no SMTPUTF8 needed: pure ASCII on the wire
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _part(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None and part.get_content_type() == f"text/{subtype}"
    content = part.get_content()
    assert isinstance(content, str)
    return content


def _never_evaluated(inputs: list[str], output: str) -> None:
    if not any("49" in s for s in inputs):
        assert "49" not in output
    assert "<class" not in output and "__class__" not in output.replace(
        "{{ company.__class__ }}", ""
    )


@HEAVY
@given(
    language=st.sampled_from(["es", "en"]),
    name=HOSTILE,
    subject=HOSTILE,
    to_local=st.text(
        alphabet=st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"]),
        min_size=1,
        max_size=20,
    ),
)
@example(language="es", name="{{7*7}}", subject="<script>x</script>\u2028Bcc: a@b", to_local="a")
@example(language="es", name="", subject="", to_local="=?")  # found by a CI run
def test_acknowledgement_of_any_customer_strings(
    language: str, name: str, subject: str, to_local: str
) -> None:
    body = render_body("acknowledgement", language, _context(name, subject, ""))
    assert body.html is not None
    _never_evaluated([name, subject], body.text + body.html)
    # Autoescaped: the customer adds no "<" to the HTML (same count as plain words).
    plain = render_body(
        "acknowledgement", language, _context("x" if name else "", "x" if subject else "", "")
    )
    assert plain.html is not None
    assert body.html.count("<") == plain.html.count("<")
    assert "<script" not in body.html.lower()
    # Through build_message exactly as notices.queue_notice does.
    to = f"{to_local}@example.com".lower()
    envelope = Envelope(
        from_addr=COMPANY["email"],
        from_name=COMPANY["name"],
        to_addr=to,
        subject=tagged_subject(FOLIO, subject),
        message_id="<mc.1.abc@internet-plarey.com.mx>",
        date=NOW,
        in_reply_to=f"<{to_local}@example.com>",
        references=(f"<{to_local}@example.com>",),
        language=language,
    )
    msg = _reparse(build_message(envelope, body), to)
    expected = NOTICE_HEADERS
    if "=?" in to_local:
        # wire.identifiers leaves out an id a decoder could read as an encoded word.
        expected = [h for h in NOTICE_HEADERS if h not in ("in-reply-to", "references")]
    assert sorted(k.lower() for k in msg) == expected
    assert msg.get_all("Bcc") is None
    assert len(msg.get_all("Subject") or []) == 1
    # The customer reads exactly what was rendered (line endings aside).
    assert _normalized(_part(msg, "plain")) == _normalized(body.text)
    html = _part(msg, "html")
    assert _normalized(html) == _normalized(body.html)
    assert "<script" not in html.lower()


@HEAVY
@given(language=st.sampled_from(["es", "en"]), text=HOSTILE, agent=HOSTILE)
@example(language="es", text="{{7*7}}\n\n<script>alert(1)</script>\u2028\x00", agent="{%")
def test_relayed_text_is_data_and_escaped(language: str, text: str, agent: str) -> None:
    body = render_body("relay", language, _context(agent, "Sin internet", text))
    assert body.html is not None
    _never_evaluated([text, agent], body.text + body.html)
    assert "<script" not in body.html.lower()
    assert "<img" not in body.html.lower()
    msg = _reparse(
        build_message(
            Envelope(
                from_addr=COMPANY["email"],
                from_name=agent,
                to_addr="juan.perez@example.com",
                subject=tagged_subject(FOLIO, text),
                message_id="<mc.1.abc@internet-plarey.com.mx>",
                date=NOW,
                language=language,
            ),
            body,
        ),
        "juan.perez@example.com",
    )
    headers = {k.lower() for k in msg}
    assert headers <= set(NOTICE_HEADERS)
    assert "bcc" not in headers
    assert _normalized(_part(msg, "plain")) == _normalized(body.text)


# --- dsn --------------------------------------------------------------------------

DSN_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"Content-Type: message/delivery-status\r\n\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: text/rfc822-headers\r\n\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Final-Recipient: rfc822; juan@example.com\r\n",
        b"Original-Recipient: rfc822;\r\n",
        b"Action: failed\r\nStatus: 5.1.1\r\n",
        b"Diagnostic-Code: smtp; 550 no such user\r\n",
        b"Message-ID: <mc.1.abc@internet-plarey.com.mx>\r\n",
        b"Message-ID:\r\n <folded@x>\r\n",
        b"\r\n",
        b"\x00",
        b"=?utf-8?b?****?=",
    ]
)


ANY_DSN_BYTES = st.one_of(
    st.binary(max_size=400),
    st.lists(DSN_PIECES | st.binary(max_size=8), max_size=20).map(b"".join),
)
MSGID = re.compile(r"<[!-;=?-~]+>")


@LIGHT
@given(ANY_DSN_BYTES)
@example(b"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!")
def test_parse_dsn_never_raises_on_any_bytes(raw: bytes) -> None:
    report = parse_dsn(raw)
    assert all(MSGID.fullmatch(msgid) for msgid in report.message_ids)
    assert len(set(report.message_ids)) == len(report.message_ids)
    for recipient in report.recipients:
        assert recipient.recipient == recipient.recipient.strip().lower()
        assert "\n" not in recipient.diagnostic and len(recipient.diagnostic) <= 500


RETURNED_TYPES = [
    "message/rfc822",
    "text/rfc822-headers",
    "message/global",
    "message/global-headers",
]
ACTIONS = st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded", "Failed"])
LINE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=600
)


@st.composite
def delivery_reports(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str, str, str]], str]:
    """An RFC 3464 report: its bytes, its (recipient, action, status, diagnostic)s, the id."""
    nl = draw(st.sampled_from(["\r\n", "\n"]))
    boundary = draw(st.from_regex(r"[A-Za-z0-9'()+_,./=?]{1,40}", fullmatch=True))
    recipients = draw(
        st.lists(
            st.tuples(
                st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,15}\.mx", fullmatch=True),
                ACTIONS,
                st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
                LINE_TEXT,
            ),
            min_size=1,
            max_size=3,
        )
    )
    msgid = draw(st.from_regex(r"<mc\.[0-9]{1,6}\.[a-z0-9]{4,20}@[a-z.-]{1,30}>", fullmatch=True))
    human = draw(st.text(max_size=200))
    assume(f"--{boundary}" not in human)
    # RFC 6533 global reports may be transfer-encoded; some MTAs encode classic ones too.
    status_type = draw(st.sampled_from(["delivery-status", "global-delivery-status"]))
    encoding = draw(st.sampled_from(["", "base64", "quoted-printable"]))
    returned = draw(st.sampled_from(RETURNED_TYPES))

    fields = [f"Reporting-MTA: dns; mx.example.com{nl}"]
    for rcpt, action, status, diagnostic in recipients:
        fields.append(
            f"{nl}Final-Recipient: rfc822; {rcpt}{nl}Action: {action}{nl}"
            f"Status: {status}{nl}Diagnostic-Code: smtp; {diagnostic}{nl}"
        )
    status_part = "".join(fields).encode("utf-8")
    cte = f"Content-Transfer-Encoding: {encoding}{nl}" if encoding else ""
    # Encoded from "\n" text; the encoded lines then end like the rest of the message.
    if encoding == "base64":
        status_part = base64.encodebytes(status_part.replace(nl.encode(), b"\n"))
    elif encoding == "quoted-printable":
        status_part = quopri.encodestring(status_part.replace(nl.encode(), b"\n"))
    status_part = status_part.replace(b"\n", nl.encode()) if encoding else status_part
    head = (
        f"From: MAILER-DAEMON@mx.example.com{nl}To: contacto@internet-plarey.com.mx{nl}"
        f"Subject: Undelivered Mail Returned to Sender{nl}MIME-Version: 1.0{nl}"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"'
        f"{nl}{nl}--{boundary}{nl}Content-Type: text/plain; charset=utf-8{nl}{nl}{human}{nl}"
        f"--{boundary}{nl}Content-Type: message/{status_type}{nl}{cte}{nl}"
    ).encode()
    tail = (
        f"{nl}--{boundary}{nl}Content-Type: {returned}{nl}{nl}"
        f"From: contacto@internet-plarey.com.mx{nl}Message-ID: {msgid}{nl}"
        f"Subject: [Folio PLR-2026-000001] Sin internet{nl}{nl}--{boundary}--{nl}"
    ).encode()
    return head + status_part + tail, recipients, msgid


@HEAVY
@given(delivery_reports())
def test_parse_dsn_reads_every_failed_or_delayed_recipient_and_the_returned_id(
    generated: tuple[bytes, list[tuple[str, str, str, str]], str],
) -> None:
    raw, recipients, msgid = generated
    report = parse_dsn(raw)
    assert report.message_ids == (msgid,)
    # .recipients: failed or delayed (only a failure marks a notice failed: .is_failure)
    failed = [r for r in recipients if r[1].lower() in ("failed", "delayed")]
    assert [(r.recipient, r.status) for r in report.recipients] == [
        (rcpt, status) for rcpt, _, status, _ in failed
    ]
    for found, (_, _, _, diagnostic) in zip(report.recipients, failed, strict=True):
        assert "\n" not in found.diagnostic and len(found.diagnostic) <= 500
        if diagnostic.isascii():
            assert found.diagnostic == " ".join(f"smtp; {diagnostic}".split())[:500]
