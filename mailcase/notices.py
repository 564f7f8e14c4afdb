"""Queue notices: render a template, build the message, write the outbox row and the
case's record of it, all in the caller's transaction.

Who gets what (the kinds):

* to the customer, from the case's mailbox: ``acknowledgement``, ``relay``
  (an agent's words), ``resolution_valid``/``resolution_invalid``, ``visit``,
  ``closed_no_answer`` (a case closed when its wait for the customer passed),
  ``outage_joined`` (their report is one of an outage's, followed in a main case);
* to agents (``agents.notify``, an area, or one agent): ``agent_notification``,
  ``command_error``, ``unverified_agent``, ``delivery_failed``, ``not_relayed``
  (an agent's reply that reached the customer without its attachments, or
  not at all), ``reminder`` (a customer waiting for an answer,
  :mod:`mailcase.reminders`), ``assigned`` (to an agent made a case's owner by
  someone else).

Every notice to agents carries a Message-ID signed for its case
(:mod:`mailcase.msgid`), so an agent's reply to it proves which case it
answers; customer notices carry unsigned ids (a customer must hold no proof).
Customer notices thread to the customer's latest message; agent notices set
Reply-To to the case's mailbox, so an agent's reply comes back to mailcase.

Loop and flood guards (:func:`blocked`) decide here, before anything is
queued: a notice that must not go out is kept as ``suppressed`` with why.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailcase import metrics
from mailcase.classify import is_automatic_address
from mailcase.commands import COMMAND_FORMS
from mailcase.config import Settings
from mailcase.folio import (
    clip,
    echoable_subject,
    format_folio,
    has_link,
    new_message_id,
    tagged_subject,
)
from mailcase.logs import get_logger
from mailcase.models import Case, CaseMessage, KeyValue, Notice, NoticeStatus
from mailcase.msgid import signed_message_id
from mailcase.prepared import Prepared
from mailcase.render import Envelope, build_message, one_line, render_body
from mailcase.replies import reply_names
from mailcase.store import insert_values, run, table, utcnow
from mailcase.wire import FileAttachment, ascii_domain

CUSTOMER_KINDS = frozenset(
    {"acknowledgement", "relay", "resolution_valid", "resolution_invalid"}
    | {"visit", "visit_cancelled", "merged", "closed_no_answer", "outage_joined"}
)
# The customer-facing notices that answer the customer: not the automatic
# acknowledgement, nor "merged" (it tells the customer of a duplicate the folio that
# follows it, nothing about the matter), nor "closed_no_answer" (automatic: the case
# closed because the customer did not answer), nor "outage_joined" (the same words to
# every customer of an outage: the answer is the resolution that follows). One rule for
# `mailcase report`'s first answer (mailcase.reporting) and for reminders
# (mailcase.reminders).
ANSWER_KINDS = tuple(
    sorted(CUSTOMER_KINDS - {"acknowledgement", "merged", "closed_no_answer", "outage_joined"})
)
# Held by a loop guard (suppressed) or refused by the server (failed): never reached the
# customer, so no answer. A queued one is on its way (delivery follows within seconds).
ANSWERED_STATUSES = (NoticeStatus.QUEUED.value, NoticeStatus.SENT.value)
AGENT_KINDS = frozenset(
    {"agent_notification", "command_error", "unverified_agent", "delivery_failed", "not_relayed"}
    | {"no_case", "quarantined", "reminder", "assigned"}
)
SIGNING_KEY = "message_id_key"


def signing_key(session: Session, settings: Settings) -> bytes:
    """The key of the Message-IDs of notices to agents (:mod:`mailcase.msgid`).

    ``agents.signing_secret`` (or its file or systemd credential) when set,
    read once per process; otherwise a random key created once and kept in the
    database, so that every instance sharing it signs and verifies alike.
    Changing the secret invalidates the ids of notices already sent: agents
    answering those are then believed only on a DKIM/SPF pass.
    """
    agents = settings.agents
    source = agents.signing_secret_file or agents.signing_secret_credential
    if source is None:
        configured = agents.resolved_signing_secret()  # inline, or unset: nothing to read
    else:
        if str(source) not in _CONFIGURED:
            _CONFIGURED[str(source)] = agents.resolved_signing_secret()
        configured = _CONFIGURED[str(source)]
    if configured is not None:
        return configured
    url = str(session.get_bind().engine.url)
    cached = _KEYS.get(url)
    if cached is not None:
        return cached
    row = session.get(KeyValue, SIGNING_KEY)
    if row is None:
        candidate = KeyValue(key=SIGNING_KEY, value=secrets.token_hex(32))
        try:
            with session.begin_nested():  # a savepoint: losing the race must not spoil the rest
                session.add(candidate)
        except IntegrityError:
            # Another instance created it first (and committed): use that one.
            row = session.get(KeyValue, SIGNING_KEY, populate_existing=True)
            if row is None:
                raise
        else:
            return bytes.fromhex(candidate.value)  # cached once its transaction committed
    _KEYS[url] = bytes.fromhex(row.value)
    return _KEYS[url]


_CONFIGURED: dict[str, bytes | None] = {}  # secret files and credentials, read once


_KEYS: dict[str, bytes] = {}  # the key never changes once created: one read per process


_TOTAL_CAP = "limits.max_notices_per_hour"  # how blocked()'s reason for the total cap starts


# Loop breakers: kinds capped per case and hour, each counted on its own, and the
# [limits] key of their cap (answers to our answers to an agent count too).
_PER_CASE_CAPS = {
    "agent_notification": "max_agent_notices_per_case_per_hour",
    "not_relayed": "max_agent_notices_per_case_per_hour",
    "assigned": "max_agent_notices_per_case_per_hour",
    "command_error": "max_agent_notices_per_case_per_hour",
    "relay": "max_relays_per_case_per_hour",
}


# Kinds capped per recipient and hour, whatever the case: what a stranger's mail
# can make us send to an agent (a claim to their address, a forged "no case"
# mail), and a flood of broken mail (spam, a loop) told to agents.notify.
_PER_ADDRESS_CAPS = {"unverified_agent": 1, "no_case": 1, "quarantined": 10}


def blocked(
    session: Session, settings: Settings, kind: str, rcpt: str, case_id: int | None = None
) -> str:
    """Why a ``kind`` notice to ``rcpt`` about case ``case_id`` must not go out now; "" if it may.

    Never to our own mailboxes or automatic addresses (MAILER-DAEMON,
    noreply…); customer notices never to agents.notify or an area either.
    Acknowledgements are capped per recipient and hour; agent notifications
    and relays per case and hour (loop breakers); the notice telling an agent
    that a message claimed their address, or that their mail named no case,
    goes once per address and hour; the notices of quarantined mail ten an
    hour; and
    all notices per hour when ``limits.max_notices_per_hour`` is set.
    """
    mailboxes = {m.address for m in settings.mailboxes.values()}
    if rcpt in mailboxes or is_automatic_address(rcpt):
        return "recipient is one of our mailboxes or an automatic address"
    if kind in CUSTOMER_KINDS and rcpt in settings.own_addresses:
        return "recipient is one of our own addresses"
    since = utcnow() - timedelta(hours=1)
    limits = settings.limits
    if kind == "acknowledgement":
        sent = run(session, _ACKS_SINCE, {"rcpt": rcpt, "since": since}).scalar_one()
        if sent >= limits.max_acks_per_sender_per_hour:
            return f"limits.max_acks_per_sender_per_hour ({limits.max_acks_per_sender_per_hour})"
    key = _PER_CASE_CAPS.get(kind)
    if key is not None and case_id is not None:
        cap = getattr(limits, key)
        # Per recipient: a routed case's updates go to the general list and to
        # the area, and must not use up each other's allowance.
        params = {"case": case_id, "kind": kind, "rcpt": rcpt, "since": since}
        if run(session, _CASE_KIND_SINCE, params).scalar_one() >= cap:
            return f"limits.{key} ({cap})"
    per_address = _PER_ADDRESS_CAPS.get(kind)
    if per_address is not None:
        params = {"rcpt": rcpt, "kind": kind, "since": since}
        if run(session, _TO_KIND_SINCE, params).scalar_one() >= per_address:
            if per_address == 1:
                return f"one {kind} notice per address and hour"
            return f"{per_address} {kind} notices per hour"
    if limits.max_notices_per_hour is not None:
        total = run(session, _NOTICES_SINCE, {"since": since}).scalar_one()
        if total >= limits.max_notices_per_hour:
            return f"{_TOTAL_CAP} ({limits.max_notices_per_hour})"
    return ""


_NOTICES = table(Notice)
_COUNTED = sa.and_(
    _NOTICES.c.status != NoticeStatus.SUPPRESSED,
    _NOTICES.c.created_at >= sa.bindparam("since"),
)
_COUNT_SINCE = sa.select(sa.func.count()).select_from(_NOTICES).where(_COUNTED)
_NOTICES_SINCE = Prepared(_COUNT_SINCE)
_ACKS_SINCE = Prepared(
    _COUNT_SINCE.where(
        _NOTICES.c.rcpt_to == sa.bindparam("rcpt"), _NOTICES.c.kind == "acknowledgement"
    )
)
_CASE_KIND_SINCE = Prepared(
    _COUNT_SINCE.where(
        _NOTICES.c.case_id == sa.bindparam("case"),
        _NOTICES.c.kind == sa.bindparam("kind"),
        _NOTICES.c.rcpt_to == sa.bindparam("rcpt"),
    )
)
_TO_KIND_SINCE = Prepared(
    _COUNT_SINCE.where(
        _NOTICES.c.rcpt_to == sa.bindparam("rcpt"), _NOTICES.c.kind == sa.bindparam("kind")
    )
)


_SUPPRESSED_SINCE = (
    sa.select(_NOTICES.c.id)
    .where(
        _NOTICES.c.status == NoticeStatus.SUPPRESSED,
        _NOTICES.c.created_at >= sa.bindparam("since"),
        _NOTICES.c.last_error == sa.bindparam("error"),
    )
    .limit(1)
)
_SUPPRESSED_TO_SINCE = Prepared(_SUPPRESSED_SINCE.where(_NOTICES.c.rcpt_to == sa.bindparam("rcpt")))
_SUPPRESSED_ANY_SINCE = Prepared(_SUPPRESSED_SINCE)


def _log_suppression(session: Session, rcpt: str, reason: str) -> None:
    """Log ``notices_suppressed`` for a notice about to be stored as suppressed, once an hour.

    Once: not when a notice suppressed for the same reason was stored in the last
    hour, so a flood is logged as it starts and again after a quiet hour. The total
    cap (``limits.max_notices_per_hour``) is one event for all recipients, not one
    per customer of the flood; every other reason (a recipient's acknowledgement
    cap, a loop guard) is one event per recipient.
    """
    # last_error as queue_notice stores it; equality keeps the query on the
    # indexed status and created_at, stopping at the first match.
    params = {"since": utcnow() - timedelta(hours=1), "error": f"not sent: {reason}"}
    if reason.startswith(_TOTAL_CAP):
        if run(session, _SUPPRESSED_ANY_SINCE, params).first() is None:
            get_logger().warning("notices_suppressed", recipient="*", reason=reason)
        return
    if run(session, _SUPPRESSED_TO_SINCE, params | {"rcpt": rcpt}).first() is None:
        get_logger().warning("notices_suppressed", recipient=rcpt, reason=reason)


def agent_thread(session: Session, case: Case) -> tuple[str | None, tuple[str, ...]]:
    """(In-Reply-To, References) for a notification to the agents: their earlier ones.

    The case's earlier ``agent_notification`` notices, the latest ten, so that
    the agents' mail clients show a case's updates as one conversation. Their
    ids are signed, which is fine here: these notices go to agents only.
    """
    ids = tuple(
        mid
        for mid in session.exec(
            select(Notice.message_id)
            .where(Notice.case_id == case.id, Notice.kind == "agent_notification")
            .order_by(col(Notice.id).desc())
            .limit(10)
        ).all()
        if mid
    )[::-1]
    return (ids[-1] if ids else None), ids


def customer_thread(session: Session, case: Case) -> tuple[str | None, tuple[str, ...]]:
    """(In-Reply-To, References) for a notice to the customer: the thread of the case.

    Only what the customer has seen: their own messages and the notices sent to
    them. Agents' messages and notices to agents stay out (a signed id is an
    agent's proof, see :func:`_message_id`).
    """
    ids = [
        mid
        for mid in session.exec(
            select(CaseMessage.message_id)
            .outerjoin(Notice, col(Notice.id) == col(CaseMessage.notice_id))
            .where(
                CaseMessage.case_id == case.id,
                col(CaseMessage.message_id).is_not(None),
                sa.or_(
                    col(CaseMessage.kind) == "customer",
                    sa.and_(
                        col(CaseMessage.kind) == "notice", col(Notice.kind).in_(CUSTOMER_KINDS)
                    ),
                ),
            )
            .order_by(col(CaseMessage.id))
        ).all()
        if mid
    ]
    last_customer = session.exec(
        select(CaseMessage.message_id)
        .where(
            CaseMessage.case_id == case.id,
            CaseMessage.kind == "customer",
            col(CaseMessage.message_id).is_not(None),
        )
        .order_by(col(CaseMessage.id).desc())
    ).first()
    return last_customer, tuple(ids[-10:])


_AGENT_SUBJECT_CHARS = 300


def base_context(settings: Settings, case: Case, *, to_agents: bool = False) -> dict[str, Any]:
    """What every template may use. ``to_agents``: the subject as written (clipped);
    otherwise as a stranger's text may be repeated (:func:`echoable_subject`)."""
    box = settings.mailboxes.get(case.mailbox)
    return {
        "folio": case.folio,
        "customer": case.customer,
        # Agents are not a stranger's backscatter target: they see the name and the
        # subject as written (a subject up to a screen line and a half; the case keeps
        # it whole), where a customer's notice repeats only what cannot carry a link.
        "customer_name": case.customer_name if to_agents else echoable_name(case.customer_name),
        "subject": clip(case.subject, _AGENT_SUBJECT_CHARS)
        if to_agents
        else echoable_subject(case.subject),
        "mailbox": case.mailbox,
        "mailbox_address": box.address if box else "",
        "company": settings.company.model_dump(),
        "commands": list(COMMAND_FORMS),
        "reopen_days": settings.cases.reopen_days,
        "area": case.area or "",
        "channel": case.channel,  # how the report came: mail, phone, web or visit
        "area_name": _area_name(settings, case.area),
        # What agents may write after #area: each key, with its name when it has one.
        "areas": [_area_name(settings, key, with_key=True) for key in sorted(settings.areas)],
        "area_keys": sorted(settings.areas),
        # What agents may write after #respuesta: the canned replies' names.
        "replies": list(reply_names(settings.templates.directory)),
    }


