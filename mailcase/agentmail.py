"""An agent's mail on a case: run its commands, or relay its words to the customer.

A verified agent's reply (triage's ``Role.AGENT``) reaches :func:`agent_message`
inside the message's transaction (mailcase.service); nothing here commits. Every
command of a reply is checked before any runs: with one bad command nothing runs,
the reply is kept as a note and the agent is told why (``command_error``). What
reaches the customer is the agent's own words only (not the quoted notice, nor
the signature their mail client adds; a canned reply below them) and only the
files that may go on (never an attached message, nor a file holding a signed id
of ours). Words meant for others (a support mailbox only in copy, an answer to
one of our side notices) are kept as a note. Whatever did not reach the customer,
and why, the agent is told (``not_relayed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from mailcase import casemail, casework, merging, outages, visitdates, visits, waits
from mailcase.classify import OWN_ADDRESS
from mailcase.commands import Command, CommandKind, ParsedCommands, command_kind, parse_commands
from mailcase.config import Settings
from mailcase.errors import MessageError, TemplateError
from mailcase.folio import find_folios
from mailcase.inbound import Attachment, InboundMail
from mailcase.logs import get_logger
from mailcase.models import Case, CaseMessage, CaseStatus, KeyValue, Notice
from mailcase.msgid import proofs_in, signed_ids_in
from mailcase.notices import base_context, queue_notice, signing_key
from mailcase.quoting import AgentText, agent_text, shared_signature, without_known_signature
from mailcase.replies import render_reply, reply_names
from mailcase.store import as_utc, case_by_folio, hashed_key, insert_if_absent, utcnow
from mailcase.triage import Decision, takes_replies
from mailcase.wire import FileAttachment

if TYPE_CHECKING:
    from mailcase.service import Runtime


def _only_copied(session: Session, settings: Settings, case: Case, mail: InboundMail) -> bool:
    """Whether ``mail`` was addressed to others with a support mailbox only in Cc: one of
    our mailboxes is in its Cc, none in its To, and neither ``case``'s customer nor a
    participant of it (the customer's side: a relative they copied) is a recipient.

    Mail that names none of our mailboxes (an alias or an old address delivered into
    the mailbox, a Bcc) is not taken for copied: it came to the desk all the same, and
    was relayed before this rule existed.
    """
    mailboxes = {m.address for m in settings.mailboxes.values()}
    if mailboxes.isdisjoint(mail.cc) or not mailboxes.isdisjoint(mail.to):
        return False
    if casemail.to_customer(case, mail) or case.id is None:
        return False
    return casework.participants(session, case.id).isdisjoint((*mail.to, *mail.cc))


def agent_message(
    rt: Runtime, session: Session, case: Case, mail: InboundMail, raw_sha: str
) -> None:
    """A verified agent wrote on ``case``: run its commands, or relay its words."""
    settings = rt.settings
    written, parsed = _what_the_agent_wrote(session, mail)
    # One clock for the whole reply: a visit checked at 09:59:59 and booked at
    # 10:00:00 was refused inside the transaction, and the reply quarantined.
    now_local = utcnow().astimezone(settings.folio.zone)
    problems = _problems(session, settings, case, written, parsed, now_local)
    canned = ""
    if not problems:
        canned, problems = _rendered_canned_reply(settings, case, parsed.commands)
    if problems:
        _refuse(rt, session, case, mail, raw_sha, problems)
        return
    reply = _where_the_words_go(session, settings, case, mail, parsed, canned, now_local)
    entry_kind = "note" if reply.is_note else "agent"
    casemail.record_inbound(rt, session, case, mail, raw_sha, entry_kind, text=reply.own)
    waited_until = case.pending_until  # put back if #pendiente's question reaches nobody
    _run_commands(session, settings, case, mail, reply)
    if reply.commands:
        if reply.news and not reply.text:
            # An empty "#masivo aviso" (the news written below the quote, or forgotten):
            # nothing went to anyone, and the agent is told, as for any empty reply.
            not_relayed(
                session, settings, case, mail, "no_text",
                attachments=[a.filename for a in _agent_files(mail)],
            )  # fmt: skip
            return
        if not reply.asks and CommandKind.REPLY not in reply.kinds:
            return
    _relay(session, settings, case, mail, reply, waited_until)


def _what_the_agent_wrote(session: Session, mail: InboundMail) -> tuple[AgentText, ParsedCommands]:
    """The new text of the agent's ``mail`` (:func:`quoting.agent_text`, with the line of
    our notice it still holds) and the commands parsed from it, read without the
    signature the agent's mail client adds (learnt and kept as :func:`_without_signature_of`
    does: the only write here)."""
    # Only what the agent wrote: a reply that is nothing but the quoted notice
    # must not relay the internal notice to the customer. An HTML-only reply
    # is cut where its markup starts the quote, which no attribution wording
    # can hide (inbound.html_texts).
    written = agent_text(mail.text if mail.text_above_quote is None else mail.text_above_quote)
    return written, parse_commands(_without_signature_of(session, mail.sender, written.text))


def _problems(
    session: Session,
    settings: Settings,
    case: Case,
    written: AgentText,
    parsed: ParsedCommands,
    now_local: datetime,
) -> list[dict[str, str]]:
    """What keeps the agent's reply on ``case`` from running, each problem with the line it
    is about, in the order the agent is told them; [] when every command may run.

    Every command is checked here, before any of them runs, at ``now_local`` (the time
    they run at); nothing is changed (the cases a ``#fusionar`` or ``#masivo`` names are
    locked, as for running). A ``#respuesta``'s file is rendered after these pass
    (:func:`_rendered_canned_reply`).
    """
    problems = [{"line": p.line, "problem": p.problem} for p in parsed.problems]
    problems += [
        {"line": c.line, "problem": "unknown_area"}
        for c in parsed.commands
        if c.kind is CommandKind.ROUTE and c.area not in settings.areas
    ]
    problems += [
        {"line": c.line, "problem": "bad_participant"}
        for c in parsed.commands
        if c.kind is CommandKind.PARTICIPANT
        and casework.participant_problem(settings, case, c.address or "")
    ]
    # Only an agent can be responsible for a case: a typo in the address would leave it
    # to nobody while everyone thought it was someone's.
    problems += [
        {"line": c.line, "problem": "unknown_agent"}
        for c in parsed.commands
        if c.kind is CommandKind.ASSIGN
        and c.owner is not None
        and c.owner not in settings.agents.addresses
    ]
    for c in parsed.commands:
        if c.kind is CommandKind.MERGE:
            into = _merge_target(session, settings, c)
            merge_problem = (
                merging.merge_problem(
                    case,
                    into,
                    now_local,
                    source_is_main=casework.is_outage_main(session, case),
                    target_is_main=casework.is_outage_main(session, into),
                )
                if into
                else "unknown_folio"
            )
            if merge_problem:
                problems.append({"line": c.line, "problem": merge_problem})
        elif c.kind is CommandKind.SPAM and not c.stop:
            spam_problem = casework.spam_problem(
                case, is_main=casework.is_outage_main(session, case)
            )
            if spam_problem:
                problems.append({"line": c.line, "problem": spam_problem})
        elif c.kind is CommandKind.OUTAGE and c.update:
            if not casework.is_outage_main(session, case):
                problems.append({"line": c.line, "problem": "outage_not_main"})
        elif c.kind is CommandKind.OUTAGE and not c.stop:
            main = _merge_target(session, settings, c)
            outage_problem = (
                outages.outage_problem(
                    case, main, case_is_main=casework.is_outage_main(session, case)
                )
                if main
                else "unknown_folio"
            )
            if outage_problem:
                problems.append({"line": c.line, "problem": outage_problem})
    # A canned reply that exists in neither language (mailcase.replies): the agent is
    # told which ones do, in the command_error notice.
    replies = reply_names(settings.templates.directory)
    problems += [
        {"line": c.line, "problem": "unknown_reply"}
        for c in parsed.commands
        if c.kind is CommandKind.REPLY and c.reply not in replies
    ]
    if written.notice_line:  # our notice is in the text, and where it starts is unknown
        problems.append({"line": written.notice_line, "problem": "quoted_notice"})
    if not problems:  # what the case's state and the reply's other commands forbid
        problems += [
            {"line": line, "problem": code}
            for line, code in casework.command_problems(
                parsed.commands,
                parsed.text,
                case.status,
                now_local,
                visit_ahead=visitdates.visit_cancellable(case, now_local),
                outage_open=outages.open_outage_main(session, case) is not None,
                reports_open=outages.has_open_reports(session, case),
                spam=case.spam_at is not None,
            )
        ]
    return problems


def _rendered_canned_reply(
    settings: Settings, case: Case, commands: Sequence[Command]
) -> tuple[str, list[dict[str, str]]]:
    """The canned reply a ``#respuesta`` of ``commands`` names, rendered for ``case``
    (:func:`_canned_reply`: "" without one), and no problem; or "" and the
    ``reply_broken`` problem of that line when its file does not render (logged as
    ``canned_reply_broken``): a file that does not render stops nothing else."""
    # "#respuesta": rendered before anything runs. An admin's file that does not render
    # (a typo, a name no case has, Latin-1, or a failure on this case's data, such as
    # a name's first word when there is no name) raised out of this message: every
    # poll of the mailbox stopped on it, or the agent's reply was quarantined unsaid.
    # The agent is told instead, and the poll goes on.
    try:
        return _canned_reply(settings, case, commands), []
    except (TemplateError, MessageError) as exc:
        line = next(c.line for c in commands if c.kind is CommandKind.REPLY)
        get_logger().warning("canned_reply_broken", folio=case.folio, error=str(exc))
        return "", [{"line": line, "problem": "reply_broken"}]


def _refuse(
    rt: Runtime,
    session: Session,
    case: Case,
    mail: InboundMail,
    raw_sha: str,
    problems: list[dict[str, str]],
) -> None:
    """Keep the agent's ``mail`` on ``case`` as a note, and tell the agent its ``problems``
    (a ``command_error`` notice): none of its commands runs, none of its words reaches
    the customer."""
    settings = rt.settings
    # One bad command and nothing runs: a typo such as "#ntoa" must not
    # let an internal note reach the customer as relayed text, and a
    # misspelt area must not leave the resolution above it half done.
    casemail.record_inbound(rt, session, case, mail, raw_sha, "note")
    queue_notice(
        session,
        settings,
        case,
        "command_error",
        to=mail.sender,
        context={
            "problems": problems,
            # The areas are listed when a line about one went wrong.
            "about_areas": any(command_kind(str(p["line"])) is CommandKind.ROUTE for p in problems),
            # And the agents, when an "#asignar" named someone who is not one.
            "agents": list(settings.agents.addresses),
            "about_agents": any(p["problem"] == "unknown_agent" for p in problems),
            # And the canned replies, when a "#respuesta" named none of them.
            "about_replies": any(p["problem"] == "unknown_reply" for p in problems),
        },
        in_reply_to=mail.message_id,
    )


@dataclass(frozen=True)
class _Reply:
    """An agent's reply whose commands all passed their checks, and where its words go
    (:func:`_where_the_words_go`): what the steps after the checks share."""

    commands: tuple[Command, ...]
    kinds: frozenset[CommandKind]
    own: str  # the agent's own words: what the case keeps as their message
    canned: str  # the canned reply a "#respuesta" named, rendered; "" without one
    text: str  # what is relayed: the agent's own words, then the canned reply
    now_local: datetime  # one clock for the whole reply
    copied: bool  # addressed to others, with a support mailbox only in copy
    side: bool  # a remark sent back to one of our side notices
    asks_to_wait: bool  # "#pendiente" with a question to relay
    news: bool  # "#masivo aviso": news of the outage, for every report's customer too
    asks: bool  # a question or news to relay, whatever the other commands
    is_note: bool  # kept as a note on the case, not as the agent's answer


def _where_the_words_go(
    session: Session,
    settings: Settings,
    case: Case,
    mail: InboundMail,
    parsed: ParsedCommands,
    canned: str,
    now_local: datetime,
) -> _Reply:
    """The checked reply ``parsed`` from the agent's ``mail`` on ``case``, with what is to be
    relayed and whether its words are a note (for colleagues), an answer to the customer,
    or neither (commands only)."""
    kinds = frozenset(c.kind for c in parsed.commands)
    own = parsed.text.strip()
    # "#respuesta": the canned reply goes below the agent's own words, as one relayed reply
    # (the question the case waits on, with "#pendiente"). The case keeps the agent's own
    # words as their message (the relay notice keeps the whole text): the signature their
    # mail client adds is learnt from the end of those (_without_signature_of).
    text = "\n\n".join(part for part in (own, canned) if part)
    # Words addressed to others (a colleague, a contractor, the agents' list), a support
    # mailbox only in copy: the agent told them something, not the customer. Kept as a
    # note, as Zammad keeps such mail as an internal article; the agent is told. Only
    # a reply without commands: a command was typed on purpose, and runs as in any
    # reply, with what it sends the customer (#resolver's causes, #pendiente's question).
    copied = not parsed.commands and _only_copied(session, settings, case, mail)
    # A remark sent back to one of our side notices ("Yo no envié eso", "Enterado, se lo
    # llevo en la visita") is for colleagues, not the customer: kept as a note.
    side = not parsed.commands and not copied and _answers_a_side_notice(session, settings, mail)
    # "#pendiente" relays its text as a plain reply does: the question the case waits on.
    asks_to_wait = bool(text) and any(
        c.kind is CommandKind.PENDING and not c.stop for c in parsed.commands
    )
    # "#masivo aviso" too, and to every open report's customer: news of the outage.
    news = any(c.kind is CommandKind.OUTAGE and c.update for c in parsed.commands)
    asks = asks_to_wait or (bool(text) and news)
    is_note = bool(
        side
        or copied
        or CommandKind.NOTE in kinds
        or (kinds and not kinds & _RELAYING and not asks)
    )
    return _Reply(
        commands=parsed.commands,
        kinds=kinds,
        own=own,
        canned=canned,
        text=text,
        now_local=now_local,
        copied=copied,
        side=side,
        asks_to_wait=asks_to_wait,
        news=news,
        asks=asks,
        is_note=is_note,
    )


def _run_commands(
    session: Session, settings: Settings, case: Case, mail: InboundMail, reply: _Reply
) -> None:
    """Carry out every command of the checked ``reply`` on ``case``, in order
    (:func:`_run_command`, at ``reply.now_local``). A resolution or a visit makes the agent
    who wrote ``mail`` follow up the case, and each report the resolution resolved with
    it, unless the reply said who does; then the agent is told what no customer was told
    (:func:`_tell_untold_changes`)."""
    by = mail.sender
    now_local = reply.now_local
    visit_was_ahead = visitdates.visit_cancellable(case, now_local)
    # The reports a resolution of this main case resolves with it, with a visit still
    # ahead: a phone one's agent is told of that visit's cancellation too, as when it is
    # resolved by hand (untold_changes).
    visits_ahead = (
        {
            report.id
            for report in outages.outage_reports(session, case)
            if visitdates.visit_cancellable(report, now_local)
        }
        if CommandKind.RESOLVE in reply.kinds
        else set()
    )
    # "#resolver": the reply's words are the causes, sent in the resolution, and nothing
    # else is relayed (agent_message); the files the agent attached go with it, or were
    # dropped with nobody told.
    files, too_big, withheld = (
        _resolution_files(session, settings, case, mail)
        if CommandKind.RESOLVE in reply.kinds
        else ([], [], [])
    )
    reports: list[Case] = []  # of the outage this case is the main case of, resolved with it
    for command in reply.commands:
        reports += _run_command(
            session,
            settings,
            case,
            command,
            reply.own,
            by,
            now_local,
            note=reply.own if reply.is_note else "",
            files=files,
        )
    if too_big or withheld:  # the agent learns which files the resolution went without
        not_relayed(
            session, settings, case, mail, "attachments",
            attachments=too_big + withheld, withheld=withheld,
        )  # fmt: skip
    if reply.kinds & _ANSWERS and CommandKind.ASSIGN not in reply.kinds:
        # A resolution or a visit answers the customer (on a phone case the agent is
        # told to call them): its agent follows the case up, unless the same reply
        # said who does.
        casework.assign_on_answer(session, settings, case, by)
        # So does each report its resolution resolved, as if resolved one by one: a
        # customer's reply on one reopens it with nobody following it up otherwise.
        for report in reports:
            casework.assign_on_answer(session, settings, report, by)
    if reply.commands:
        _tell_untold_changes(
            session, settings, case, mail, reply, reports, visit_was_ahead, visits_ahead
        )


def _tell_untold_changes(
    session: Session,
    settings: Settings,
    case: Case,
    mail: InboundMail,
    reply: _Reply,
    reports: list[Case],
    visit_was_ahead: bool,
    visits_ahead: set[int | None],
) -> None:
    """Tell the agent who wrote ``mail`` (``not_relayed``, ``no_customer``) which changes the
    commands of ``reply`` made that reached nobody: on ``case`` when it has no customer
    address (a phone case: the agent must call), and under the folio of each of the
    ``reports`` its resolution resolved that has none. ``visit_was_ahead`` and
    ``visits_ahead``: the visits still ahead before the commands ran, on ``case`` and
    on those reports."""
    now_local = reply.now_local
    untold = casework.untold_changes(
        reply.commands,
        visit_cancelled=visit_was_ahead and not visitdates.visit_cancellable(case, now_local),
    )
    if untold and not case.customer:
        # A phone case: the resolution or visit reached nobody; the agent must call.
        not_relayed(session, settings, case, mail, "no_customer", untold=untold)
    for report in reports:
        if not report.customer:  # a phone report of the outage: the same, under its folio
            cancelled = report.id in visits_ahead and not visitdates.visit_cancellable(
                report, now_local
            )
            untold_there = casework.untold(resolved=True, booked=False, visit_cancelled=cancelled)
            not_relayed(session, settings, report, mail, "no_customer", untold=untold_there)


def _resolution_files(
    session: Session, settings: Settings, case: Case, mail: InboundMail
) -> tuple[list[FileAttachment], list[str], list[str]]:
    """The files of the agent's ``mail`` that go to ``case``'s customer with its resolution,
    those too big and those withheld, as a reply's are judged (:func:`_relayable`); none,
    and none to name, when there is no customer to send them to (a phone case: the agent
    is told to call), or when the agent wrote to the customer directly (they have them)."""
    if not case.customer or casemail.to_customer(case, mail):
        return [], [], []
    return _relayable(
        _agent_files(mail),
        settings.notices.max_relayed_attachment_bytes,
        signing_key(session, settings),
    )


def _relay(
    session: Session,
    settings: Settings,
    case: Case,
    mail: InboundMail,
    reply: _Reply,
    waited_until: datetime | None,
) -> None:
    """Send the words of ``reply`` on to whoever they are for: a ``#masivo aviso``'s news to
    every open report's customer of the outage whose main case ``case`` is; the words and
    the files that may go on to ``case``'s customer, or only the canned reply when the
    agent's ``mail`` went to them already; nothing when it was meant for others (copied,
    or an answer to a side notice). A ``#pendiente`` whose question reached nobody puts
    the case's wait back to ``waited_until``. The agent is told what did not reach a
    customer, and why (:func:`not_relayed`)."""
    by = mail.sender
    reached_a_report = False
    news_kept: list[list[str]] = [[], []]  # the news' files left out: too big, withheld
    # What the agent attached, not a signature's logo (_agent_files), and of it what may
    # go on to a customer: judged once, for the reports' customers and the case's alike.
    attached = _agent_files(mail)
    relayable: tuple[list[FileAttachment], list[str], list[str]] | None = None
    if reply.news:
        # Each report's customer, under their own folio; the main case's, below, as any reply.
        relayable, reached_a_report = _send_outage_news(
            session, settings, case, mail, reply.text, attached
        )
        _, *news_kept = relayable
    # Written straight to the customer with the mailbox in Cc: already sent, and an
    # answer all the same (the reminders count it as one).
    if casemail.to_customer(case, mail):
        _after_mail_to_customer(session, settings, case, mail, reply)
        return
    if reply.copied:  # nobody was answered: no owner taken either
        not_relayed(session, settings, case, mail, "copied")
        return
    if reply.side:
        not_relayed(session, settings, case, mail, "side_notice")
        return
    reason, attachments, withheld = _relay_to_customer(
        session, settings, case, mail, reply, attached, relayable
    )
    # "#pendiente"'s question that reached nobody (held, a phone case): the case must not
    # wait for an answer to it, nor tell the customer at the deadline they gave none.
    # A wait already running (a question that did reach them, or asked by phone) stands.
    dropped = reply.asks_to_wait and reason in ("held", "no_customer", "closed")
    if dropped:
        waits.restore_pending(
            session,
            settings,
            case,
            waited_until,
            by=by,
            why="the question did not reach the customer",
        )
    if reason == "no_customer" and reached_a_report:
        # A main case with no customer address (the outage opened by the desk, as README
        # suggests): the news went to the reports' customers, and "your reply reached
        # nobody" would be false; the phone reports were named one by one above.
        reason = ""
    outage_news = reply.news and reached_a_report
    if outage_news and not reason and (news_kept[0] or news_kept[1]):
        # The files the news went without, to every report's customer: on a phone main
        # case nothing else says so (its own notice is the one suppressed just above).
        withheld = news_kept[1]
        reason, attachments = "attachments", news_kept[0] + withheld
    if reason:  # the agent learns what did not reach the customer
        not_relayed(
            session, settings, case, mail, reason, attachments=attachments, withheld=withheld,
            pending_dropped=dropped, outage_news=outage_news and reason == "attachments",
        )  # fmt: skip


def _send_outage_news(
    session: Session,
    settings: Settings,
    case: Case,
    mail: InboundMail,
    text: str,
    attached: list[Attachment],
) -> tuple[tuple[list[FileAttachment], list[str], list[str]], bool]:
    """Send ``text``, a ``#masivo aviso`` on the main case ``case``, with those of the agent's
    ``attached`` files that may go on, to each open report's customer, under the report's
    folio; tell the agent under each report's folio whose customer it did not reach. The
    files judged (:func:`_relayable`: sent, too big, withheld), and whether the news
    reached a report's customer."""
    relayable = _relayable(
        attached, settings.notices.max_relayed_attachment_bytes, signing_key(session, settings)
    )
    files = relayable[0]
    told = outages.tell_outage_reports(
        session, settings, case, text, agent_name=mail.sender_name, attachments=files
    )
    # The agent learns, under each report's folio, whose customer the news did not
    # reach (a phone report: call them; held: a loop, most likely), as for one case.
    for report, why in told:
        if why:
            not_relayed(session, settings, report, mail, why, outage_main=case.folio)
    return relayable, any(not why for _, why in told)


