"""Decide what kind of mail an :class:`InboundMail` is, before anything acts on it (no I/O).

A help desk that answers bounces, out-of-office replies or newsletters talks to
machines, and two help desks answering each other loop forever. The rules run
in a fixed order and the first that matches decides:

1. ``BOUNCE``: a delivery-status report (RFC 3464), mail from ``MAILER-DAEMON``
   or ``postmaster``, or Exim's and Gmail's ``X-Failed-Recipients``. These win
   over ``Auto-Submitted``: Exim and Gmail put ``Auto-Submitted: auto-replied``
   on their bounces too.
2. ``AUTO_REPLY``: ``Auto-Submitted`` other than ``no`` (RFC 3834), the
   ``X-Autoreply``/``X-Autorespond``/``X-Autoresponder`` headers, our own
   loop header or our own address, any other ``multipart/report`` (read
   receipts per RFC 8098, abuse reports per RFC 5965), ``Precedence:
   auto_reply``, or a vacation subject.
3. ``BOUNCE`` again for a null ``Return-Path`` (RFC 5321 section 4.5.5) with
   none of the above: out-of-office replies travel with the null path too
   (RFC 3834 section 3.3), so it is weaker evidence than rule 2's headers;
   and for mail from a no-reply address that returns a message of ours (a
   ``message/rfc822`` or ``text/rfc822-headers`` part from one of our
   addresses): KDDI's au one net returns undeliverable mail so, with no report
   and no bounce sender.
4. ``BULK``: ``Precedence: bulk|list|junk``, RFC 2369/2919 list headers, or
   the headers of list managers that write none of those (ezmlm, Mailman's
   digests, fml).

``X-Auto-Response-Suppress`` is no sign of automatic mail: it asks the
receiver not to answer automatically, and Outlook and business tools put it
on people's mail too (osTicket and Discourse dropped it as a sign after it
hid customers' reports). Exchange's out-of-office replies are known by their
``Auto-Submitted`` header and their subject.
5. ``CUSTOMER`` otherwise.

Every decision carries a ``reason`` naming the header or rule, for the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from enum import StrEnum

from mailcase.inbound import RETURNED_TYPES, InboundMail
from mailcase.textfold import fold

LOOP_HEADER = "X-Mailcase-Loop"
"""Header mailcase puts on every notice it sends, so it can recognise its own mail."""


class MailKind(StrEnum):
    """What a received message is, as far as the help desk is concerned."""

    CUSTOMER = "customer"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    BULK = "bulk"


@dataclass(frozen=True, slots=True)
class Classification:
    """The kind of a message and the header or rule that decided it ("" for customers)."""

    kind: MailKind
    reason: str


_CUSTOMER = Classification(MailKind.CUSTOMER, "")

# parseaddr is only a fallback for a From with no addr-spec; bound its input.
_MAX_FROM_CHARS = 1000

# Reasons quote header values for the log; keep them one short line.
_REASON_VALUE_CHARS = 80

# Local parts MTAs send bounces from (RFC 5321 section 4.5.5 and the
# "MAILER-DAEMON" convention of sendmail, Postfix, Exim and Gmail).
_BOUNCE_LOCAL_PARTS = frozenset(
    {"mailer-daemon", "mailer_daemon", "postmaster", "post_master", "mail.delivery.system"}
)

# Local parts of addresses nobody reads: bounce senders, "noreply" senders,
# VERP bounce addresses ("bounces+token@", "bounce-123@"). "noreply" also after a
# prefix (gmail-noreply@, calendar-notification-noreply@, facturacion-noreply@), as
# Zammad's send_no_auto_response_reg_exp reads it; the other words only at the
# start, where they cannot be part of a person's name.
_AUTOMATIC_LOCAL_PART = re.compile(
    r"(?:mailer[-_]?daemon|post_?master|mailer|mail\.delivery\.system|no[-_.]?reply"
    r"|do[-_.]?not[-_.]?reply|bounces?)"
    r"(?:[-_.].*)?"
    r"|.+[-_.](?:no[-_.]?reply|do[-_.]?not[-_.]?reply)(?:[-_.].*)?",
    re.DOTALL,
)

# How a reason starts when the sender is one of mailcase's own addresses (the
# service tells agents who answered from a shared address).
OWN_ADDRESS = "own address"

# Non-standard headers auto-responders add; any value counts.
_AUTO_REPLY_HEADERS = (
    "X-Autoreply",
    "X-Autorespond",
    "X-Autoresponder",
)

# Loop markers of scripts and list managers (see _auto_reply).
_LOOP_MARKERS = ("X-Loop", "X-No-Loop")

_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
# Non-standard, but some autoresponders write "Precedence: auto_reply" (or a hyphen).
_AUTO_REPLY_PRECEDENCE = frozenset({"auto_reply", "auto-reply"})

# RFC 6522: the report-type parameter of multipart/report, quoted or not.
_REPORT_TYPE = re.compile(r"""report-type\s*=\s*["']?([A-Za-z0-9._-]{1,64})""", re.IGNORECASE)
_NULL_PATH = re.compile(r"<\s*>|")
_COMMENT = re.compile(r"\([^()]{0,200}\)")

