"""An inbound message and the case it reaches: what the ingest path (mailcase.service)
and an agent's mail (mailcase.agentmail) both ask of one.

Which case answers for a case a message names (the one a merged case joined;
none for an erased one), whether a signed Message-ID was seen in other hands,
whether the message went to the case's customer too, which of its files fit
in a notice and how its size reads, and recording it on the case with its
attachments. Nothing here decides what a message does: that is triage's and
the callers'. ``record_inbound`` writes in the caller's session, so the
message is recorded in the same transaction as the rest of what it caused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlmodel import Session

from mailcase import casework, merging
from mailcase.inbound import Attachment, InboundMail
from mailcase.models import Case, CaseMessage, KeyValue, StoredAttachment
from mailcase.quoting import customer_text, strip_quoted
from mailcase.store import as_utc, hashed_key, insert_values, utcnow
from mailcase.wire import FileAttachment

if TYPE_CHECKING:
    from mailcase.service import Runtime


def _workable(case: Case | None) -> Case | None:
    """``case``, or None when its customer's data was erased (mailcase.erasure): mail
    naming it, by folio, thread or signed id, is told nothing of it and joins nothing,
    as if it named no case (not even a link: nothing ties new mail to the erased)."""
    return None if case is None or casework.is_erased(case) else case


def answering(session: Session, case: Case | None) -> Case | None:
    """The case that answers for ``case``: the one a merged case joined (down a chain of
    merges), none for an erased one (:func:`_workable`), else ``case`` itself."""
    return _workable(merging.merged_target(session, case) if case is not None else None)


def exposed(session: Session, proof: str) -> bool:
    """Whether the signed Message-ID ``proof`` was seen in other hands (service._note_exposed)."""
    return session.get(KeyValue, hashed_key("exposed-id", proof)) is not None


def to_customer(case: Case, mail: InboundMail) -> bool:
    """Whether ``mail`` went to ``case``'s customer too (To or Cc)."""
    return bool(case.customer) and (case.customer in mail.to or case.customer in mail.cc)


def fitting(attached: Sequence[Attachment], limit: int) -> tuple[list[FileAttachment], list[str]]:
    """Of ``attached``, in order, the files that fit in ``limit`` bytes together, and the
    names of those that did not (:func:`casework.fitting`)."""
    candidates = [
        (a.filename, a.content_type, a.size, lambda data=a.payload: data) for a in attached
    ]
    return casework.fitting(candidates, limit)


def megabytes(size: int) -> str:
    """``size`` bytes for people: "5 MB", "2.5 MB", "800 KB" ("" for 0)."""
    if not size:
        return ""
    value, unit = (size / 1_000_000, "MB") if size >= 1_000_000 else (size / 1000, "KB")
    return f"{value:,.1f}".removesuffix(".0") + f" {unit}"


def _inbound_text(mail: InboundMail, kind: str) -> str:
    """The text a ``kind`` message keeps on its case: a customer's forward whole
    (:func:`customer_text`), anyone else's words without quoted history."""
    if kind == "customer":
        return customer_text(mail.text, mail.subject)
    return strip_quoted(mail.text)


def record_inbound(
    rt: Runtime,
    session: Session,
    case: Case,
    mail: InboundMail,
    raw_sha: str,
    kind: str,
    *,
    text: str | None = None,
) -> int:
    """Record ``mail`` on ``case`` as a ``kind`` message, with its attachments; its id."""
    assert case.id is not None
    message_id = insert_values(
        session,
        CaseMessage,
        case_id=case.id,
        direction="in",
        kind=kind,
        from_addr=mail.sender,
        to_addrs=", ".join(mail.to + mail.cc),
        subject=mail.subject,
        date=as_utc(mail.date) or utcnow(),
        message_id=mail.message_id,
        text=_inbound_text(mail, kind) if text is None else text,
        raw_sha256=raw_sha,
    )
    for attachment in mail.attachments:
        session.add(
            StoredAttachment(
                case_message_id=message_id,
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=attachment.size,
                sha256=rt.blobs.put(attachment.payload),
            )
        )
    return message_id