def sample_context(settings: Settings, language: str, *, phone: bool = False) -> dict[str, Any]:
    """:func:`base_context` of a made-up case in ``language`` (folio 123 of this year, from
    the first mailbox, by a customer named Juan Pérez): what ``mailcase replies show``
    and ``mailcase check`` render a canned reply with, as a customer's case would.
    ``phone``: a case taken by phone, with neither a customer name nor a mail address
    (what a template must also survive: ``customer_name.split()[0]`` does not)."""
    now = utcnow()
    case = Case(
        folio=format_folio(settings.folio.prefix, now.year, 123),
        customer="" if phone else "juan.perez@example.com",
        customer_name="" if phone else "Juan Pérez",
        subject="Sin servicio de internet" if language == "es" else "No internet service",
        mailbox=next(iter(settings.mailboxes)),
        language=language,
        channel="phone" if phone else "mail",
        created_at=now,
        updated_at=now,
    )
    return base_context(settings, case)


def _area_name(settings: Settings, key: str | None, *, with_key: bool = False) -> str:
    """How people see area ``key``: its configured name ("redes (Redes y nodos)")."""
    if not key:
        return ""
    area = settings.areas.get(key)
    name = area.name if area is not None else ""
    if not name or name == key:
        return key
    return f"{key} ({name})" if with_key else name