# Reply and forward prefixes of es/en/pt/de/fr clients: "Re:", "RE:", "RV:"
# (Outlook in Spanish), "Fw:", "Fwd:", "RES:", "ENC:", "AW:", "WG:", "TR:",
# with Outlook's counters ("Re[2]:").
_SUBJECT_PREFIX = re.compile(
    r"\s*(?:re|rv|fw|fwd|res|enc|aw|wg|tr)\s*(?:\[\d{1,4}\]|\(\d{1,4}\))?\s*[:：]",
    re.IGNORECASE,
)
_MAX_SUBJECT_PREFIXES = 20
# Twenty prefixes with their counters, then the longest phrase: what can matter.
_VACATION_SUBJECT_CHARS = 400

# Subjects of out-of-office replies that carry no RFC 3834 header (Gmail's
# vacation responder with a custom subject, Outlook rules, phone carriers).
# Compared accent-insensitively and case-insensitively at the start.
_VACATION_PHRASES_SOURCE = (
    "Respuesta automática",
    "Autorespuesta",
    "Auto respuesta",
    "Fuera de la oficina",
    "Fuera de oficina",
    # Not "Ausente" or "Vacaciones" alone: customers of an ISP write subjects
    # like "Vacaciones: suspender servicio", and a real responder also sends
    # RFC 3834 headers, which catch it anyway.
    "Out of office",
    "Out of the office",
    "Automatic reply",
    "Auto reply",
    "Autoreply",
    "Auto-Reply",
    "Auto response",
    "Autoresponse",
    "Abwesenheit",
    "Abwesenheitsnotiz",
    "Automatische Antwort",
    "Réponse automatique",
    "Resposta automática",
)


# Longest first, so the reason names the most specific phrase.
_VACATION_PHRASES = tuple(
    sorted({fold(p) for p in _VACATION_PHRASES_SOURCE}, key=lambda p: (-len(p), p))
)


def classify(mail: InboundMail, *, own_addresses: frozenset[str] = frozenset()) -> Classification:
    """Classify ``mail`` as a customer's message, an auto-reply, a bounce or bulk mail.

    ``own_addresses`` are the help desk's own mailboxes: mail from them is
    treated as an auto-reply, so mailcase never answers itself.

    Guarantees: never raises for any :class:`InboundMail`; the first matching
    rule (bounce evidence, then auto-reply, then a null Return-Path, then bulk)
    decides; ``reason`` names the header and value or the rule that matched,
    and is ``""`` exactly when the kind is ``CUSTOMER``.
    """
    # A delivery report, a MAILER-DAEMON/postmaster sender or X-Failed-Recipients
    # is a bounce whatever else it carries: Exim and Gmail add
    # "Auto-Submitted: auto-replied" to their plain-text bounces, and read as
    # auto-replies they never marked our notice as undeliverable. The null
    # Return-Path comes after the auto-reply headers, because Exchange and
    # others send out-of-office replies with "Return-Path: <>" too, and only
    # true bounces may mark one of our notices as undeliverable.
    return (
        _delivery_report(mail)
        or _bounce_sender(mail)
        or _auto_reply(mail, own_addresses)
        or _null_return_path(mail)
        or _returned_message(mail, own_addresses)
        or _bulk(mail)
        or _CUSTOMER
    )