def _after_mail_to_customer(
    session: Session, settings: Settings, case: Case, mail: InboundMail, reply: _Reply
) -> None:
    """The agent's ``mail`` went to ``case``'s customer directly (the mailbox in Cc): the
    agent follows the case up, unless the reply said who does, and the canned reply it
    named is relayed alone; nothing more goes to a case marked spam. The agent is told
    when that canned reply did not go (``not_relayed``: spam, held)."""
    by = mail.sender
    if case.spam_at is not None:  # the agent wrote to the spammer; nothing more goes
        if reply.canned:
            not_relayed(session, settings, case, mail, "spam")
        return
    if CommandKind.ASSIGN not in reply.kinds:
        casework.assign_on_answer(session, settings, case, by)
    # The customer has the agent's words, from the agent; the canned reply they named
    # is only in mailcase's hands: relayed alone (it was skipped, and nobody told).
    if reply.canned and not casework.relay(
        session, settings, case, reply.canned, agent_name=mail.sender_name
    ):
        # Their own mail did reach the customer: only the canned reply is to send again.
        name = next((c.reply for c in reply.commands if c.reply), "") or ""
        not_relayed(session, settings, case, mail, "held", canned_only=name)


def _relay_to_customer(
    session: Session,
    settings: Settings,
    case: Case,
    mail: InboundMail,
    reply: _Reply,
    attached: list[Attachment],
    relayable: tuple[list[FileAttachment], list[str], list[str]] | None,
) -> tuple[str, list[str], list[str]]:
    """Relay the text of ``reply`` to ``case``'s customer with those of the agent's
    ``attached`` files that may go on (``relayable``: as judged for the outage's news
    already), when there is text and a customer to take it; the agent who wrote ``mail``
    then follows the case up, unless the reply said who does. What did not reach the
    customer: the reason ("" when all did), the files to name, and of those the ones
    withheld."""
    by = mail.sender
    attachments = [a.filename for a in attached]
    reason = (
        "no_text"
        if not reply.text
        else "no_customer"
        if not case.customer
        # Marked spam (#spam): its "customer" is whoever the spammer forged; a case
        # resolved before the mark would take replies by the rule below.
        else "spam"
        if case.spam_at is not None
        # The customer's answer to it would open a new case (triage: a closed case
        # takes no more mail), far from the question the agent asked.
        else "closed"
        if case.status == CaseStatus.CLOSED
        and not takes_replies(
            case.status, as_utc(case.resolved_at), utcnow(), settings.cases.reopen_days
        )
        else ""
    )
    withheld: list[str] = []
    if not reason:
        sent, too_big, withheld = relayable or _relayable(
            attached, settings.notices.max_relayed_attachment_bytes, signing_key(session, settings)
        )
        if casework.relay(
            session, settings, case, reply.text, agent_name=mail.sender_name, attachments=sent
        ):
            kept = too_big + withheld
            reason, attachments = ("attachments", kept) if kept else ("", [])
            if CommandKind.ASSIGN not in reply.kinds:  # "#asignar nadie" keeps the case nobody's
                casework.assign_on_answer(session, settings, case, by)
        else:
            reason, withheld = "held", []  # max_relays_per_case_per_hour: a loop, most likely
    return reason, attachments, withheld


