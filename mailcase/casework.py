"""What can happen to a case, in the caller's transaction: the one place for each change.

Mail commands from agents (``#resolver``, ``#nota``, …), the CLI (``mailcase
cases resolve`` …) and the pipeline all call these, so a case changes the same
way whichever door the change came through. Each function records what
happened on the case and queues the notices the written procedure asks for.

Merging two cases (mailcase.merging), the outages (mailcase.outages), the waits
for the customer with the closing of stale cases (mailcase.waits) and booking or
calling off a home visit (mailcase.visits) are modules of their own, built on this
one: it imports none of them. A resolution and a closing cancel a visit still ahead
here (:func:`cancel_visit_if_ahead`), by the dates' rules of mailcase.visitdates,
which this module builds on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa
from sqlmodel import Session, col, select

from mailcase.blobs import BlobStore
from mailcase.commands import PENDING_MAX_DAYS, Command, CommandKind
from mailcase.config import Settings
from mailcase.errors import MailcaseError
from mailcase.folio import clip, format_folio, has_link
from mailcase.models import (
    Case,
    CaseLink,
    CaseMessage,
    CaseStatus,
    CaseType,
    Notice,
    NoticeStatus,
    Participant,
    StoredAttachment,
)
from mailcase.notices import queue_notice
from mailcase.prepared import Prepared
from mailcase.store import (
    as_utc,
    case_by_folio,
    insert_row,
    next_folio_number,
    run,
    table,
    utcnow,
)
from mailcase.visitdates import (
    VISIT_MAX_DAYS_AHEAD,
    visit_ahead,
    visit_cancellable,
    visit_problem,
    visit_text,
)
from mailcase.wire import FileAttachment

OUTCOMES = ("valid", "invalid")


# The customer of a case whose personal data was erased (``mailcase customers forget``,
# mailcase.erasure). RFC 2606 reserves .invalid: no mailbox there can exist, so no mail
# comes from it and no notice reaches it (mailcase.classify: an automatic address).
FORGOTTEN = "forgotten@invalid"


def is_erased(case: Case) -> bool:
    """Whether ``case``'s customer data was erased: it joins no mail any more."""
    return case.customer == FORGOTTEN


class CaseworkError(MailcaseError):
    """A requested change does not apply to this case (e.g. an unknown area)."""


# Why a change is refused, as short codes: the command line says it in a
# sentence (CaseworkError), a reply by mail gets it back in a command_error
# notice (templates/*/command_error.txt.j2).
CASE_PROBLEM_CODES: tuple[str, ...] = (
    "case_closed",  # resolve, visit or route on a closed case: reopen it first
    "case_resolved",  # resolve, visit or route on a resolved case: reopen it first
    "missing_cause",  # a resolution without the causes the customer must be told
    "visit_in_past",  # a visit before now, in the business's time zone
    "visit_too_far",  # more than VISIT_MAX_DAYS_AHEAD ahead: the year mistyped, most likely
    "visit_hours",  # a visit time outside VISIT_HOURS ("4:30" meant 16:30, most likely)
    "repeated",  # the same command twice in one reply
    "conflict",  # #cerrar with #reabrir, or #nota with #resolver, in one reply
    "after_close",  # resolve, visit or route below this reply's own #cerrar
    "after_resolve",  # route (or a visit's cancel) below this reply's own #resolver
    # #cerrar below this reply's own "#masivo FOLIO": the customer is told they will hear
    # when the failure is corrected, and the main case's resolution skips closed reports.
    "close_after_join",
    "settles_visit",  # #visita with #resolver or #cerrar in one reply: they would cancel it
    "no_visit",  # "#visita cancelar" on a case with no visit still ahead
    "merge_alone",  # #fusionar with a command other than #nota in one reply
    "same_case",  # #fusionar naming the case's own folio
    "other_customer",  # #fusionar into another customer's case
    "into_closed",  # #fusionar into a closed case: reopen it first
    "into_resolved",  # #fusionar into a resolved case: reopen it first
    "merge_visit",  # #fusionar of a case with a home visit ahead
    # #fusionar of a case marked spam: its sender's block would outlive any undo.
    "merge_spam",
    # #pendiente with #resolver, #cerrar, #nota, #fusionar or #visita in one reply: the
    # case would wait on the customer and be settled, or the text be both relayed and a
    # note, or a visit (the company owes the next step) be booked on a case said to wait.
    "pending_conflict",
    # #pendiente on a case with a home visit ahead: the next step is ours (the visit), and
    # the wait's end would cancel it and tell the customer they did not answer.
    "pending_visit",
    # #pendiente on a report of an outage whose main case is open: its next step is the
    # repair, and the wait's end would close it "no answer" mid-outage, leaving it out of
    # the resolution that tells its customer the failure was corrected.
    "pending_outage",
    # #pendiente on the main case of an outage with open reports: its wait's end would
    # close it "no answer" mid-outage, and nothing would then resolve its reports.
    "pending_main",
    # #masivo naming the case's own folio, a main case that is itself a report of an
    # outage (no chains), on a case that is the main case of an outage, or naming a main
    # case that is closed or resolved (reopen it first).
    "outage_same_case",
    "outage_chain",
    "outage_main",
    "outage_closed",
    "outage_resolved",
    # #fusionar of two cases whose outages differ (a report of each, or a main case and
    # a report): the merged one's link or reports could not follow it.
    "merge_outage",
    # "#masivo aviso" on a case that is no main case of an outage (no reports to tell).
    "outage_not_main",
    # "#masivo aviso" with #nota, #resolver or #cerrar in one reply: its text is relayed
    # to every customer of the outage, and would also be a note, or the causes.
    "update_conflict",
    # #respuesta with #nota, #resolver, #cerrar, #fusionar or #visita in one reply: the
    # canned reply is relayed as a plain reply is, and those commands keep the text as a
    # note, send the customer their own notice, or move the case (REPLY_CONFLICTS). Nor
    # with "#masivo aviso": rendered for this case, it would tell every report's customer
    # this case's folio and customer's name.
    "reply_conflict",
    # #spam with a command other than #nota in one reply: the case is set aside, and a
    # change beside it would be made on a case nobody works any more.
    "spam_alone",
    # #spam on a case the customer's mail did not open (a phone, web or visit case): there
    # is no sender to set aside, and a person called or came.
    "spam_channel",
    # #spam on a report of an outage (take it out first: #masivo no), or on the main case
    # of one (its reports are customers' own: no spam).
    "spam_outage",
    "spam_main",
    # #reabrir (cases reopen) on a case marked spam: "#spam no" first, in another reply.
    "reopen_spam",
)


def resolve_problem(status: str, cause: str) -> str | None:
    """Why a case in ``status`` cannot be resolved with ``cause``, or ``None``.

    A closed case is reopened first (as Request Tracker and Zammad ask), so
    that a late resolution is a decision, not a slip; a resolved one too:
    two agents resolving one case told the customer "procedente, la falla
    quedó corregida" and then "improcedente" (Request Tracker's resolve
    notice fires only on the change to resolved). A correction is
    ``#reabrir`` then ``#resolver``. The written procedure tells the customer
    the causes, so they are required.
    """
    if status == CaseStatus.CLOSED:
        return "case_closed"
    if status == CaseStatus.RESOLVED:
        return "case_resolved"
    if not cause.strip():
        return "missing_cause"
    return None