_NAME_ECHO_CHARS = 60
_NOT_A_NAME = ("@", "/", "http")


def echoable_name(name: str) -> str:
    """The sender's display name if our notices may greet them by it, else "".

    A name is whatever the sender wrote: "Felicidades! cobre su premio en
    http://…" would be repeated to whoever the From names. A long name, or one
    with a link, a domain ("bit.ly", "premios.com"), an address or a slash in
    it, is left out (the greeting then has no name).
    """
    lowered = name.lower()
    if (
        len(name) > _NAME_ECHO_CHARS
        or any(mark in lowered for mark in _NOT_A_NAME)
        or has_link(name)
    ):
        return ""
    return name


def mailbox_address(settings: Settings, case: Case) -> str:
    box = settings.mailboxes.get(case.mailbox) or next(iter(settings.mailboxes.values()))
    return box.address


def _message_id(
    session: Session, settings: Settings, case_id: int, sender: str, customer_facing: bool
) -> str:
    """A new Message-ID for a notice; signed only when it goes to agents.

    A signed id is an agent's proof (:mod:`mailcase.msgid`), so it never goes
    to a customer: the customer would hold the proof of its own case. Customer
    notices get an unsigned random id that still threads replies (by lookup).
    """
    domain = sender.rpartition("@")[2] or "localhost"
    if customer_facing:
        return new_message_id(domain)
    return signed_message_id(signing_key(session, settings), case_id, domain)