# The commands whose reply's text reaches the customer: a resolution's causes, a canned
# reply below the agent's words (and "#pendiente"'s question, when it has one).
_RELAYING = frozenset({CommandKind.RESOLVE, CommandKind.REPLY})


def _canned_reply(settings: Settings, case: Case, commands: Sequence[Command]) -> str:
    """The canned reply a ``#respuesta`` of ``commands`` names, rendered for ``case`` in its
    language (:func:`replies.render_reply`, which falls back to the other language only
    when the reply lacks the case's); "" without one, or when its file was removed since
    the name was checked. Raises as :func:`replies.render_reply` does."""
    for command in commands:
        if command.kind is not CommandKind.REPLY or command.reply is None:
            continue
        rendered = render_reply(
            command.reply,
            case.language,
            base_context(settings, case),
            override=settings.templates.directory,
        )
        if rendered is not None:
            return rendered.text
    return ""


# The commands that answer the customer (a resolution, a visit booked or called off):
# with one, an agent's reply makes them the owner of a case nobody owns (auto_assign).
_ANSWERS = frozenset({CommandKind.RESOLVE, CommandKind.VISIT})


# Notices that tell an agent about one of their own replies or a delivery: a reply to
# one is never the customer's to read. The forged-mail warning (unverified_agent) is
# one too, unless the case's notifications were exposed: then it asks for the
# agent's words as a reply to itself, the one proof left.
# An assignment notice shows a colleague's note ("es cliente molesto"): its natural
# answer, "Enterado, le llamo", is for that colleague, never the customer.
SIDE_NOTICE_KINDS = ("command_error", "not_relayed", "delivery_failed", "assigned")