def route_problem(status: str) -> str | None:
    """Why a case in ``status`` cannot be routed to an area, or ``None``: a closed or
    resolved case is reopened first (the area would be told of a settled case)."""
    if status == CaseStatus.CLOSED:
        return "case_closed"
    return "case_resolved" if status == CaseStatus.RESOLVED else None


def command_problems(
    commands: Sequence[Command],
    text: str,
    status: str,
    now_local: datetime,
    *,
    visit_ahead: bool = False,
    outage_open: bool = False,
    reports_open: bool = False,
    spam: bool = False,
) -> list[tuple[str, str]]:
    """``(line, code)`` for each command of one reply that cannot run; ``[]`` when all can.

    The commands are checked in order, each against the case as the ones
    before it leave it (``#reabrir`` then ``#resolver`` on a closed case is
    fine). One reply holds each command once; ``#cerrar`` with ``#reabrir``
    contradict each other, and so do ``#nota`` and ``#resolver``: the text
    below the commands would be both an internal note and the causes sent to
    the customer. A visit booked with ``#resolver`` or ``#cerrar`` in one
    reply, in either order, would tell the customer of a visit and of its
    cancellation at once (``settles_visit``); ``#area`` below the reply's own
    ``#resolver`` is out of order (``after_resolve``: the agent is told to
    write it above, not to reopen a case nobody resolved yet). ``#fusionar``
    goes alone, or with ``#nota`` (``merge_alone``); ``#masivo FOLIO`` joins an open case
    only (``#masivo no``: any status), with no ``#cerrar`` below it (``close_after_join``:
    its customer was just told they will hear of the repair), and ``#masivo aviso`` goes
    with no ``#nota``, ``#resolver`` nor ``#cerrar`` (``update_conflict``); ``#pendiente``
    goes with none of :data:`PENDING_CONFLICTS` (``pending_conflict``), and only on an
    open case (after this reply's ``#reabrir``, say) with no home visit ahead
    (``pending_visit``), on no
    report of an outage whose main case is open (``outage_open``: ``pending_outage``),
    nor on the main case of an outage with open reports (``reports_open``: ``pending_main``);
    ``#respuesta`` goes with none of :data:`REPLY_CONFLICTS` nor ``#masivo aviso``
    (``reply_conflict``); ``#spam`` goes alone, or with ``#nota`` (``spam_alone``), and
    ``#reabrir`` not on a case marked spam (``spam``: ``reopen_spam``); and
    once (``repeated``: one canned reply per reply, its text below the agent's). Whether
    ``#fusionar``'s folio can be merged into is the service's to check
    (:func:`mailcase.merging.merge_problem`). ``text`` is the reply's words below the commands;
    ``visit_ahead``: the case has a home visit still ahead, which ``#visita cancelar``
    needs.
    """
    problems: list[tuple[str, str]] = []
    seen: set[CommandKind] = set()
    booked = False  # a visit scheduled by this reply
    asking = False  # a "#pendiente" (not "#pendiente no") seen in this reply
    updating = False  # a "#masivo aviso" seen in this reply
    replying = False  # a "#respuesta" seen in this reply
    joined = False  # a "#masivo FOLIO" (not "no" nor "aviso") seen in this reply
    # "#fusionar" moves the case and its history: another change in the same reply
    # would land on a case that is then closed, or read as meant for the other.
    alongside_merge = {c.kind for c in commands} - _GOES_WITH_MERGE
    # "#spam" sets the case aside: it goes alone too, or with "#nota" (why it is spam).
    alongside_spam = {c.kind for c in commands} - _GOES_WITH_SPAM
    opposite = {
        CommandKind.CLOSE: CommandKind.REOPEN,
        CommandKind.REOPEN: CommandKind.CLOSE,
        CommandKind.NOTE: CommandKind.RESOLVE,
        CommandKind.RESOLVE: CommandKind.NOTE,
    }
    for command in commands:
        kind = command.kind
        problem: str | None = None
        # "#masivo FOLIO" joins an open case only; "#masivo no" is bookkeeping, any status.
        joins = kind is CommandKind.OUTAGE and not command.stop
        needs_open = kind in _NEEDS_OPEN or joins
        news = kind is CommandKind.OUTAGE and command.update
        if kind in seen:
            problem = "repeated"
        elif kind is CommandKind.MERGE and alongside_merge:
            problem = "merge_alone"
        elif kind is CommandKind.SPAM and alongside_spam:
            problem = "spam_alone"
        elif kind is CommandKind.REOPEN and spam:
            problem = "reopen_spam"
        elif (kind is CommandKind.PENDING and not command.stop and seen & PENDING_CONFLICTS) or (
            kind in PENDING_CONFLICTS and asking
        ):
            problem = "pending_conflict"
        elif (news and seen & _UPDATE_CONFLICTS) or (kind in _UPDATE_CONFLICTS and updating):
            problem = "update_conflict"
        elif (
            (kind is CommandKind.REPLY and (seen & REPLY_CONFLICTS or updating))
            or (kind in REPLY_CONFLICTS and replying)
            # A canned reply is rendered for this case (its folio, its customer's name):
            # relayed by "#masivo aviso" it would reach every report's customer with them.
            or (news and replying)
        ):
            problem = "reply_conflict"
        elif opposite.get(kind) in seen:
            problem = "conflict"
        elif (booked and kind in _SETTLES) or (
            kind is CommandKind.VISIT and not command.cancel and seen & _SETTLES
        ):
            problem = "settles_visit"
        elif kind is CommandKind.CLOSE and joined:
            # The join tells the customer they will hear when the failure is corrected;
            # closed, the report is skipped by the main case's resolution: never told.
            problem = "close_after_join"
        elif CommandKind.CLOSE in seen and needs_open:
            # "#cerrar" then "#resolver" in one reply: the case is not closed, the
            # order is wrong; "write #reabrir first" would only make a conflict.
            problem = "after_close"
        elif CommandKind.RESOLVE in seen and needs_open:
            problem = "after_resolve"
        elif kind is CommandKind.RESOLVE:
            problem = resolve_problem(status, text)
        elif kind is CommandKind.VISIT and command.cancel:
            problem = (
                "case_closed"
                if status == CaseStatus.CLOSED
                else (None if visit_ahead else "no_visit")
            )
        elif kind is CommandKind.VISIT and command.visit_date is not None:
            hour = command.visit_time.strftime("%H:%M") if command.visit_time else None
            problem = visit_problem(status, command.visit_date, hour, now_local)
        elif kind is CommandKind.PENDING and command.stop:
            problem = None  # a case that waits no more: any status, waiting or not
        elif kind is CommandKind.PENDING and visit_ahead and status == CaseStatus.OPEN:
            problem = "pending_visit"
        elif kind is CommandKind.PENDING and outage_open and status == CaseStatus.OPEN:
            problem = "pending_outage"
        elif kind is CommandKind.PENDING and reports_open and status == CaseStatus.OPEN:
            problem = "pending_main"
        elif kind in (CommandKind.ROUTE, CommandKind.PENDING) or joins:
            problem = route_problem(status)
        seen.add(kind)
        asking = asking or (kind is CommandKind.PENDING and not command.stop)
        updating = updating or news
        replying = replying or kind is CommandKind.REPLY
        joined = joined or (joins and not news)
        if problem is not None:
            problems.append((command.line, problem))
            continue
        booked = booked or (kind is CommandKind.VISIT and not command.cancel)
        if kind is CommandKind.CLOSE:
            status = CaseStatus.CLOSED
        elif kind is CommandKind.REOPEN:
            status = CaseStatus.OPEN
        elif kind is CommandKind.RESOLVE:
            status = CaseStatus.RESOLVED
    return problems