@dataclass(frozen=True, slots=True)
class Queued:
    """A notice written to the outbox: its id, and why a guard held it ("" when queued)."""

    id: int
    held: str


def queue_notice(
    session: Session,
    settings: Settings,
    case: Case,
    kind: str,
    *,
    to: str,
    context: Mapping[str, Any] | None = None,
    subject: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    new_case: bool = False,
    attachments: Sequence[FileAttachment] = (),
    about: int | None = None,
) -> Queued:
    """Render and queue one ``kind`` notice about ``case`` to ``to``; record it on the case.

    Returns the notice's id and why a guard held it ("" when queued). The
    notice is written even when held (status ``suppressed``), so the case
    shows what was not sent and why.
    ``new_case``: the case was opened in this transaction, so it has no notices
    to count against the per-case caps (one query fewer per new case).
    ``attachments`` are sent after the text (they are already on the case).
    ``about``: the case message the notice tells of (``notices.about_message_id``).
    """
    assert case.id is not None
    to = ascii_domain(to)
    sender = mailbox_address(settings, case)
    to_agents = kind in AGENT_KINDS
    full_context = base_context(settings, case, to_agents=to_agents) | dict(context or {})
    body = render_body(kind, case.language, full_context, override=settings.templates.directory)
    customer_facing = kind in CUSTOMER_KINDS
    if customer_facing and in_reply_to is None and not references:
        in_reply_to, references = customer_thread(session, case)
    elif kind == "agent_notification" and not new_case and in_reply_to is None:
        # Without them Thunderbird (which threads by references only) showed
        # every update of a case as a conversation of its own.
        in_reply_to, references = agent_thread(session, case)
    elif to_agents and not new_case:
        # A side notice (a command error, a bounce, "not relayed") in the case's
        # conversation too, after the agent's own message it answers, if any.
        parent, thread = agent_thread(session, case)
        in_reply_to = in_reply_to or parent
        references = tuple(dict.fromkeys([*thread, *references, *filter(None, [in_reply_to])]))
    now = utcnow()
    envelope = Envelope(
        from_addr=sender,
        from_name=settings.company.name,
        to_addr=to,
        subject=subject or tagged_subject(case.folio, case.subject, mask=not to_agents),
        message_id=_message_id(session, settings, case.id, sender, customer_facing),
        date=now,
        in_reply_to=in_reply_to,
        references=references,
        language=case.language,
        # Notices to the customer are automatic replies (RFC 3834); relayed
        # words of an agent are a person's answer, but still must not
        # trigger vacation responders.
        auto_reply=True,
        reply_to=None if customer_facing else sender,
    )
    reason = blocked(session, settings, kind, to, None if new_case else case.id)
    # A held notice is kept to show what was not sent, without the files: a
    # customer's photos, attached to every notice a loop breaker holds, would
    # fill the database with copies nobody receives.
    message = build_message(envelope, body, () if reason else attachments)
    if reason:
        _log_suppression(session, to, reason)
        # Counted here: a held notice never reaches delivery, where the rest are
        # counted. (A transaction rolled back after this overcounts by one.)
        metrics.NOTICES.labels("suppressed").inc()
    # Rows without objects (insert_values): building the two SQLModel objects
    # cost as much as their INSERTs (py-spy).
    notice_id = insert_values(
        session,
        Notice,
        case_id=case.id,
        kind=kind,
        status=NoticeStatus.SUPPRESSED if reason else NoticeStatus.QUEUED,
        last_error=f"not sent: {reason}" if reason else "",
        # The mailbox is the envelope sender so that bounces of our notices come
        # back to a mailbox we read (and are classified as bounces, never answered).
        mail_from=sender,
        rcpt_to=to,
        message_id=envelope.message_id,
        raw=message,
        queued_at=now,
        next_attempt_at=now,
        created_at=now,
        about_message_id=about,
    )
    insert_values(
        session,
        CaseMessage,
        case_id=case.id,
        direction="out",
        kind="notice",
        from_addr=sender,
        to_addrs=to,
        subject=one_line(envelope.subject),
        date=now,
        message_id=envelope.message_id,
        text=body.text,
        notice_id=notice_id,
    )
    return Queued(notice_id, reason)