def _answers_a_side_notice(session: Session, settings: Settings, mail: InboundMail) -> bool:
    """Whether ``mail`` answers one of our side notices (its In-Reply-To):
    :data:`SIDE_NOTICE_KINDS`, or a forged-mail warning about a case whose
    notifications still prove an agent."""
    if not mail.in_reply_to:
        return False
    answered = session.exec(
        select(Notice.kind, Notice.case_id).where(col(Notice.message_id).in_(mail.in_reply_to[:5]))
    ).all()
    for kind, case_id in answered:
        if kind in SIDE_NOTICE_KINDS:
            return True
        if kind == "unverified_agent" and case_id is not None:
            notified = session.exec(
                select(Notice.message_id).where(
                    Notice.case_id == case_id, Notice.kind == "agent_notification"
                )
            ).all()
            proofs = proofs_in(signing_key(session, settings), notified)
            if not any(casemail.exposed(session, proof) for _, proof in proofs):
                return True
    return False


INLINE_PHOTO_BYTES = 64 * 1024  # an inline image this large is a photo, not a logo


def _agent_files(mail: InboundMail) -> list[Attachment]:
    """What an agent attached to ``mail``, not a signature's logo. Apple Mail (and a
    screenshot pasted in Outlook or Gmail) puts a photo in the HTML as an inline image:
    one that large is a photo, and went nowhere, with nobody told."""
    return [a for a in mail.attachments if not a.inline or _inline_photo(a)]


