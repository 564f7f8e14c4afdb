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
3. A sender listed as an agent, writing on a known case, joins it as an agent
   when the message proves it (it references a signed Message-ID of that
   case's notices, or the receiving server authenticated the agent's domain);
   without proof it is kept on the case as ``unverified`` and does nothing.
4. Threading headers (In-Reply-To/References naming a Message-ID the case
   sent, or received from its customer, a participant or a verified agent)
   join the case: they cannot be guessed from the subject. Ids of what is only
   kept on a case (an auto-reply naming its folio, an unverified claim to an
   agent's address) do not count: their sender chose them.
5. A folio in the subject joins that case when the sender belongs to it (the
   customer or a participant); someone else naming a folio opens a case of
   their own, linked to the one they named, and learns nothing of it. A
   folio of the sender's own named only in the text links the new case to
   it (agents see it), without joining.
6. A customer's message within ``cases.reopen_days`` of the case's
   resolution reopens it, whether it is still ``resolved`` or has closed
   since (by itself after ``cases.close_after_days``, or by an agent): the
   resolution notice promises that window. On a case closed without a
   resolution, or later, it opens a new case linked to the old one
   (OTRS/Znuny and Zammad reopen closed tickets on a follow-up alike), unless
   a folio in the subject names another case of the sender's that is open or
   may be reopened: a reply in the thread of an old case about a newer one
   joins the newer one. A reply to a resolved case (within that window) whose
   own words are only thanks or an acknowledgement ("¡Muchas gracias!", "Ok,
   gracias": :func:`mailcase.thanks.is_thanks_only`, with no file attached) is
   kept on the case without reopening it, and nobody is told (Freshdesk's
   thank-you detector), unless ``cases.reopen_on_thanks``.
7. An agent's mail that names no case opens one for the customer it is
   about, as Zammad does ("sender is agent: the customer is the first
   recipient"): the sender of a mail it forwards (the agent forwarded a
   customer's mail to support), else the first address in To/Cc that is
   neither ours, an agent's nor automatic (the agent wrote to the customer
   with support in copy). The customer is acknowledged, and so learns the
   folio. Only when the receiving server authenticated the sender
   (``agents.trusted_authserv_ids``): anyone can write an agent's From. With
   no such customer, or no such proof, nothing is opened (``no_case``) and
   the agent is told: a case in the agent's own name, acknowledged to the
   agent, helped nobody.
8. Anything else from a person opens a new case with an acknowledgement,
   unless the sender is one of our own or an automatic address.

A verdict of spam by the receiving server's filter (``spam``, read by
:func:`mailcase.spam.spam_verdict`) turns what would open a case, or tell
somebody something, into ``spam``: a new case (rule 8, a stranger naming a
folio among them), mail with no sender address, and a claim to an agent's
address without proof (naming a case or not: folios are numbered in order,
easy to guess), unless the threading headers tie it to the case. Mail that
joins or follows a case (threading headers, a folio of the sender's own in
the subject or the text, an agent's with proof) is handled as if no filter
had spoken, the verdict noted in its reason: a customer's reply is not lost
to a filter's mistake (Zammad's filter recipe for ``X-Spam-Flag`` acts on
new tickets only, as this does).

A case an agent marked spam (``CaseRef.spam``: ``#spam``, spam the filter missed)
takes no more mail: what follows it (threading headers, its folio in the subject) is
``spam`` too, unless the message also names a case of the sender's that is not spam,
which it joins as above; a folio of it in the text is no report of the sender's own.
The service passes the sender's other new mail a verdict of its own ("sender's case
… was marked spam"), handled as a filter's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import getaddresses
from enum import StrEnum

from mailcase.classify import Classification, MailKind, is_automatic_address
from mailcase.folio import echoable_subject, remove_folio_tags, strip_reply_prefixes
from mailcase.inbound import InboundMail, canonical_address, display_name
from mailcase.models import Disposition
from mailcase.quoting import customer_text, forwarded_sender
from mailcase.thanks import NOT_REOPENED, is_thanks_only, signature_says_more

# Why mail with no sender address is quarantined, as the ledger says it (and as
# mailcase.reasons.TEXTS says it in English: a test holds the two together).
NO_SENDER_REASON = "no sender address"


@dataclass(frozen=True, slots=True)
class CaseRef:
    """What triage needs to know about an existing case."""

    id: int
    folio: str
    customer: str
    status: str
    participants: frozenset[str] = frozenset()
    resolved_at: datetime | None = None
    subject: str = ""  # as the case keeps it (reply prefixes and folio tags removed)
    # Closed for lack of an answer (waits.close_unanswered), at this moment: an answer
    # that reached the server before it was read late (a quarantined message retried).
    closed_unanswered_at: datetime | None = None
    # Marked spam by an agent (#spam): mail following it is set aside, not recorded on it.
    spam: bool = False

    def admits(self, address: str) -> bool:
        return address == self.customer or address in self.participants


class Role(StrEnum):
    """Who wrote a message that joins a case."""

    CUSTOMER = "customer"  # the customer or a participant
    AGENT = "agent"  # a verified agent: commands run, words are relayed
    UNVERIFIED = "unverified"  # claims an agent's address without proof


@dataclass(frozen=True, slots=True)
class Facts:
    """What the database knows about one message, looked up before triage."""

    duplicate_of: CaseRef | None = None  # case of an earlier copy of this message
    is_duplicate: bool = False  # an earlier copy exists (its case may be None)
    by_reference: CaseRef | None = None  # case named by In-Reply-To/References
    by_folio: tuple[CaseRef, ...] = ()  # cases named by folios in the subject
    in_text: tuple[CaseRef, ...] = ()  # cases named by folios in the text (none in the subject)
    signed_case: CaseRef | None = None  # case of a signed Message-ID of ours it references
    sender_authenticated: bool = False  # Authentication-Results vouch for the sender


@dataclass(frozen=True, slots=True)
class Decision:
    disposition: Disposition
    case: CaseRef | None = None  # the existing case it joins or is recorded on
    open_case: bool = False  # open a new case for it
    acknowledge: bool = False  # queue an acknowledgement to the sender
    reason: str = ""
    related: tuple[str, ...] = field(default=())  # folios it names but does not join
    role: Role = Role.CUSTOMER
    reopen: bool = False  # the case it joins was resolved and opens again
    # Only thanks on a resolved case: kept on it, not reopened, nobody told.
    thanks_only: bool = False
    quiet: bool = False  # tell nobody (old mail met on a first poll)
    customer: str = ""  # the new case's customer when not the sender (an agent wrote)
    customer_name: str = ""


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
    now: datetime | None = None,
    reopen_days: int = 30,
    reopen_on_thanks: bool = False,
    spam: str = "",
) -> Decision:
    """Decide the disposition of ``mail``; see the module docstring for the rules.

    ``spam``: the spam filter's verdict ("X-Spam-Flag: YES"), "" when it gave none.
    ``reopen_on_thanks``: a reply of only thanks reopens a resolved case as any other.
    """
    if facts.is_duplicate:
        return Decision(
            Disposition.DUPLICATE,
            case=facts.duplicate_of,
            reason=f"copy of {mail.dedup_key}",
        )

    known = facts.signed_case or facts.by_reference or next(iter(facts.by_folio), None)
    if classification.kind is not MailKind.CUSTOMER:
        # Recorded on a case only when a reference or a folio ties it there.
        return Decision(_AUTOMATIC[classification.kind], case=known, reason=classification.reason)

    if not mail.sender:
        if spam:  # the agents would be told of it, as of every quarantined message
            return _spam(spam, NO_SENDER_REASON)
        # The ledger's words for it: mailcase.reasons, Reason.NO_SENDER.
        return Decision(Disposition.QUARANTINED, reason=NO_SENDER_REASON)

    if mail.sender in agent_addresses and known is not None:
        if facts.signed_case is not None or facts.sender_authenticated:
            proof = "reply to our notice" if facts.signed_case else "authenticated sender"
            return Decision(
                Disposition.FOLLOW_UP,
                case=known,
                role=Role.AGENT,
                reason=_despite(spam, f"agent ({proof})"),
            )
        why = "claims an agent's address without proof"
        if spam and facts.by_reference is None:
            # Folios are numbered in order: a subject naming one is no tie to the case,
            # and kept on it, the real agent would be told of the forgery.
            return _spam(spam, why)
        return Decision(
            Disposition.FOLLOW_UP,
            case=known,
            role=Role.UNVERIFIED,
            reason=_despite(spam, why),
        )
    if mail.sender in agent_addresses:
        if not facts.sender_authenticated:
            why = "claims an agent's address without proof; names no case"
            if spam:  # the real agent would be told of the forgery: not for spam
                return _spam(spam, why)
            # Anyone can write an agent's From: a forged one must not open cases for
            # third parties and have them acknowledged (backscatter that passes the
            # victims' DMARC, ours being the domain forged).
            return Decision(Disposition.NO_CASE, role=Role.UNVERIFIED, reason=why)
        # Authenticated by the receiving server: the agent's own mail, whatever a
        # filter thought of a forward of a customer's mail.
        decision = _opened_by_agent(mail, own_addresses | agent_addresses)
        return replace(
            decision, reason=_despite(spam, decision.reason, "the sender is an authenticated agent")
        )

    # The cases the message may join, headers first; a folio only for its own people.
    candidates: list[tuple[CaseRef, str]] = []
    if facts.by_reference is not None:
        candidates.append((facts.by_reference, "threading headers"))
    strangers: list[str] = []
    for case in facts.by_folio:
        if case.admits(mail.sender):
            candidates.append((case, f"folio {case.folio}"))
        elif not candidates:
            strangers.append(case.folio)
    # A case an agent marked spam takes no more mail: what follows it (a reply to its
    # acknowledgement) is the spammer's, set aside as a filter's verdict would be, and
    # joins no other case either. Only when no case of the sender's that is not spam is
    # named too: a customer is not silenced by one of their cases.
    marked = [c for c, _ in candidates if c.spam]
    candidates = [(c, why) for c, why in candidates if not c.spam]
    if marked and not candidates:
        return _spam(spam, f"follows case {marked[0].folio}, marked spam")

    # The first that is open or may be reopened: a reply in the thread of an old
    # closed case whose subject names the customer's open one joins the open one.
    for joined, why in candidates:
        why = _despite(spam, why)
        if joined.status == "open":
            return Decision(Disposition.FOLLOW_UP, case=joined, reason=why)
        if takes_replies(joined.status, joined.resolved_at, now, reopen_days):
            if not reopen_on_thanks and _only_thanks(mail, joined):
                return Decision(
                    Disposition.FOLLOW_UP,
                    case=joined,
                    thanks_only=True,
                    reason=f"{why}; {NOT_REOPENED}",
                )
            return Decision(
                Disposition.FOLLOW_UP, case=joined, reopen=True, reason=f"{why}; reopens the case"
            )
        closed = joined.closed_unanswered_at
        # Before the second it closed in: INTERNALDATE counts whole seconds, and a reply
        # to the closing notice in that second would be read as one that came before it.
        if closed is not None and now is not None and now < closed.replace(microsecond=0):
            # The answer the case was closed for lacking, there before it closed: the
            # case goes on where it was, not a new one beside it (the customer was told
            # it closed; the agents are told it reopened).
            return Decision(
                Disposition.FOLLOW_UP,
                case=joined,
                reopen=True,
                reason=f"{why}; answered before it closed for no answer, reopens the case",
            )
    if candidates:
        # Closed unresolved, or resolved too long ago: a new case, linked to the old one.
        # The sender is of that case (or holds its thread): a customer, not a spammer.
        joined = candidates[0][0]
        why = _despite(spam, f"follows {joined.status} case {joined.folio}")
        return _new_case(mail, own_addresses, [joined.folio], why)

    why = f"names folio of another sender: {', '.join(strangers)}" if strangers else ""
    # A folio of the sender's own in the text of a new mail ("mi reporte con folio
    # …, sigo sin servicio"): linked, so that agents see it; not joined (Zammad can
    # join by the body, off by default): a new matter may name an old report.
    # (A case marked spam is none: naming it is no report of the sender's.)
    own = [c.folio for c in facts.in_text if c.admits(mail.sender) and not c.spam]
    if own:
        why = "; ".join(w for w in (why, f"names folio {', '.join(own)} in its text") if w)
    if spam and not own:
        # Answered, it would be backscatter: the acknowledgement goes to whoever the
        # spammer wrote in From. (A customer naming a folio of their own in the text
        # writes about their case: it is not lost to a filter's mistake.)
        return _spam(spam, why)
    return _new_case(mail, own_addresses, [*strangers, *own], _despite(spam, why))


def _only_thanks(mail: InboundMail, case: CaseRef) -> bool:
    """Whether ``mail`` brings nothing but thanks: no file (a photo of the modem says
    more than its words), its subject the case's as our notices wrote it (a subject
    rewritten, "SIGUE SIN SERVICIO", says something), nothing below a signature
    delimiter but a signature, and its own words, as the case keeps them, only thanks."""
    if mail.attachments or signature_says_more(mail.text):
        return False
    written = remove_folio_tags(strip_reply_prefixes(mail.subject), case.folio.split("-", 1)[0])
    if written and _folded(written) not in {
        _folded(case.subject),
        _folded(echoable_subject(case.subject)),
    }:
        return False
    return is_thanks_only(customer_text(mail.text, mail.subject), mail.sender_name, mail.sender)


def _folded(subject: str) -> str:
    return " ".join(subject.casefold().split())


def _spam(verdict: str, why: str) -> Decision:
    """Set aside as spam: no case, nobody told (``why``: what it would have been)."""
    return Decision(Disposition.SPAM, reason="; ".join(r for r in (verdict, why) if r))


def _despite(verdict: str, why: str, because: str = "it follows a case") -> str:
    """``why``, noting a spam verdict that was set aside, ``because`` of what."""
    if not verdict:
        return why
    return "; ".join(w for w in (why, f"{verdict} set aside: {because}") if w)


def _opened_by_agent(mail: InboundMail, insiders: frozenset[str]) -> Decision:
    """An agent's mail that names no case: a case for the customer it is about, or none."""

    def outsider(address: str) -> bool:
        return bool(address) and address not in insiders and not is_automatic_address(address)

    forwarded = forwarded_sender(mail.text)
    if forwarded is not None:
        # Spelt as a sender is (an IDN domain in ASCII form): the customer's own
        # replies must find the case.
        forwarded = (forwarded[0], canonical_address(forwarded[1].strip().lower()))
    if forwarded is not None and outsider(forwarded[1]):
        name, address = forwarded
        reason = f"agent {mail.sender} forwarded mail of {address}"
        return Decision(
            Disposition.NEW_CASE,
            open_case=True,
            acknowledge=True,
            role=Role.AGENT,
            reason=reason,
            customer=address,
            # A "De:" line may be 300 characters, the name's column holds 200.
            customer_name=display_name(name),
        )
    for address in (*mail.to, *mail.cc):
        if outsider(address):
            return Decision(
                Disposition.NEW_CASE,
                open_case=True,
                acknowledge=True,
                role=Role.AGENT,
                reason=f"agent {mail.sender} wrote to {address}",
                customer=address,
                customer_name=_name_written_for(mail, address),
            )
    return Decision(Disposition.NO_CASE, role=Role.AGENT, reason="agent's mail names no case")


def _name_written_for(mail: InboundMail, address: str) -> str:
    """The display name ``mail``'s To or Cc gives ``address`` ("Rosa Díaz" <rosa@…>), or "";
    one line of at most MAX_NAME characters, as :attr:`InboundMail.sender_name` is."""
    fields = (*mail.headers.get("to", ()), *mail.headers.get("cc", ()))
    for name, written in getaddresses(fields):
        if written.strip().lower() == address:
            return display_name(name)  # kept as the sender's name is
    return ""


def takes_replies(
    status: str, resolved_at: datetime | None, now: datetime | None, reopen_days: int
) -> bool:
    """Whether a customer's reply arriving at ``now`` joins a case in ``status``: an open
    one, or one resolved (closed after its resolution, too) within ``reopen_days``,
    which the reply reopens. Any other reply opens a new case, linked to this one."""
    if status == "open":
        return True
    resolved = status == "resolved" or (status == "closed" and resolved_at is not None)
    return resolved and _within(resolved_at, now, reopen_days)


def _within(resolved_at: datetime | None, now: datetime | None, days: int) -> bool:
    """Whether mail that arrived at ``now`` is within ``days`` of the resolution.

    ``reopen_days = 0`` never reopens. (``now`` is the arrival on the server, whose
    INTERNALDATE has whole seconds: a reply in the resolution's own second would
    otherwise read as arriving before it.)
    """
    if resolved_at is None or now is None:
        return True
    return days > 0 and now - resolved_at <= timedelta(days=days)


def _new_case(
    mail: InboundMail, own_addresses: frozenset[str], related: list[str], reason: str
) -> Decision:
    quiet = mail.sender in own_addresses or is_automatic_address(mail.sender)
    if quiet:
        reason = (reason + "; " if reason else "") + "sender is not answered"
    return Decision(
        Disposition.NEW_CASE,
        open_case=True,
        acknowledge=not quiet,
        reason=reason,
        related=tuple(related),
    )