def is_automatic_address(address: str) -> bool:
    """Whether ``address`` belongs to a machine that nobody reads.

    True for the local parts MAILER-DAEMON, postmaster, mailer, noreply,
    no-reply, donotreply, do-not-reply, bounce and bounces (case-insensitive,
    ignoring a ``+tag``, and also when followed by ``-``, ``_`` or ``.`` and more,
    as in ``noreply-facturas@`` or VERP ``bounce-123@``), and for the no-reply
    words after a prefix too (``gmail-noreply@``); and for any address in RFC
    2606's ``.invalid`` (no mailbox can exist there: ``forgotten@invalid``
    stands for a customer whose data was erased, mailcase.erasure). Accepts a
    bare local part, an addr-spec or ``<addr-spec>``; never raises.
    """
    return bool(_AUTOMATIC_LOCAL_PART.fullmatch(_local_part(address))) or _invalid_domain(address)


def _invalid_domain(address: str) -> bool:
    addr = address.strip().strip("<>").strip()
    if "@" not in addr:
        return False
    domain = addr.rpartition("@")[2].strip().rstrip(".").lower()
    return domain == "invalid" or domain.endswith(".invalid")


def _local_part(address: str) -> str:
    addr = address.strip().strip("<>").strip()
    local = addr.rpartition("@")[0] if "@" in addr else addr
    return local.split("+", 1)[0].strip().strip('"').lower()


def _show(value: str) -> str:
    """A header value as one short line, safe to put in a log line."""
    line = " ".join(value.split())
    if len(line) > _REASON_VALUE_CHARS:
        line = line[: _REASON_VALUE_CHARS - 1] + "…"
    return line


def _report_type(mail: InboundMail) -> str:
    match = _REPORT_TYPE.search(mail.header("content-type"))
    return match.group(1).lower() if match else ""


def _bounce_sender(mail: InboundMail) -> Classification | None:
    """Bounce evidence that no auto-responder carries: the bounce sender, X-Failed-Recipients."""

    def bounce(reason: str) -> Classification:
        return Classification(MailKind.BOUNCE, reason)

    for field, address in (("From", mail.from_address), ("Sender", mail.sender)):
        if address and _local_part(address) in _BOUNCE_LOCAL_PARTS:
            return bounce(f"{field}: {_show(address)}")
    if not mail.from_address and _is_bare_mailer_daemon(mail.header("from")):
        return bounce(f"From: {_show(mail.header('from'))}")
    if "x-failed-recipients" in mail.headers:
        # Exim and Gmail list the addresses that failed in this header.
        return bounce(f"X-Failed-Recipients: {_show(mail.header('x-failed-recipients'))}")
    return None


def _null_return_path(mail: InboundMail) -> Classification | None:
    """The null reverse-path: a bounce unless an auto-reply header said otherwise first."""
    if "return-path" not in mail.headers:
        return None
    return_path = mail.header("return-path").strip()
    # RFC 5321 section 4.5.5: notifications are sent with the null
    # reverse-path, which the delivering MTA records as "Return-Path: <>".
    # GMX records it as an empty value; sendmail writes <MAILER-DAEMON>, its
    # spelling of the same null path, so it is no stronger than "<>".
    if _NULL_PATH.fullmatch(return_path):
        return Classification(MailKind.BOUNCE, f"Return-Path: {return_path or '(empty)'}")
    if _local_part(return_path) == "mailer-daemon":
        return Classification(MailKind.BOUNCE, f"Return-Path: {_show(return_path)}")
    return None