def _inline_photo(attachment: Attachment) -> bool:
    """Whether an inline image is a picture the agent meant to send (at least
    :data:`INLINE_PHOTO_BYTES`; a signature's logo is a few kilobytes, and it
    would otherwise go to the customer with every reply)."""
    return attachment.content_type.startswith("image/") and attachment.size >= INLINE_PHOTO_BYTES


def _relayable(
    attached: list[Attachment], limit: int, key: bytes
) -> tuple[list[FileAttachment], list[str], list[str]]:
    """The agent's files that go on to the customer, in order, while they fit in ``limit``
    bytes together (``notices.max_relayed_attachment_bytes``); the names of those that
    did not fit; and the names of those withheld (below).

    Never an attached message (Outlook's "attach original message" would hand
    the customer our notice to agents, whose signed Message-ID is an agent's
    proof, with the command help), nor a file inside one (an internal mail's
    ``clientes_afectados.csv`` went out while the mail itself was withheld), nor
    any file that holds a signed id of ours.
    """
    passed: list[Attachment] = []
    withheld: list[str] = []
    for attachment in attached:
        internal = attachment.in_message or attachment.content_type.partition("/")[0] in (
            "message",
            "multipart",
        )
        if internal or _holds_signed_id(attachment.payload, key):
            withheld.append(attachment.filename)
        else:
            passed.append(attachment)
    sent, too_big = casemail.fitting(passed, limit)
    return sent, too_big, withheld