def untold_changes(commands: Sequence[Command], *, visit_cancelled: bool) -> list[str]:
    """What ``commands`` changed that a customer with a mail address would have been sent:
    "resolve", "visit" (a visit booked or moved) and "visit_cancelled" (a visit still
    ahead cancelled by ``#visita cancelar``, ``#resolver`` or ``#cerrar``). On a phone
    case nobody was told them, and the agent must call."""
    return untold(
        resolved=any(c.kind is CommandKind.RESOLVE for c in commands),
        booked=any(c.kind is CommandKind.VISIT and not c.cancel for c in commands),
        visit_cancelled=visit_cancelled,
    )


def untold(*, resolved: bool, booked: bool, visit_cancelled: bool) -> list[str]:
    """The changes a phone customer was not told, by mail command or command line alike:
    "resolve", "visit" (booked or moved; what to tell, not the one it replaced) and
    "visit_cancelled"."""
    changes = ["resolve"] if resolved else []
    if booked:
        changes.append("visit")
    elif visit_cancelled:
        changes.append("visit_cancelled")
    return changes


_SETTLES = frozenset({CommandKind.RESOLVE, CommandKind.CLOSE})  # each cancels a visit ahead
# What #pendiente does not go with in one reply (command_problems): the text below it is
# relayed, so no #nota; the case waits on the customer, so it is neither settled (#resolver,
# #cerrar), nor moved (#fusionar), nor given a visit (#visita: the next step is ours then).
# Nor #masivo: the case's next step is the outage's repair, not the customer's answer.
PENDING_CONFLICTS = frozenset(
    {CommandKind.RESOLVE, CommandKind.CLOSE, CommandKind.NOTE, CommandKind.MERGE}
    | {CommandKind.VISIT, CommandKind.OUTAGE}
)
# What "#respuesta" does not go with: a note is never sent to the customer, a resolution
# or a visit sends its own notice (the canned text would be a second message, or be read
# as the causes), "#cerrar" ends the case the reply would keep talking on, and
# "#fusionar" moves the case away. "#pendiente" goes with it: the canned text is then
# the question the case waits on.
REPLY_CONFLICTS = frozenset(
    {CommandKind.NOTE, CommandKind.RESOLVE, CommandKind.CLOSE, CommandKind.MERGE}
    | {CommandKind.VISIT}
)
_GOES_WITH_MERGE = frozenset({CommandKind.MERGE, CommandKind.NOTE})
_GOES_WITH_SPAM = frozenset({CommandKind.SPAM, CommandKind.NOTE})
# What "#masivo aviso" does not go with: its text is relayed to every customer of the
# outage, so it is neither a note nor the causes of a resolution, and the case stays open.
_UPDATE_CONFLICTS = frozenset({CommandKind.NOTE, CommandKind.RESOLVE, CommandKind.CLOSE})
_NEEDS_OPEN = frozenset({CommandKind.RESOLVE, CommandKind.VISIT, CommandKind.ROUTE})

_REFUSALS = {
    "case_closed": "case {folio} is closed: reopen it first (mailcase cases reopen {folio})",
    "case_resolved": "case {folio} is already resolved: reopen it first "
    "(mailcase cases reopen {folio}) to change it",
    "missing_cause": "resolving case {folio} needs the causes (--cause): the customer is told them",
    "visit_in_past": "the visit {when} for case {folio} is in the past (now {now})",
    "visit_too_far": "the visit {when} for case {folio} is more than "
    f"{VISIT_MAX_DAYS_AHEAD} days ahead (now {{now}}): check the year",
    "visit_hours": "the visit time {when} for case {folio} is outside visiting hours "
    "(07:00 to 21:00): write it in 24-hour time, e.g. 16:30",
    "no_visit": "case {folio} has no home visit ahead to cancel",
    "bad_participant": "{address} cannot be a participant of case {folio}: it is an address "
    "of mailcase, an agent's, or the customer's own",
    "same_case": "case {folio} cannot be merged into itself",
    "merged": "case {folio} was merged into {into} already: work on {into}",
    "into_closed": "case {into} is closed: reopen it (mailcase cases reopen {into}) "
    "before merging {folio} into it",
    "into_resolved": "case {into} is already resolved: reopen it (mailcase cases reopen {into}) "
    "before merging {folio} into it",
    "other_customer": "cases {folio} and {into} are different customers' reports: a case "
    "tells its own customer alone how it was resolved, so only one customer's cases merge",
    "merge_visit": "case {folio} has a home visit ahead: cancel it (mailcase cases visit "
    "{folio} --cancel) or merge {into} into {folio} instead",
    "merge_spam": "case {folio} is marked spam: undo the mark first (mailcase cases spam "
    "{folio} --undo) to merge it",
    "pending_days": f"case {{folio}} cannot wait {{days}} days for the customer: 1 to "
    f"{PENDING_MAX_DAYS}",
    "pending_visit": "case {folio} has a home visit ahead: the next step is the company's, "
    "not the customer's; cancel it first (mailcase cases visit {folio} --cancel) to make "
    "the case wait for the customer",
    "pending_outage": "case {folio} is a report of the outage {main}, still open: the next "
    "step is the repair, not the customer's answer; take it out of the outage first "
    "(mailcase cases outage {folio} --clear) to make it wait for the customer",
    "pending_main": "case {folio} is the main case of an outage with open reports (mailcase "
    "cases list --outage {folio}): the next step is the repair, and its reports are "
    "resolved with it, so it does not wait for its customer",
    "outage_same_case": "case {folio} cannot be a report of its own outage",
    "outage_chain": "case {into} is itself a report of the outage {main}: make {folio} a "
    "report of {main} instead",
    "outage_main": "case {folio} is the main case of an outage (mailcase cases list --outage "
    "{folio}): it cannot be a report of another",
    "outage_closed": "case {into} is closed: reopen it (mailcase cases reopen {into}) before "
    "making {folio} a report of its outage",
    "outage_resolved": "case {into} is already resolved: reopen it (mailcase cases reopen "
    "{into}) before making {folio} a report of its outage",
    "merge_outage": "cases {folio} and {into} belong to different outages: take one out of its "
    "outage first (mailcase cases outage FOLIO --clear)",
    "spam_channel": "case {folio} was not opened by mail (channel {channel}): there is no "
    "sender to set aside",
    "spam_outage": "case {folio} is a report of the outage {main}: take it out of the outage "
    "first (mailcase cases outage {folio} --clear)",
    "spam_main": "case {folio} is the main case of an outage (mailcase cases list --outage "
    "{folio}): its reports are customers' own; it cannot be spam",
    "reopen_spam": "case {folio} is marked spam: undo it first (mailcase cases spam {folio} "
    "--undo)",
}