def _returned_message(mail: InboundMail, own_addresses: frozenset[str]) -> Classification | None:
    """A no-reply sender returning a message of ours: a bounce written without a report.

    KDDI's au one net (``no-reply@…dion.ne.jp``, "メールエラー通知") returns
    undeliverable mail as multipart/mixed with the original attached, no
    delivery-status part, no bounce sender and no null Return-Path. Read as a
    person's mail, it opened a case that could not be acknowledged (the sender
    is never answered) and left our notice marked sent. All three signs are
    needed: a no-reply sender (alone, a newsletter or a shop's receipt), an
    attached message (alone, a person's forward), and that message being ours,
    from one of ``own_addresses`` (a web form sending from noreply@ with a
    customer's uploaded ``.eml`` is a report; so is a partner's system
    forwarding a third party's mail). Mail a web form relays (its customer
    taken from Reply-To) is never one. It comes after the auto-reply rules, so
    a no-reply responder that marks itself is never taken for a bounce, which
    may mark one of our notices undeliverable.
    """
    address = mail.from_address
    if not address or mail.sender != address or not is_automatic_address(address):
        return None
    for attachment in mail.attachments:
        if attachment.content_type in RETURNED_TYPES and _sent_by(attachment.payload) in (
            own_addresses
        ):
            return Classification(MailKind.BOUNCE, f"From: {_show(address)} returning a message")
    return None


# How much of a returned message is read for its From: its header section.
_RETURNED_HEAD_BYTES = 65_536


def _sent_by(message: bytes) -> str:
    """The From address of the message (or header section) ``message``, lower-cased;
    "" when it has none."""
    head = BytesHeaderParser().parsebytes(message[:_RETURNED_HEAD_BYTES])
    _, address = parseaddr(str(head.get("from") or "")[:_MAX_FROM_CHARS])
    return address.strip().lower()


def _delivery_report(mail: InboundMail) -> Classification | None:
    # RFC 3464 DSNs travel as multipart/report; report-type=delivery-status
    # (RFC 6522); a few MTAs send the bare message/delivery-status part.
    if mail.content_type == "multipart/report" and _report_type(mail) == "delivery-status":
        return Classification(
            MailKind.BOUNCE, "Content-Type: multipart/report; report-type=delivery-status"
        )
    if mail.content_type == "message/delivery-status":
        return Classification(MailKind.BOUNCE, "Content-Type: message/delivery-status")
    return None


def _is_bare_mailer_daemon(from_header: str) -> bool:
    """Whether a From with no usable address names MAILER-DAEMON or postmaster.

    DragonFly's dma writes ``From: MAILER-DAEMON <>`` and old sendmail a bare
    ``From: MAILER-DAEMON``; parse_inbound finds no addr-spec in either.
    """
    name, addr = parseaddr(from_header[:_MAX_FROM_CHARS])
    return _local_part(addr) in _BOUNCE_LOCAL_PARTS or (
        not addr and _local_part(name) in _BOUNCE_LOCAL_PARTS
    )