def _without_signature_of(session: Session, agent: str, text: str) -> str:
    """``text`` without the signature ``agent``'s mail client adds (an Outlook signature
    under ``#resolver`` had been sent to the customer as the causes).

    Learnt from the agent's last relayed message (quoting.shared_signature) and
    kept in key_values, so that it is known from then on; a reply that is only
    the signature is left with no words of its own.
    """
    key = hashed_key("signature", agent)
    known = session.get(KeyValue, key)
    earlier = session.exec(
        select(CaseMessage.text)
        .where(
            CaseMessage.from_addr == agent,
            CaseMessage.kind == "agent",  # relayed words, not a refused reply's
            CaseMessage.direction == "in",
        )
        .order_by(col(CaseMessage.id).desc())
        .limit(1)
    ).first()
    learnt = shared_signature(text, earlier) if earlier else ""
    if learnt and (known is None or known.value != learnt):
        if known is not None:
            known.value = learnt
            session.add(known)
        else:  # another instance may learn it at the same time: either will do
            insert_if_absent(session, KeyValue(key=key, value=learnt))
    signature = learnt or (known.value if known is not None else "")
    return without_known_signature(text, signature) if signature else text


def answer_from_own_address(
    session: Session, settings: Settings, case: Case, decision: Decision, mail: InboundMail
) -> bool:
    """Whether ``mail`` is a person's answer to our notice to agents about ``case``, sent
    from one of mailcase's own addresses, with someone to tell (``agents.notify``).

    Classify calls mail from our own addresses automatic (a loop guard); mail that
    names no automatic header (those are reasons of their own) and references a
    signed id of this case was written by someone who read the notice.
    """
    if not settings.agents.notify or not decision.reason.startswith(OWN_ADDRESS):
        return False
    proofs = proofs_in(signing_key(session, settings), mail.thread_ids)
    return any(case_id == case.id for case_id, _ in proofs)