def refuse(problem: str | None, case: Case, **details: str) -> None:
    if problem is not None:
        raise CaseworkError(_REFUSALS[problem].format(folio=case.folio, **details))


def open_case(
    settings: Settings,
    session: Session,
    *,
    customer: str,
    customer_name: str,
    subject: str,
    mailbox: str,
    now: datetime,
    reported_at: datetime | None = None,
    channel: str = "mail",
    last_customer_at: datetime | None = None,
    language: str | None = None,
) -> Case:
    """A new open case with the next folio of its year, inserted (so it has an id).

    The year is ``reported_at``'s (when the report reached us; ``now`` when not
    given) in ``folio.timezone``, the business's calendar, and so is its
    ``created_at`` (never after ``now``). Its notices are in
    ``language``; by default, ``mailbox``'s (:meth:`Settings.language_of`).
    """
    year = settings.folio.year(reported_at or now)
    number = next_folio_number(session, year)
    # A Core INSERT, not session.add + flush (a unit of work for one row). The
    # case comes back detached: later changes to it go through session.add.
    return insert_row(
        session,
        Case,
        folio=format_folio(settings.folio.prefix, year, number),
        status=CaseStatus.OPEN,
        customer=customer,
        customer_name=customer_name,
        subject=subject,
        mailbox=mailbox,
        language=language or settings.language_of(mailbox),
        channel=channel,
        # When the report reached us: the report's figures (mailcase report) and the
        # listing date a case by it, not by the poll that read it after an outage.
        created_at=min(reported_at, now) if reported_at else now,
        updated_at=now,
        last_customer_at=last_customer_at,
    )


def record(
    session: Session,
    case: Case,
    kind: str,
    text: str,
    *,
    direction: str = "in",
    from_addr: str = "",
    subject: str = "",
) -> CaseMessage:
    """Add an entry to the case's history (a note, a system message, a phone report)."""
    assert case.id is not None
    entry = CaseMessage(
        case_id=case.id,
        direction=direction,
        kind=kind,
        from_addr=from_addr,
        subject=subject,
        date=utcnow(),
        text=text,
    )
    session.add(entry)
    session.flush()
    return entry


def link(session: Session, case: Case, related: Sequence[str]) -> None:
    """Record that ``case`` relates to the cases with folios ``related``."""
    assert case.id is not None
    for folio in related:
        other = session.exec(select(Case).where(Case.folio == folio)).first()
        if other is not None and other.id is not None and other.id != case.id:
            session.add(CaseLink(case_id=case.id, related_id=other.id))


def related_folios(session: Session, case: Case) -> list[str]:
    """Folios linked to ``case`` in either direction, oldest first."""
    forward = select(CaseLink.related_id).where(CaseLink.case_id == case.id)
    backward = select(CaseLink.case_id).where(CaseLink.related_id == case.id)
    ids = set(session.exec(forward).all()) | set(session.exec(backward).all())
    if not ids:
        return []
    rows = session.exec(select(Case.folio).where(col(Case.id).in_(ids)).order_by(col(Case.id)))
    return list(rows.all())


def add_participants(
    session: Session, settings: Settings, case: Case, addresses: Sequence[str]
) -> None:
    """Let the addresses the customer put in Cc write on the case (not ours, not agents):
    the first :data:`MAX_NEW_PARTICIPANTS` new ones of one message, and no more once
    the case has :data:`MAX_PARTICIPANTS`."""
    assert case.id is not None
    skip = settings.own_addresses | set(settings.agents.addresses) | {case.customer}
    candidates = [a for a in dict.fromkeys(addresses) if a not in skip]
    if not candidates:  # most mail: no query at all
        return
    existing = set(
        session.exec(select(Participant.address).where(Participant.case_id == case.id)).all()
    )
    room = min(MAX_NEW_PARTICIPANTS, MAX_PARTICIPANTS - len(existing))
    for address in [a for a in candidates if a not in existing][: max(room, 0)]:
        session.add(Participant(case_id=case.id, address=address))


# A stranger writing with the customer's folio and a Cc of thousands made each a
# participant, and every later message of the case loaded them all. A household or
# an office copies a few people; #participante adds any beyond these.
MAX_NEW_PARTICIPANTS = 20
MAX_PARTICIPANTS = 100


def participant_problem(settings: Settings, case: Case, address: str) -> str | None:
    """Why ``address`` cannot be made a participant of ``case``, or ``None``: one of
    mailcase's own addresses, an agent's, or the customer's own."""
    refused = settings.own_addresses | set(settings.agents.addresses) | {case.customer}
    return "bad_participant" if address in refused else None


def add_participant(
    session: Session, settings: Settings, case: Case, address: str, *, by: str
) -> None:
    """Let ``address`` (another address of the customer's, a relative) write on ``case``:
    its mail naming the folio joins the case, as mail from the customer's Cc does.

    Refused (:class:`CaseworkError`) for mailcase's own addresses, an agent's and
    the customer's own (:func:`participant_problem`).
    """
    refuse(participant_problem(settings, case, address), case, address=address)
    # Not through add_participants: its caps bound what a stranger's Cc can do, and
    # an agent's #participante is what adds anyone beyond them.
    assert case.id is not None
    known = session.exec(
        select(Participant.id).where(Participant.case_id == case.id, Participant.address == address)
    ).first()
    if known is None:
        session.add(Participant(case_id=case.id, address=address))
    case.updated_at = utcnow()
    session.add(case)
    record(session, case, "system", f"participant {address} added", from_addr=by)


def participants(session: Session, case_id: int) -> frozenset[str]:
    return frozenset(
        session.exec(select(Participant.address).where(Participant.case_id == case_id)).all()
    )


# The agents' notice of a new case shows the customer's other reports, as Zammad's
# and OTRS's customer panels and Request Tracker's "recent tickets" do: a third
# report of the same failure in a month is a home visit, not another reboot.
HISTORY_DAYS = 90
HISTORY_SHOWN = 5
_CASES = table(Case)
_EARLIER_CASES = Prepared(
    sa.select(_CASES.c.id)
    .where(
        _CASES.c.customer == sa.bindparam("customer"),
        _CASES.c.id != sa.bindparam("id"),
        _CASES.c.merged_into_id.is_(None),
    )
    .order_by(_CASES.c.id.desc())
    .limit(HISTORY_SHOWN)
)


