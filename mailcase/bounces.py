"""Delivery reports (bounces) on mailcase's own notices, recorded on their cases.

RFC 3464 reports and the plain-text bounces of Exim, qmail and Gmail come back to
the support mailboxes; ingest hands each to :func:`record_bounce`, which finds the
notice it reports on and marks it failed (telling the agents once), or notes a
delay on the case.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event
from sqlmodel import Session, col, select

from mailcase import casework, metrics
from mailcase.config import Settings
from mailcase.dsn import DeliveryReport, parse_dsn, readable_text
from mailcase.models import Case, CaseMessage, Notice, NoticeStatus
from mailcase.notices import AGENT_KINDS, queue_notice
from mailcase.store import utcnow
from mailcase.triage import CaseRef

_BOUNCE_IDS_LOOKED_UP = 20


def record_bounce(
    settings: Settings, session: Session, raw: bytes, named: CaseRef | None = None
) -> Case | None:
    """A delivery report on one of our notices, recorded on its case; that case, or None.

    A failure (a recipient with RFC 3464 ``Action: failed``, or a bounce with no
    per-recipient status at all, as Exim, qmail and Gmail write them) marks the
    notice failed, notes it on the case and tells the agents once. A delay
    (``Action: delayed``) or a success (``delivered``, ``relayed``, ``expanded``)
    leaves the notice as it is and tells nobody: it is only noted on the case
    as a system message, so whoever wonders why the customer has not seen the
    acknowledgement can read that it is late. No report opens a case or is
    answered; a report naming none of our notices returns None.

    A bounce that returns no Message-ID of ours but names a case (``named``: the
    folio in its subject, as Exchange 2003 and Domino write "Undeliverable: [Folio
    ...]") is tied to that case's latest notice to a recipient it names.
    """
    report = parse_dsn(raw)
    # One query, on the first few ids: a report returns one message, and a forged
    # "bounce" folding 100,000 ids into its Message-ID field cost one SELECT each
    # (half a minute on PostgreSQL), and on PostgreSQL an IN list is capped too.
    wanted = list(dict.fromkeys(report.message_ids))[:_BOUNCE_IDS_LOOKED_UP]
    found = (
        session.exec(select(Notice).where(col(Notice.message_id).in_(wanted))).all()
        if wanted
        else []
    )
    by_id = {n.message_id: n for n in found}
    notices = [by_id[mid] for mid in wanted if mid in by_id]
    if not notices and named is not None:
        notices = _notices_named_in(session, named, report, raw)
    for notice in notices:
        if notice.case_id is None:
            continue
        case = session.get(Case, notice.case_id)
        if case is None or casework.is_erased(
            case
        ):  # nothing more is recorded of an erased customer
            return None
        worst = report.worst
        if not report.is_failure and worst is not None:
            # RFC 3464 section 2.3.3: "delayed" is a warning from an MTA that keeps
            # trying, and the other actions are successes; if it gives up later,
            # its "failed" report marks the notice then.
            later = "; the sending server keeps trying" if worst.action == "delayed" else ""
            casework.record(
                session,
                case,
                "system",
                f"delivery of the {notice.kind} to {worst.recipient} {worst.action}: "
                f"{worst.status} {worst.diagnostic}".strip()
                + later,
            )
            return case
        failed = worst if worst is not None and worst.failed else None
        recipient = failed.recipient if failed else notice.rcpt_to
        status = failed.status if failed else ""
        diagnostic = failed.diagnostic if failed else ""
        already = notice.status == NoticeStatus.FAILED and notice.last_error.startswith("bounced")
        if not already:
            # Counted once committed: a poll that fails after this reads the bounce again.
            event.listen(
                session,
                "after_commit",
                lambda _session: metrics.NOTICES.labels("bounced").inc(),
                once=True,
            )
        notice.status = NoticeStatus.FAILED
        notice.last_error = f"bounced: {recipient} {status} {diagnostic}".strip()
        session.add(notice)
        casework.record(
            session,
            case,
            "system",
            f"failed delivery of the {notice.kind} to {recipient}: {status} {diagnostic}".strip(),
        )
        notify = settings.agents.notify
        if notify and not already and notice.kind not in AGENT_KINDS:
            queue_notice(
                session,
                settings,
                case,
                "delivery_failed",
                to=notify,
                context={
                    "recipient": recipient,
                    "status": status,
                    "diagnostic": diagnostic,
                    "notice_kind": notice.kind,
                },
            )
        return case
    return None


def _notices_named_in(
    session: Session, named: CaseRef, report: DeliveryReport, raw: bytes
) -> list[Notice]:
    """The latest notice of case ``named``, sent in the last week, that went to a
    recipient ``report`` names (or, for a report with no per-recipient status, whose
    address is in its text), and whose whole subject the bounce quotes.

    A folio alone is public enough (a customer can show it to anyone): the subject
    of the notice, which repeats the customer's own, is what a stranger forging a
    bounce to mark notices failed would not know.
    """
    failed = {r.recipient for r in report.recipients}
    text = readable_text(raw)  # subjects with accents are encoded in the bounce
    since = utcnow() - BOUNCE_WINDOW
    rows = session.exec(
        select(Notice, CaseMessage.subject)
        .join(CaseMessage, col(CaseMessage.notice_id) == col(Notice.id))
        .where(
            Notice.case_id == named.id,
            col(Notice.status).in_((NoticeStatus.SENT, NoticeStatus.FAILED)),
            col(Notice.created_at) >= since,
        )
        .order_by(col(Notice.id).desc())
        .limit(20)
    ).all()
    for notice, subject in rows:
        rcpt = notice.rcpt_to.lower()
        named_rcpt = rcpt in failed or (not failed and rcpt in text)
        if named_rcpt and " ".join(subject.lower().split()) in text:
            return [notice]
    return []


BOUNCE_WINDOW = timedelta(days=7)  # a bounce comes back within minutes, retries within days