def not_relayed(
    session: Session,
    settings: Settings,
    case: Case,
    mail: InboundMail,
    reason: str,
    *,
    attachments: list[str] | None = None,
    withheld: list[str] | None = None,
    untold: list[str] | None = None,
    to: str | None = None,
    pending_dropped: bool = False,
    outage_news: bool = False,
    outage_main: str = "",
    canned_only: str = "",
) -> None:
    """Tell the agent who wrote ``mail`` (or ``to``) what did not reach the customer, and why
    (``pending_dropped``: so the case does not wait for the customer's answer to it;
    ``outage_news``: the files left out of a ``#masivo aviso``, which every customer of
    the outage got without them; ``outage_main``: ``case`` is a report the ``#masivo aviso``
    of that main case did not reach, the news kept on the main case only, and sending the
    aviso again would reach every other report's customer twice; ``canned_only``: the
    agent wrote to the customer directly and only the canned reply of that name, which
    mailcase relays, was held)."""
    queue_notice(
        session,
        settings,
        case,
        "not_relayed",
        to=to or mail.sender,
        context={
            "reason": reason,
            "attachments": attachments or [],
            "untold": untold or [],
            "withheld": withheld or [],
            "pending_dropped": pending_dropped,
            "outage_news": outage_news,
            "outage_main": outage_main,
            "canned_only": canned_only,
            "own_sender": mail.sender,
            "attachment_limit": casemail.megabytes(settings.notices.max_relayed_attachment_bytes),
        },
        in_reply_to=mail.message_id,
    )


