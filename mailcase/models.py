"""The database tables (SQLModel). The schema itself is owned by alembic migrations.

* ``Case``: one customer report, with its folio.
* ``FolioCounter``: the last folio number handed out per year.
* ``LedgerEntry``: exactly one row per fetched message (mailbox, UIDVALIDITY, UID).
* ``CaseMessage``: what was said on a case, inbound and outbound, oldest first.
* ``StoredAttachment``: an attachment of a case message, content-addressed on disk.
* ``Notice``: the outbox; a fully rendered message waiting for, or done with, SMTP.
* ``Checkpoint``: per mailbox, the UIDVALIDITY and the highest UID ingested.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel


class Disposition(StrEnum):
    NEW_CASE = "new_case"
    FOLLOW_UP = "follow_up"
    DUPLICATE = "duplicate"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    BULK = "bulk"
    # The receiving server's spam filter judged it spam, and it belongs to no case: no
    # case, no answer (mailcase.spam); `messages release` processes it as a person's.
    SPAM = "spam"
    NO_CASE = "no_case"  # an agent's mail naming no case and no customer: the agent is told
    QUARANTINED = "quarantined"
    DISMISSED = "dismissed"  # a quarantined message a person set aside (messages dismiss)


class CaseStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    CLOSED = "closed"


class CaseType(StrEnum):
    """What kind of report a case is, as an agent classified it (``#tipo``, ``cases type``);
    a case not classified yet has none (``cases.type`` NULL)."""

    COMPLAINT = "complaint"  # queja: a failure of the service
    QUESTION = "question"  # consulta
    CLARIFICATION = "clarification"  # aclaración: a charge or a bill disputed
    CANCELLATION = "cancellation"  # cancelación of the service


class NoticeStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"  # never sent on purpose (loop guard); kept for the record


class Case(SQLModel, table=True):
    __tablename__ = "cases"
    # `cases list`, newest first: without it every listing read and sorted every case.
    __table_args__ = (
        Index("ix_cases_created_at_id", "created_at", "id"),
        # Only the merged cases (0013): the erasure looks up the cases merged into a
        # customer's. A whole-table index took "merged_into_id IS NULL" for a way in, and
        # `mailcase report` read every unmerged case instead of the period's.
        Index(
            "ix_cases_merged_into_id",
            "merged_into_id",
            sqlite_where=text("merged_into_id IS NOT NULL"),
            postgresql_where=text("merged_into_id IS NOT NULL"),
        ),
        # Only the reports of an outage (0014): `cases list --outage`, and resolving a main
        # case, look up its reports; a whole-table index would cost every new case a write.
        Index(
            "ix_cases_outage_id",
            "outage_id",
            sqlite_where=text("outage_id IS NOT NULL"),
            postgresql_where=text("outage_id IS NOT NULL"),
        ),
        # Only the cases marked spam, by customer (0015): a message that would open a case
        # asks whether its sender has one (service._spam_case_of); a new case costs the
        # index nothing.
        Index(
            "ix_cases_spam_customer",
            "customer",
            sqlite_where=text("spam_at IS NOT NULL"),
            postgresql_where=text("spam_at IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    folio: str = Field(index=True, unique=True, max_length=40)
    status: str = Field(default=CaseStatus.OPEN, max_length=16, index=True)
    customer: str = Field(index=True, max_length=320)
    customer_name: str = Field(default="", max_length=200)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    mailbox: str = Field(max_length=64)
    language: str = Field(default="es", max_length=8)
    outcome: str | None = Field(default=None, max_length=16)  # valid | invalid
    cause: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    channel: str = Field(default="mail", max_length=16)  # mail | phone | web | visit
    area: str | None = Field(default=None, max_length=64)
    # A CaseType; NULL: not classified yet. Not indexed: the report groups the period's
    # cases (read by created_at) and a listing filters the newest ones.
    type: str | None = Field(default=None, max_length=16)
    # The agent responsible for the case (an address of agents.addresses, as spelt there);
    # NULL: nobody yet. Not indexed, as the type: `cases list --owner` filters the
    # newest cases, and an index would cost every assignment a write for no read.
    owner: str | None = Field(default=None, max_length=320)
    visit_date: date | None = None
    visit_time: str | None = Field(default=None, max_length=5)  # "HH:MM"
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    last_customer_at: datetime | None = None  # the customer's latest message
    # Set when the case was merged into another (merging.merge): closed, its mail
    # and its folio answered by that case from then on. Indexed where set (0013, above).
    merged_into_id: int | None = Field(default=None, foreign_key="cases.id")
    # Waiting for the customer (#pendiente, `cases pending`) until then: the case is
    # closed, unresolved, when it passes with no word from them (waits.close_stale_cases).
    # NULL: not waiting. Not indexed: the hourly check reads the open cases by status.
    pending_until: datetime | None = None
    # One of the reports of an outage followed in another case, the main case (#masivo,
    # `cases outage`): resolving that one resolves this one (casework.resolve). NULL: not
    # a report of an outage. Indexed where set (0014, above).
    outage_id: int | None = Field(default=None, foreign_key="cases.id")
    # When an agent marked the case spam (#spam, `cases spam`): spam the filter missed. It
    # is closed, counted in no figure of the report but `spam`, and its customer's new mail
    # opens no case (triage, the service). NULL: not spam. Indexed by customer where set.
    spam_at: datetime | None = None


class FolioCounter(SQLModel, table=True):
    __tablename__ = "folio_counters"

    year: int = Field(primary_key=True)
    last: int = 0


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger"
    __table_args__ = (UniqueConstraint("mailbox", "uidvalidity", "uid"),)

    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=64, index=True)
    # RFC 3501 UIDs and UIDVALIDITY are unsigned 32-bit: too big for a signed INTEGER.
    uidvalidity: int = Field(sa_type=BigInteger)
    uid: int = Field(sa_type=BigInteger)
    message_id: str | None = Field(default=None, max_length=998)
    dedup_key: str = Field(max_length=998, index=True)
    disposition: str = Field(max_length=16, index=True)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    case_id: int | None = Field(default=None, foreign_key="cases.id", index=True)
    # Not indexed: random keys cost every ingest CPU (migration 0013 says how much).
    raw_sha256: str = Field(max_length=64)
    size: int = 0
    received_at: datetime | None = None  # IMAP INTERNALDATE: when the server got it
    ingested_at: datetime


class CaseMessage(SQLModel, table=True):
    __tablename__ = "case_messages"
    # An agent's last relayed message (their signature is learnt from it).
    __table_args__ = (Index("ix_case_messages_from_addr_kind_id", "from_addr", "kind", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    direction: str = Field(max_length=3)  # "in" | "out"
    kind: str = Field(max_length=16)  # customer, agent, note, notice, unverified, system
    from_addr: str = Field(default="", max_length=320)
    to_addrs: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    date: datetime
    message_id: str | None = Field(default=None, max_length=998, index=True)
    text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    raw_sha256: str | None = Field(default=None, max_length=64)
    ledger_id: int | None = Field(default=None, foreign_key="ledger.id")
    # A bounce's notice, and whether agents were told of a refusal, looked up by it.
    notice_id: int | None = Field(default=None, foreign_key="notices.id", index=True)


class StoredAttachment(SQLModel, table=True):
    __tablename__ = "attachments"

    id: int | None = Field(default=None, primary_key=True)
    case_message_id: int = Field(foreign_key="case_messages.id", index=True)
    filename: str = Field(sa_column=Column(Text, nullable=False))  # data, never a path
    content_type: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64)


class Participant(SQLModel, table=True):
    """An address the customer put in Cc: it may write on the case too."""

    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("case_id", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    address: str = Field(max_length=320, index=True)


class CaseLink(SQLModel, table=True):
    """Case ``case_id`` is related to ``related_id`` (a follow-on or a stranger's folio)."""

    __tablename__ = "case_links"
    __table_args__ = (UniqueConstraint("case_id", "related_id"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    related_id: int = Field(foreign_key="cases.id", index=True)


class KeyValue(SQLModel, table=True):
    """Installation-wide values mailcase creates itself (e.g. the Message-ID signing key)."""

    __tablename__ = "key_values"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))


class Notice(SQLModel, table=True):
    __tablename__ = "notices"
    # The per-recipient caps count one kind to one address in the last hour; on
    # rcpt_to alone SQLite read every notice ever sent to agents.notify.
    __table_args__ = (Index("ix_notices_rcpt_to_kind_created_at", "rcpt_to", "kind", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="cases.id", index=True)
    kind: str = Field(max_length=32)  # acknowledgement, ...
    status: str = Field(default=NoticeStatus.QUEUED, max_length=16, index=True)
    mail_from: str = Field(max_length=320)
    rcpt_to: str = Field(max_length=320)  # per-recipient rate limits (index above)
    message_id: str = Field(max_length=998, index=True)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    attempts: int = 0
    queued_at: datetime | None = None  # start of the retry window (requeue resets it)
    next_attempt_at: datetime
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(index=True)
    sent_at: datetime | None = None
    # The customer's (or participant's) message an agents' notice tells of (0016): the
    # erasure of that person's mail takes the notice by it, whatever it quotes. NULL for
    # a notice about no one message, and for those written before. Not indexed: the
    # erasure looks among the notices of the message's case (by case_id). use_alter: a
    # case message refers to its notice too (notice_id), and SQLAlchemy cannot order
    # the two tables otherwise (it warns; the tests take warnings for errors).
    about_message_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey(
                "case_messages.id", name="fk_notices_about_message_id_case_messages", use_alter=True
            ),
            nullable=True,
        ),
    )


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"

    mailbox: str = Field(primary_key=True, max_length=64)
    uidvalidity: int = Field(sa_type=BigInteger)
    last_uid: int = Field(default=0, sa_type=BigInteger)
    last_poll_at: datetime | None = None  # last successful poll
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    last_error_at: datetime | None = None
    failures: int = 0  # consecutive failed polls


class MailboxLease(SQLModel, table=True):
    """Which instance polls a mailbox now; several instances may share one database."""

    __tablename__ = "mailbox_leases"

    mailbox: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=200)
    expires_at: datetime