def customer_history(session: Session, settings: Settings, case: Case) -> dict[str, object]:
    """The customer's other cases, for the agents' notice of ``case``: ``cases``, the
    newest ``HISTORY_SHOWN`` (``folio``, ``status``, ``outcome``, ``type``, and
    ``opened``, the day in ``folio.timezone``), and ``recent``, how many were opened in
    the last ``HISTORY_DAYS`` days; ``{}`` when there is none (or no customer address).

    A case merged into another is left out (it is the same report written twice), and
    so is an erased customer's; a case whose "customer" is a web form's own address or
    the desk's shows none (other people's cases are filed under it). A customer's first
    case costs one indexed lookup (about 7 µs on SQLite); the rest is read only for a
    customer who wrote before.
    """
    if not case.customer or case.customer == FORGOTTEN or case.id is None:
        return {}
    if (
        case.customer in settings.web_form.senders
        or case.customer in settings.own_addresses
        or case.customer in settings.agents.addresses
    ):
        # A web form's own address (no usable Reply-To), or the desk's: many people's
        # cases under one address, not one customer's history.
        return {}
    # Most new cases are a customer's first: one statement on the driver's cursor
    # (a quarter of the cost through the ORM) says so, on the ingest path.
    ids = run(session, _EARLIER_CASES, {"customer": case.customer, "id": case.id}).scalars().all()
    if not ids:
        return {}
    others = sa.and_(
        col(Case.customer) == case.customer,
        col(Case.id) != case.id,
        col(Case.merged_into_id).is_(None),
    )
    rows = session.execute(
        sa.select(
            col(Case.folio),
            col(Case.status),
            col(Case.outcome),
            col(Case.type),
            col(Case.created_at),
        )
        .where(col(Case.id).in_(ids))
        .order_by(col(Case.id).desc())
    ).all()
    since = utcnow() - timedelta(days=HISTORY_DAYS)
    recent = session.exec(
        select(sa.func.count()).select_from(Case).where(others, col(Case.created_at) >= since)
    ).one()
    zone = settings.folio.zone
    return {
        "recent": recent,
        "cases": [
            {
                "folio": folio,
                "status": status,
                "outcome": outcome or "",
                "type": type_ or "",
                "opened": (as_utc(created) or utcnow()).astimezone(zone).strftime("%Y-%m-%d"),
            }
            for folio, status, outcome, type_, created in rows
        ],
    }


def notify_agents(
    session: Session,
    settings: Settings,
    case: Case,
    reason: str,
    *,
    text: str = "",
    attachments: Sequence[str] = (),
    to: str | None = None,
    note: str = "",
    sender: str = "",
    related: Sequence[str] = (),
    files: Sequence[FileAttachment] = (),
    not_attached: Sequence[str] = (),
    unstored: Mapping[str, object] | None = None,
    about: int | None = None,
) -> None:
    """Tell ``agents.notify`` (or ``to``) about the case: new, update, reopened or routed.

    ``text`` is the customer's words; ``note`` what the agent who routed the
    case wrote for the area; ``sender`` who wrote ``text``, named in the
    notice when it is not the case's customer (a participant in Cc, or the
    agent who opened the case for the customer); ``related`` the folios the
    message named but does not belong to (its sender's older case, or someone
    else's), so that an agent working from mail can tell a follow-up apart;
    ``files`` the customer's files that go with the notice (the names in
    ``attachments`` the others, ``not_attached``, stay on the case); ``about`` the
    case message that brought ``text`` (the erasure of its sender's mail finds the
    notice by it).
    """
    rcpt = to or settings.agents.notify
    if not rcpt:
        return
    queue_notice(
        session,
        settings,
        case,
        "agent_notification",
        to=rcpt,
        new_case=reason == "new",
        context={
            "reason": reason,
            "text": text,
            "attachments": list(attachments),
            "note": note.strip(),
            "other_sender": sender if sender and sender != case.customer else "",
            "case_type": case.type or "",  # a CaseType value; "" when not classified yet
            "owner": case.owner or "",  # the agent responsible; "" when nobody is
            # An agent opened the case for the customer (a forward, a mail in copy).
            "by_agent": sender in settings.agents.addresses,
            "related": list(related),
            # A report of an outage: its main case's folio, the case to work ("" if none);
            # the main case of one: how many reports it has (0 if none).
            **_outage_context(session, case),
            # The customer's other reports, on a new case only (updates are of a case
            # the agents know already).
            "history": customer_history(session, settings, case) if reason == "new" else {},
            # Of ``attachments``, those too large to go with the notice.
            "not_attached": list(not_attached),
            # notices.max_agent_attachment_bytes = 0: names only, by the admin's choice.
            "attaching": settings.notices.max_agent_attachment_bytes > 0,
            # Over limits.max_message_bytes: its files were not kept ({} otherwise).
            "unstored": dict(unstored or {}),
        },
        attachments=files,
        about=about,
    )


def resolve(
    session: Session,
    settings: Settings,
    case: Case,
    outcome: str,
    cause: str,
    *,
    by: str,
    record_cause: bool = True,
    attachments: Sequence[FileAttachment] = (),
) -> list[Case]:
    """Resolve ``case`` as upheld (``valid``) or not (``invalid``) and tell the customer why,
    with ``attachments`` (the files an agent's ``#resolver`` reply may pass on); the reports
    of its outage resolved with it (``[]`` for a case that is no main case).

    Step 4 of the written procedure: the customer learns the folio, whether
    the report was upheld, the causes and, when upheld, that the failure was
    corrected. A home visit still ahead is cancelled, and the resolution says
    so: the customer must not wait at home for a technician. Refused
    (:class:`CaseworkError`) on a closed case and without causes
    (:func:`resolve_problem`).

    The main case of an outage resolves each of its reports still open (not resolved,
    closed nor merged) alike, by this same function, in the caller's transaction: each
    customer gets their own resolution under their own folio and in their own language,
    a visit ahead is cancelled, a wait ends, and each report's history says "resolved
    with the outage MAIN". Reports resolved or closed already are left alone.
    """
    if outcome not in OUTCOMES:
        raise CaseworkError(f"outcome must be valid or invalid, not {outcome!r}")
    refuse(resolve_problem(case.status, cause), case)
    now = utcnow()
    case.status = CaseStatus.RESOLVED
    case.outcome = outcome
    case.cause = cause.strip()
    case.resolved_at = now
    case.updated_at = now
    case.pending_until = None  # settled: nothing is waited for any more
    session.add(case)
    cancelled = cancel_visit_if_ahead(session, settings, case, by=by)
    if record_cause:  # (a mail command's message is recorded by the pipeline itself)
        record(session, case, "agent", cause.strip(), from_addr=by, subject=f"resolve {outcome}")
    if case.customer:
        queue_notice(
            session,
            settings,
            case,
            f"resolution_{outcome}",
            to=case.customer,
            context={"cause": case.cause, "cancelled_visit": cancelled},
            attachments=attachments,
        )
    words = _OUTCOME_WORDS[case.language if case.language in _OUTCOME_WORDS else "en"]
    detail = f"{words[outcome]}: {case.cause}"
    if cancelled:
        detail += f"\n{words['cancelled']}: {cancelled}"
    tell_area(session, settings, case, "resolved", detail)
    # The main case of an outage: each report still open is resolved alike, by this same
    # path (its customer's notice under its own folio and language, its visit and wait
    # ended). Reports are never main cases (outages.join_outage), so this goes one level deep.
    reports = open_reports(session, case)
    for report in reports:
        record(session, report, "system", f"resolved with the outage {case.folio}", from_addr=by)
        resolve(session, settings, report, outcome, cause, by=by)
    return reports