def _holds_signed_id(data: bytes, key: bytes) -> bool:
    """Whether ``data`` holds a Message-ID of ours that proves an agent (mailcase.msgid)."""
    return bool(proofs_in(key, signed_ids_in(data.decode("latin-1"))))


def _run_command(
    session: Session,
    settings: Settings,
    case: Case,
    command: Command,
    text: str,
    by: str,
    now_local: datetime,
    *,
    note: str = "",
    files: Sequence[FileAttachment] = (),
) -> list[Case]:
    """Carry out one checked ``command`` (:func:`casework.command_problems` at ``now_local``,
    the time the visit checks are made at again, so that they cannot disagree). ``note``:
    the reply's text when it is kept as a note (what a new owner is shown); ``files``: what
    a resolution sends its customer with the causes. The reports of an outage a resolution
    of its main case resolved with it; [] for the rest."""
    kind = command.kind
    if kind is CommandKind.RESOLVE and command.outcome is not None:
        return casework.resolve(
            session, settings, case, command.outcome, text,
            by=by, record_cause=False, attachments=files,
        )  # fmt: skip
    if kind is CommandKind.VISIT and command.cancel:
        visits.cancel_visit(session, settings, case, by=by, now_local=now_local)
    elif kind is CommandKind.VISIT and command.visit_date is not None:
        hour = command.visit_time.strftime("%H:%M") if command.visit_time else None
        visits.schedule_visit(
            session, settings, case, command.visit_date, hour, by=by, now_local=now_local
        )
    elif kind is CommandKind.ROUTE and command.area:
        casework.route(session, settings, case, command.area, by=by, note=text)
    elif kind is CommandKind.PARTICIPANT and command.address:
        casework.add_participant(session, settings, case, command.address, by=by)
    elif kind is CommandKind.CLOSE:
        casework.close(session, settings, case, by=by)
    elif kind is CommandKind.REOPEN:
        casework.reopen(session, case, by=by)
    elif kind is CommandKind.TYPE and command.case_type:
        casework.set_type(session, case, command.case_type, by=by)
    elif kind is CommandKind.ASSIGN:
        # "#asignar yo": the agent who wrote, verified as one (triage's Role.AGENT).
        owner = by if command.myself else None if command.nobody else command.owner
        casework.assign(session, settings, case, owner, by=by, note=note)
    elif kind is CommandKind.PENDING and command.stop:
        casework.clear_pending(session, case, by=by)  # the agent's reply says why, if at all
    elif kind is CommandKind.PENDING:
        days = command.days or settings.cases.pending_days
        waits.set_pending(session, settings, case, days, by=by)
    elif kind is CommandKind.MERGE:
        into = _merge_target(session, settings, command)
        assert into is not None  # checked with the reply's other commands
        merging.merge(session, settings, case, into, by=by, now_local=now_local)
    elif kind is CommandKind.SPAM and command.stop:
        casework.unmark_spam(session, case, by=by)
    elif kind is CommandKind.SPAM:
        casework.mark_spam(session, settings, case, by=by)
    elif kind is CommandKind.OUTAGE and command.update:
        pass  # "#masivo aviso": its text is relayed by the caller, to every customer of it
    elif kind is CommandKind.OUTAGE and command.stop:
        outages.leave_outage(session, case, by=by)
    elif kind is CommandKind.OUTAGE:
        main = _merge_target(session, settings, command)
        assert main is not None  # checked with the reply's other commands
        outages.join_outage(session, settings, case, main, by=by)
    # NOTE: the message itself was recorded as a note (relayed, for #pendiente, by the
    # caller); REPLY: the canned text was added to the relayed text by the caller
    # (_canned_reply); nothing else to do.
    return []


def _merge_target(session: Session, settings: Settings, command: Command) -> Case | None:
    """The case a ``#fusionar`` or ``#masivo`` names (read as a subject's folio is), locked,
    or None when it names no folio of a case. A merged one answers with the case it
    joined."""
    folios = find_folios(command.folio or "", settings.folio.prefix)
    found = case_by_folio(session, folios[0], for_update=True) if len(folios) == 1 else None
    # An erased case takes nothing more: it is no case to merge into (as for mail).
    return casemail.answering(session, found)
