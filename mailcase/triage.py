"""Given one classified message and what the database knows, decide what happens (no I/O).

The service looks up the facts (is this a copy of a message already ingested,
which cases do the subject's folios and the threading headers name) and hands
them here; :func:`triage` returns a :class:`Decision` and never touches a
server or a session, so every rule is a unit test away.

Order of the rules, and why:

1. A second copy of a message already ingested (Cc to both mailboxes) is a
   ``duplicate`` of the first copy's case: one report, one folio.
2. Automatic mail (auto-replies, bounces, lists) never opens a case and never
   gets a notice; when it names a known case it is recorded there.
3. Threading headers (In-Reply-To/References naming a Message-ID the case
   received or sent) join the case: they cannot be guessed from the subject.
4. A folio in the subject joins that case when the sender belongs to it (the
   customer, for now); someone else naming a folio opens a case of their own,
   linked to the one they named, and learns nothing of it.
5. Anything else from a person opens a new case with an acknowledgement,
   unless the sender is one of our own or an automatic address.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailcase.classify import Classification, MailKind, is_automatic_address
from mailcase.inbound import InboundMail
from mailcase.models import Disposition


@dataclass(frozen=True, slots=True)
class CaseRef:
    """What triage needs to know about an existing case."""

    id: int
    folio: str
    customer: str
    status: str
    participants: frozenset[str] = frozenset()

    def admits(self, address: str) -> bool:
        return address == self.customer or address in self.participants


@dataclass(frozen=True, slots=True)
class Facts:
    """What the database knows about one message, looked up before triage."""

    duplicate_of: CaseRef | None = None  # case of an earlier copy of this message
    is_duplicate: bool = False  # an earlier copy exists (its case may be None)
    by_reference: CaseRef | None = None  # case named by In-Reply-To/References
    by_folio: tuple[CaseRef, ...] = ()  # cases named by folios in the subject


@dataclass(frozen=True, slots=True)
class Decision:
    disposition: Disposition
    case: CaseRef | None = None  # the existing case it joins or is recorded on
    open_case: bool = False  # open a new case for it
    acknowledge: bool = False  # queue an acknowledgement to the sender
    reason: str = ""
    related: tuple[str, ...] = field(default=())  # folios it named but may not join


_AUTOMATIC = {
    MailKind.AUTO_REPLY: Disposition.AUTO_REPLY,
    MailKind.BOUNCE: Disposition.BOUNCE,
    MailKind.BULK: Disposition.BULK,
}


def triage(
    mail: InboundMail,
    classification: Classification,
    facts: Facts,
    *,
    own_addresses: frozenset[str] = frozenset(),
    agent_addresses: frozenset[str] = frozenset(),
) -> Decision:
    """Decide the disposition of ``mail``; see the module docstring for the rules."""
    if facts.is_duplicate:
        return Decision(
            Disposition.DUPLICATE,
            case=facts.duplicate_of,
            reason=f"copy of {mail.dedup_key}",
        )

    known = facts.by_reference or next(iter(facts.by_folio), None)
    if classification.kind is not MailKind.CUSTOMER:
        # Recorded on a case only when a reference or a folio ties it there.
        return Decision(_AUTOMATIC[classification.kind], case=known, reason=classification.reason)

    if not mail.sender:
        return Decision(Disposition.QUARANTINED, reason="no sender address")

    if facts.by_reference is not None:
        return Decision(Disposition.FOLLOW_UP, case=facts.by_reference, reason="threading headers")

    strangers: list[str] = []
    for case in facts.by_folio:
        if case.admits(mail.sender) or mail.sender in agent_addresses:
            return Decision(Disposition.FOLLOW_UP, case=case, reason=f"folio {case.folio}")
        strangers.append(case.folio)

    quiet = mail.sender in own_addresses or is_automatic_address(mail.sender)
    reason = f"names folio of another sender: {', '.join(strangers)}" if strangers else ""
    if quiet:
        reason = (reason + "; " if reason else "") + "sender is not answered"
    return Decision(
        Disposition.NEW_CASE,
        open_case=True,
        acknowledge=not quiet,
        reason=reason,
        related=tuple(strangers),
    )