def queue_without_case(
    session: Session,
    settings: Settings,
    kind: str,
    *,
    to: str,
    mailbox: str,
    subject: str,
    context: Mapping[str, Any] | None = None,
) -> Queued:
    """Render and queue one ``kind`` notice to agents about mail that belongs to no
    case (``no_case``: an agent's; ``quarantined``: anyone's, that could not be
    processed): from ``mailbox``'s address, about that mail's ``subject``.

    Guarded as :func:`queue_notice` is (written ``suppressed`` when held); its
    Message-ID is unsigned, so a reply to it is no agent's proof for any case.
    """
    box = settings.mailboxes.get(mailbox) or next(iter(settings.mailboxes.values()))
    language = settings.language_of(mailbox)
    # An unverified sender (a forged agent's From), or a stranger whose mail was
    # quarantined, chose this subject: repeated as a stranger's is, so that the
    # support address carries no link of theirs.
    stranger = bool((context or {}).get("unverified")) or kind == "quarantined"
    full_context = {
        "subject": echoable_subject(subject) if stranger else clip(subject),
        "mailbox_address": box.address,
        "company": settings.company.model_dump(),
        **(context or {}),
    }
    body = render_body(kind, language, full_context, override=settings.templates.directory)
    now = utcnow()
    envelope = Envelope(
        from_addr=box.address,
        from_name=settings.company.name,
        to_addr=ascii_domain(to),
        subject=_CASELESS_SUBJECTS[kind][language].format(**full_context),
        message_id=new_message_id(box.address.rpartition("@")[2] or "localhost"),
        date=now,
        language=language,
        auto_reply=True,
        reply_to=box.address,
    )
    reason = blocked(session, settings, kind, envelope.to_addr)
    if reason:
        _log_suppression(session, envelope.to_addr, reason)
        metrics.NOTICES.labels("suppressed").inc()
    notice_id = insert_values(
        session,
        Notice,
        case_id=None,
        kind=kind,
        status=NoticeStatus.SUPPRESSED if reason else NoticeStatus.QUEUED,
        last_error=f"not sent: {reason}" if reason else "",
        mail_from=box.address,
        rcpt_to=envelope.to_addr,
        message_id=envelope.message_id,
        raw=build_message(envelope, body),
        queued_at=now,
        next_attempt_at=now,
        created_at=now,
    )
    return Queued(notice_id, reason)


_CASELESS_SUBJECTS = {
    "no_case": {
        "es": "Su correo no nombra ningún caso",
        "en": "Your mail names no case",
    },
    "quarantined": {
        "es": "Correo en cuarentena: «{subject}»",
        "en": 'Mail quarantined: "{subject}"',
    },
}