# How an area's notice of a resolution says the outcome (and a visit it cancelled).
_OUTCOME_WORDS = {
    "es": {"valid": "Procedente", "invalid": "Improcedente", "cancelled": "Visita cancelada"},
    "en": {"valid": "Upheld", "invalid": "Not upheld", "cancelled": "Visit cancelled"},
}


def add_note(session: Session, case: Case, text: str, *, by: str) -> None:
    """An internal note: recorded, never sent to the customer."""
    record(session, case, "note", text, from_addr=by)
    case.updated_at = utcnow()
    session.add(case)


def tell_visit_cancelled(
    session: Session, settings: Settings, case: Case, visit: str, *, customer: bool = True
) -> None:
    """Tell the customer (unless not ``customer``), and the area the case is routed to,
    that ``visit`` (as the customer was told it; "" for none) is off: nobody waits at
    home, no technician goes out. (A plain closing, with no visit, is no news to either.)"""
    if visit and case.customer and customer:
        queue_notice(
            session, settings, case, "visit_cancelled", to=case.customer,
            context={"cancelled_visit": visit},
        )  # fmt: skip
    if visit:
        tell_area(session, settings, case, "visit_cancelled", visit)


def tell_area(session: Session, settings: Settings, case: Case, reason: str, detail: str) -> None:
    """Tell the area ``case`` is routed to of a change someone else may have made: a
    visit booked or called off, the case resolved (``reason``), with its ``detail``.

    The technicians who go out are there: a visit booked by customer service, or
    cancelled by a resolution, reached nobody in the area before.
    """
    area = settings.areas.get(case.area) if case.area else None
    if area is not None:
        notify_agents(session, settings, case, reason, text=detail, to=area.notify)


def cancel_visit_if_ahead(
    session: Session,
    settings: Settings,
    case: Case,
    *,
    by: str,
    explicit: datetime | None = None,
) -> str:
    """Cancel ``case``'s home visit if it is still ahead; the visit as the customer was
    told it, or "" when there was none to cancel (one that took place is kept).

    ``explicit``: the time an agent called it off at
    (:func:`~mailcase.visitdates.visit_cancellable`). Without it (a resolution, a
    closing) today's visit with no time is kept: the technician may have come already.
    """
    if explicit is not None:
        if not visit_cancellable(case, explicit):
            return ""
    elif not visit_ahead(case, utcnow().astimezone(settings.folio.zone)):
        return ""
    assert case.visit_date is not None  # visit_ahead, visit_cancellable
    cancelled = visit_text(case.visit_date, case.visit_time, case.language)
    when = case.visit_date.isoformat() + (f" {case.visit_time}" if case.visit_time else "")
    case.visit_date = None
    case.visit_time = None
    session.add(case)
    record(session, case, "system", f"home visit of {when} cancelled", from_addr=by)
    return cancelled


def route(
    session: Session, settings: Settings, case: Case, area: str, *, by: str, note: str = ""
) -> None:
    """Route ``case`` to ``area`` (from ``[areas]``) and notify that area.

    The area's notice carries the customer's report and latest messages (the
    first and up to :data:`ROUTED_LATER_MESSAGES` after it, oldest first), their
    files, and the routing agent's ``note``: the area must be able to answer
    from it alone. (The last message alone was often "Gracias, quedo atento":
    the address and the fault were in the report, the photo too.)
    """
    if area not in settings.areas:
        known = ", ".join(sorted(settings.areas)) or "none configured"
        raise CaseworkError(f"unknown area {area!r} (areas: {known})")
    refuse(route_problem(case.status), case)
    case.area = area
    case.updated_at = utcnow()
    session.add(case)
    record(session, case, "system", f"routed to area {area}", from_addr=by)
    written = session.exec(
        select(CaseMessage.id, CaseMessage.text)
        .where(CaseMessage.case_id == case.id, CaseMessage.kind == "customer")
        .order_by(col(CaseMessage.id))
    ).all()
    chosen = [*written[:1], *written[1:][-ROUTED_LATER_MESSAGES:]]
    stored = (
        session.exec(
            select(StoredAttachment)
            .where(col(StoredAttachment.case_message_id).in_([m[0] for m in chosen]))
            .order_by(col(StoredAttachment.id))
        ).all()
        if chosen
        else []
    )
    # The photos go along, as with the general list's notice: the area must be able to
    # answer from its notice alone, and had neither the files nor their names.
    files, left = stored_files(settings, stored)
    notify_agents(
        session, settings, case, "routed",
        text=ROUTED_SEPARATOR.join(t.strip() for _, t in chosen if t.strip()),
        to=settings.areas[area].notify, note=note,
        attachments=[a.filename for a in stored], files=files, not_attached=left,
    )  # fmt: skip


ROUTED_LATER_MESSAGES = 4  # of the customer's, after the report, in a routed case's notice
ROUTED_SEPARATOR = "\n\n- - -\n\n"  # between them: language-neutral


# A file that may go with a notice: its name, type, size, and how to read its bytes.
Candidate = tuple[str, str, int, Callable[[], bytes]]


def fitting(candidates: Iterable[Candidate], limit: int) -> tuple[list[FileAttachment], list[str]]:
    """Of ``candidates``, in order, the files that fit together in ``limit`` bytes, read;
    and the names of the others (too big, or no longer readable: kept on the case)."""
    files: list[FileAttachment] = []
    left: list[str] = []
    total = 0
    for name, content_type, size, read in candidates:
        if total + size > limit:
            left.append(name)
            continue
        try:
            data = read()
        except (OSError, ValueError):  # a stored copy lost, or its name not a digest
            left.append(name)
            continue
        total += size
        files.append(FileAttachment(name, content_type, data))
    return files, left


def stored_files(
    settings: Settings, stored: Sequence[StoredAttachment]
) -> tuple[list[FileAttachment], list[str]]:
    """:func:`fitting` for the case's ``stored`` files, read from the store, within
    ``notices.max_agent_attachment_bytes``."""
    blobs = BlobStore(settings.storage.directory)
    candidates = [
        (a.filename, a.content_type, a.size, partial(blobs.get, a.sha256)) for a in stored
    ]
    return fitting(candidates, settings.notices.max_agent_attachment_bytes)


def close(session: Session, settings: Settings, case: Case, *, by: str) -> bool:
    """Close ``case``; False, and nothing changed, when it is closed already (its closing
    time and history stay as they were: RT answers "That is already the current
    value"). No notice, unless a home visit was still ahead: it is cancelled and the
    customer is told (``visit_cancelled``), so that nobody waits at home.

    A later customer message reopens it within ``cases.reopen_days`` of its
    resolution, else opens a new, linked case (mailcase.triage, rule 6).
    """
    if case.status == CaseStatus.CLOSED:
        return False
    close_with_note(session, settings, case, by=by, note="case closed")
    return True


def close_with_note(
    session: Session, settings: Settings, case: Case, *, by: str, note: str, tell: bool = True
) -> None:
    """Close ``case`` (not waiting on the customer any more), recording ``note``; a home
    visit still ahead is cancelled and the customer told (not without ``tell``: the area
    is told all the same, so that no technician goes out)."""
    now = utcnow()
    case.status = CaseStatus.CLOSED
    case.closed_at = now
    case.updated_at = now
    case.pending_until = None
    session.add(case)
    record(session, case, "system", note, from_addr=by)
    cancelled = cancel_visit_if_ahead(session, settings, case, by=by)
    tell_visit_cancelled(session, settings, case, cancelled, customer=tell)