def _auto_reply(mail: InboundMail, own_addresses: Iterable[str]) -> Classification | None:
    def auto_reply(reason: str) -> Classification:
        return Classification(MailKind.AUTO_REPLY, reason)

    # RFC 3834 section 5: any Auto-Submitted keyword except "no" marks mail a
    # program sent; the keyword may carry parameters and comments.
    for value in mail.headers.get("auto-submitted", ()):
        keyword = _COMMENT.sub("", value.split(";", 1)[0]).strip().lower()
        if keyword != "no":
            return auto_reply(f"Auto-Submitted: {_show(value)}")
    for name in _AUTO_REPLY_HEADERS:
        if name.lower() in mail.headers:
            return auto_reply(f"{name}: {_show(mail.header(name))}")
    if LOOP_HEADER.lower() in mail.headers:
        return auto_reply(f"{LOOP_HEADER}: {_show(mail.header(LOOP_HEADER))}")
    own = {a.strip().lower() for a in own_addresses}
    # procmail's autoreply recipe (formail -r -A "X-Loop: ...") and similar scripts
    # mark their answers with X-Loop alone; Zammad and OTRS take it as automatic
    # mail. Only on an answer to one of our notices, though: a customer's own
    # forwarding rule adds X-Loop to a message that must still open a case.
    for name in _LOOP_MARKERS:
        if name.lower() in mail.headers and _answers_our_notice(mail, own):
            return auto_reply(f"{name}: {_show(mail.header(name))} on a reply to our notice")
    # Compare the customer parse_inbound settled on, not the raw From: a web
    # form may send from one of our own mailboxes on behalf of a customer.
    if mail.sender and mail.sender in own:
        return auto_reply(f"{OWN_ADDRESS}: {_show(mail.sender)}")
    # Any other report is machine-generated too: read receipts (RFC 8098,
    # report-type=disposition-notification) and abuse reports (RFC 5965).
    if mail.content_type == "multipart/report":
        report_type = _report_type(mail) or "(none)"
        return auto_reply(f"Content-Type: multipart/report; report-type={_show(report_type)}")
    if mail.content_type == "message/disposition-notification":
        return auto_reply("Content-Type: message/disposition-notification")
    precedence = _precedence(mail)
    if precedence in _AUTO_REPLY_PRECEDENCE:
        return auto_reply(f"Precedence: {precedence}")
    phrase = _vacation_phrase(mail.subject)
    if phrase:
        return auto_reply(f"Subject: starts with {phrase!r}")
    return None


def _answers_our_notice(mail: InboundMail, own_addresses: Iterable[str]) -> bool:
    """Whether ``mail`` replies to one of our notices: it names a Message-ID we
    make (``<mc.…@domain>``, mailcase.folio and mailcase.msgid) at one of our
    mailboxes' domains."""
    domains = {a.rpartition("@")[2] for a in own_addresses if "@" in a}
    return any(
        msgid.startswith("<mc.") and msgid[:-1].rpartition("@")[2].lower() in domains
        for msgid in (*mail.in_reply_to, *mail.references)
    )


_LIST_HEADERS = (
    *("List-Id", "List-Unsubscribe", "List-Post", "List-Help", "List-Subscribe"),
    *("List-Archive", "List-Owner", "Mailing-List", "X-Mailman-Version", "X-MLServer"),
)


def _bulk(mail: InboundMail) -> Classification | None:
    def bulk(reason: str) -> Classification:
        return Classification(MailKind.BULK, reason)

    precedence = _precedence(mail)
    if precedence in _BULK_PRECEDENCE:
        return bulk(f"Precedence: {precedence}")
    # RFC 2919 (List-Id) and RFC 2369 (List-Unsubscribe and its siblings) mark
    # mailing lists; newsletters and marketing senders carry List-Unsubscribe
    # too. Some list managers write only their own headers.
    for name in _LIST_HEADERS:
        if name.lower() in mail.headers:
            return bulk(f"{name}: {_show(mail.header(name))}")
    return None


def _precedence(mail: InboundMail) -> str:
    words = mail.header("precedence").split()
    return words[0].lower() if words else ""


def _vacation_phrase(subject: str) -> str:
    """The vacation phrase ``subject`` starts with (folded), or "".

    Only the subject's start is looked at, its whitespace collapsed after
    folding: NFKD turns characters such as "¨" into a space and a mark, and a
    64 KB subject of them made the prefix pattern's adjacent ``\\s*`` backtrack
    for 22 seconds.
    """
    text = " ".join(fold(subject[:_VACATION_SUBJECT_CHARS]).split())
    for _ in range(_MAX_SUBJECT_PREFIXES):
        match = _SUBJECT_PREFIX.match(text)
        if match is None:
            break
        text = text[match.end() :].lstrip()
    for phrase in _VACATION_PHRASES:
        if text.startswith(phrase):
            rest = text[len(phrase) :]
            # A whole word or phrase: "Ausente:" matches, "Ausentes" does not.
            if not rest or not rest[0].isalnum():
                return phrase
    return ""