def set_type(session: Session, case: Case, case_type: str, *, by: str) -> bool:
    """Classify ``case`` as ``case_type`` (a :class:`~mailcase.models.CaseType` value) and
    record "type set to X"; False, and nothing changed nor recorded, when it was that type
    already. Any status takes it: a case is classified after it was closed too (the report
    counts it by the period it was opened in). Nobody is told: it is bookkeeping, and
    ``updated_at`` stays as it was.

    Raises CaseworkError for a value that is no type.
    """
    if case_type not in set(CaseType):
        known = ", ".join(CaseType)
        raise CaseworkError(f"{case_type!r} is not a case type ({known})")
    if case.type == case_type:
        return False
    case.type = case_type
    # updated_at stays: classifying an old closed case is bookkeeping, not a change of the
    # case (retention by age reads the customer's side of a case, never updated_at).
    session.add(case)
    record(session, case, "system", f"type set to {case_type}", from_addr=by)
    return True


def assign(
    session: Session,
    settings: Settings,
    case: Case,
    owner: str | None,
    *,
    by: str,
    note: str = "",
) -> bool:
    """Make ``owner`` (an address of ``agents.addresses``; None: nobody) the agent
    responsible for ``case`` and record "owner set to X" (or "owner cleared"); False,
    and nothing changed nor recorded, when it was that owner already. Any status takes
    it, as a type does; neither touches ``updated_at``.

    An owner made so by someone else (``by``: another agent, the command line) is told
    (:func:`_tell_new_owner`, with ``note``, what the one who assigned it wrote);
    one who took the case themselves knows.

    Raises CaseworkError for an address that is not an agent's.
    """
    if owner is not None and owner not in settings.agents.addresses:
        raise CaseworkError(f"{owner} is not one of agents.addresses")
    if case.owner == owner:
        return False
    case.owner = owner
    # updated_at stays, as for a type (set_type): who follows a case up is the desk's
    # bookkeeping.
    session.add(case)
    text = f"owner set to {owner}" if owner else "owner cleared"
    record(session, case, "system", text, from_addr=by)
    if owner is not None and owner != by:
        _tell_new_owner(session, settings, case, owner, by=by, note=note)
    return True


# The customer's latest message, as the new owner's notice quotes it (as a reminder does).
_OWNER_TEXT_CHARS = 1500


def _tell_new_owner(
    session: Session, settings: Settings, case: Case, owner: str, *, by: str, note: str
) -> None:
    """Queue the ``assigned`` notice to ``owner``, whom ``by`` made responsible for ``case``
    (as Zammad, OTRS/Znuny and FreeScout tell an agent a ticket assigned to them): the
    case, the customer's latest message and ``note``. An agent notice like the case's
    notification, so a reply to it works as a reply to that one. Never to an address
    that is not an agent's, nor of mailcase's own; capped per case and hour as the
    agents' notices are. Not for a closed case: nothing to follow up there.
    """
    if case.status == CaseStatus.CLOSED:
        return
    if owner not in settings.agents.addresses or owner in settings.own_addresses:
        return
    queue_notice(
        session,
        settings,
        case,
        "assigned",
        to=owner,
        context={
            "owner": owner,
            "assigned_by": by,
            "note": note.strip(),
            "status": case.status,
            "case_type": case.type or "",
            "text": clip(last_customer_text(session, case), _OWNER_TEXT_CHARS),
        },
    )


def last_customer_text(session: Session, case: Case) -> str:
    """The words of the customer's latest message on ``case`` ("" if none is kept)."""
    text = session.exec(
        select(CaseMessage.text)
        .where(
            CaseMessage.case_id == case.id,
            CaseMessage.kind == "customer",
            CaseMessage.from_addr == case.customer,
        )
        .order_by(col(CaseMessage.id).desc())
        .limit(1)
    ).first()
    return (text or "").strip()


def assign_on_answer(session: Session, settings: Settings, case: Case, agent: str) -> bool:
    """``agent`` answered the customer of ``case`` (a reply relayed, a resolution, a visit):
    with ``cases.auto_assign``, an agent of ``agents.addresses``, and a case nobody owns,
    ``agent`` becomes its owner (as FreeScout and Zammad assign a ticket to the agent who
    takes it up); whether it did. An owner no longer in ``agents.addresses`` has left
    the desk and follows nothing up: the case counts as nobody's."""
    if not settings.cases.auto_assign:
        return False
    if case.owner is not None and case.owner in settings.agents.addresses:
        return False
    if agent not in settings.agents.addresses:
        return False
    return assign(session, settings, case, agent, by=agent)


# The history's words for a wait that ended (clear_pending; mailcase.waits sets one).
NOT_WAITING = "no longer waiting for the customer"


def clear_pending(session: Session, case: Case, *, by: str, why: str = "") -> bool:
    """``case`` waits for its customer no more (recorded, with ``why`` when given); False,
    and nothing changed nor recorded, when it was not waiting."""
    if case.pending_until is None:
        return False
    case.pending_until = None
    case.updated_at = utcnow()
    session.add(case)
    record(session, case, "system", f"{NOT_WAITING}: {why}" if why else NOT_WAITING, from_addr=by)
    return True


def answered_in(session: Session, case: Case, related: Sequence[str], *, sender: str) -> list[str]:
    """``sender`` wrote the new ``case``, naming the cases of ``related`` (folios): each of
    those waiting for them (``sender`` is its customer or a participant) waits no more,
    recorded with the folio the answer is on, as their reply on the case itself would
    (:func:`clear_pending`); the folios whose wait ended. A stranger naming a folio ends
    nothing."""
    ended = []
    for folio in related:
        # Read first, unlocked: a stranger naming folios locks nobody's case. Then
        # locked and read again: on PostgreSQL, not while the hourly check closes it.
        if _answerer(session, case_by_folio(session, folio), case, sender) is None:
            continue
        other = case_by_folio(session, folio, for_update=True)
        who = _answerer(session, other, case, sender)
        if other is None or who is None:
            continue
        clear_pending(session, other, by=sender, why=f"{who} wrote, see {case.folio}")
        ended.append(other.folio)
    return ended


def _answerer(session: Session, other: Case | None, case: Case, sender: str) -> str | None:
    """Who ``sender`` is to ``other`` ("the customer", else their address as a
    participant) when their new ``case`` ends the wait of ``other``; None when it ends none."""
    if other is None or other.id is None or other.id == case.id:
        return None
    if other.pending_until is None or other.status != CaseStatus.OPEN:
        return None
    if sender == other.customer:
        return "the customer"
    return sender if sender in participants(session, other.id) else None


def reopen(session: Session, case: Case, *, by: str) -> bool:
    """Open ``case`` again (its outcome, cause and resolution time are kept until it is
    resolved again); False, and nothing changed, when it is open already.

    The resolution time is kept because the resolution notice promised the
    customer ``cases.reopen_days`` from it: a reply that reopens the case ("¡Gracias!
    ¿Tiene garantía el módem?"), then an agent's ``#cerrar``, must not end that promise
    (mailcase.triage, rule 6).

    Refused (:class:`CaseworkError`) on a case marked spam (:func:`unmark_spam` first):
    open, it would take mail its customer's new mail is set aside from.
    """
    if case.status == CaseStatus.OPEN:
        return False
    if case.spam_at is not None:
        refuse("reopen_spam", case)
    case.status = CaseStatus.OPEN
    case.closed_at = None
    case.updated_at = utcnow()
    session.add(case)
    record(session, case, "system", "case reopened", from_addr=by)
    return True


def spam_problem(case: Case, *, is_main: bool = False) -> str | None:
    """Why ``case`` cannot be marked spam, or ``None``: only a case its customer's mail
    opened (channel ``mail``: ``spam_channel``), and no case of an outage: a report is
    taken out of it first (``spam_outage``), and a main case (``is_main``: it has
    reports) is none (``spam_main``: its resolution is its reports' customers')."""
    if case.channel != "mail":
        return "spam_channel"
    if case.outage_id is not None:
        return "spam_outage"
    return "spam_main" if is_main else None


def mark_spam(session: Session, settings: Settings, case: Case, *, by: str) -> bool:
    """Mark ``case`` spam the filter missed (``spam_at``), as Zendesk's, Freshdesk's and Help
    Scout's "mark as spam" do; False, and nothing changed, when it is marked already.

    Guarantees: the case is closed (``case closed``, recorded as :func:`close` does, when
    it was not), and "marked spam by ``by``" is recorded; nothing is sent to the customer,
    not even of a home visit still ahead, which is cancelled (its area is told: no
    technician goes out), and their notices still queued, or failed (``outbox retry``
    would send them again), are never sent (suppressed); ``mailcase report`` counts it
    only as ``spam``; while it is marked, new mail of its
    customer opens no case (mailcase.service) and mail on it is set aside
    (mailcase.triage). Refused (:class:`CaseworkError`) as :func:`spam_problem` says.
    """
    main = session.get(Case, case.outage_id) if case.outage_id is not None else None
    refuse(
        spam_problem(case, is_main=is_outage_main(session, case)),
        case,
        channel=case.channel,
        main=main.folio if main is not None else "",
    )
    if case.spam_at is not None:
        return False
    if case.status != CaseStatus.CLOSED:
        close_with_note(session, settings, case, by=by, note="case closed", tell=False)
    case.spam_at = utcnow()
    session.add(case)
    record(session, case, "system", f"marked spam by {by}", from_addr=by)
    if case.customer and case.id is not None:
        # An acknowledgement the outbox has not sent yet (SMTP down), or failed to send
        # (`outbox retry --all` would try it again): backscatter still.
        session.execute(
            sa.update(Notice)
            .where(
                col(Notice.case_id) == case.id,
                col(Notice.rcpt_to) == case.customer,
                col(Notice.status).in_((NoticeStatus.QUEUED, NoticeStatus.FAILED)),
            )
            .values(status=NoticeStatus.SUPPRESSED, last_error=SPAM_SUPPRESSED)
        )
    return True


# Why a notice to the customer of a case marked spam was never sent (outbox list).
SPAM_SUPPRESSED = "not sent: the case was marked spam"


def unmark_spam(session: Session, case: Case, *, by: str) -> bool:
    """Undo :func:`mark_spam`: ``spam_at`` cleared and "spam mark removed by ``by``"
    recorded; False, and nothing changed, when it was not marked. The case stays closed
    (:func:`reopen` it if it is to be worked); the report counts it again, as a case
    closed without a resolution, and its customer's new mail opens cases again.
    Notices suppressed by the mark stay unsent."""
    if case.spam_at is None:
        return False
    case.spam_at = None
    session.add(case)
    record(session, case, "system", f"spam mark removed by {by}", from_addr=by)
    return True


# --- outages (mailcase.outages): what this module's own changes need of them -----------
#
# A main case's resolution resolves its open reports (:func:`resolve`), no case of an
# outage is marked spam (:func:`mark_spam`), and the agents' notice names the outage
# (:func:`notify_agents`). Joining, leaving and telling an outage's reports are
# mailcase.outages', which builds on these: this module imports nothing of it.


def _outage_context(session: Session, case: Case) -> dict[str, str | int]:
    """The agents' notification's words on the outage ``case`` belongs to: ``outage``, the
    main case's folio when ``case`` is a report ("" otherwise), ``outage_status``, that
    main case's status ("open", "resolved", "closed"; "" when none): "work that case" is
    said while it is open only, and ``outage_reports``, how many reports ``case`` has as
    a main case (any status; 0 for none)."""
    main = session.get(Case, case.outage_id) if case.outage_id is not None else None
    reports = 0
    if case.id is not None and main is None:
        # On the driver's cursor: every notice to agents asks, a new case's too (the
        # ORM's count cost about 250 µs a message on the ingest path). A report joined
        # earlier in this transaction is counted: flushed first, as the ORM would.
        session.flush()
        reports = run(session, _REPORTS_OF, {"id": case.id}).scalar() or 0
    return {
        "outage": main.folio if main is not None else "",
        "outage_status": str(main.status) if main is not None else "",
        "outage_reports": int(reports),
    }


_REPORTS_OF = Prepared(
    sa.select(sa.func.count()).select_from(_CASES).where(_CASES.c.outage_id == sa.bindparam("id"))
)


def is_outage_main(session: Session, case: Case) -> bool:
    """Whether ``case`` is the main case of an outage: some case is a report of it."""
    if case.id is None:
        return False
    found = session.exec(select(Case.id).where(col(Case.outage_id) == case.id).limit(1)).first()
    return found is not None


def open_reports(session: Session, main: Case) -> list[Case]:
    """The reports of ``main``'s outage still open (not resolved, closed or merged), locked
    in id order (PostgreSQL: a customer's reply reopening or closing one waits)."""
    if main.id is None:
        return []
    return list(
        session.exec(
            select(Case)
            .where(
                col(Case.outage_id) == main.id,
                col(Case.status) == CaseStatus.OPEN,
                col(Case.merged_into_id).is_(None),
            )
            .order_by(col(Case.id))
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
    )


def relay(
    session: Session,
    settings: Settings,
    case: Case,
    text: str,
    *,
    agent_name: str,
    attachments: Sequence[FileAttachment] = (),
) -> bool:
    """Send an agent's words and files to the customer from the mailbox, in the case's thread.

    Returns whether they go out: False without a customer address, or when a
    guard held the notice (``limits.max_relays_per_case_per_hour``, a loop).
    """
    if not case.customer:
        return False
    # The reply goes "from the support address": an agent's display name that holds
    # their address ("ana@…" <ana@…>, "Ana (ana@…)") would hand it to the customer,
    # who would then write to the agent directly, outside the case. Signed with the
    # company's name alone then, as Zammad signs with the agent's name only.
    name = agent_name if "@" not in agent_name and not has_link(agent_name) else ""
    queued = queue_notice(
        session,
        settings,
        case,
        "relay",
        to=case.customer,
        context={"text": text, "agent_name": name},
        attachments=attachments,
    )
    return not queued.held
