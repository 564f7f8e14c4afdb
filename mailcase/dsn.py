"""Read a delivery-status report (RFC 3464): who failed, with what status, for which message.

No I/O. Used when a bounce comes back for one of our notices: the report's
``message/delivery-status`` part names the recipients and their status, and
the returned ``message/rfc822`` or ``text/rfc822-headers`` part carries the
Message-ID of the notice that bounced. Never raises on malformed reports: what
cannot be read is simply not reported.

Not every report is a failure (RFC 3464 section 2.3.3): ``Action: failed`` is;
``delayed`` is a warning from an MTA that keeps trying; ``delivered``,
``relayed`` and ``expanded`` are successes. :attr:`DeliveryReport.is_failure`
says which it is.
"""

from __future__ import annotations

import contextlib
import email
import email.header
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

from mailcase.inbound import RETURNED_TYPES, decode_text

_MSGID_RE = re.compile(rb"<[!-;=?-~]+>")
_MESSAGE_ID_LINE = re.compile(
    rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)


_ENCODED = frozenset({"base64", "quoted-printable"})


# RFC 3464 section 2.3.3: the five action-values and what each means for the sender.
_FAILED = "failed"
_DELAYED = "delayed"
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
_ACTIONS = frozenset({_FAILED, _DELAYED}) | _SUCCESS_ACTIONS
_ACTION_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a report: who, what the MTA did, and why."""

    recipient: str  # the address, lower-cased, without the "rfc822;" type
    action: str  # one of the five RFC 3464 action-values, lower-case
    status: str  # e.g. "5.1.1"
    diagnostic: str  # one line, at most 500 characters

    @property
    def failed(self) -> bool:
        """Whether the MTA gave up on this recipient (``Action: failed``)."""
        return self.action == _FAILED


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a report says: every recipient block it carries, and the returned message's ids."""

    statuses: tuple[RecipientStatus, ...]  # in report order; unknown actions left out
    message_ids: tuple[str, ...]  # Message-IDs of the returned message, as "<id>"

    @property
    def recipients(self) -> tuple[RecipientStatus, ...]:
        """The recipients not delivered: failed, or delayed and still being tried."""
        return tuple(s for s in self.statuses if s.action in (_FAILED, _DELAYED))

    @property
    def failed(self) -> tuple[RecipientStatus, ...]:
        """The recipients the MTA gave up on (``Action: failed``)."""
        return tuple(s for s in self.statuses if s.failed)

    @property
    def worst(self) -> RecipientStatus | None:
        """The status that matters most: the first failure, else the first delay, else any."""
        for wanted in (_FAILED, _DELAYED):
            for status in self.statuses:
                if status.action == wanted:
                    return status
        return self.statuses[0] if self.statuses else None

    @property
    def is_failure(self) -> bool:
        """Whether the report is a failure, for a message already classified as a bounce.

        True when a recipient failed, and when no per-recipient status could be
        read at all: plain-text bounces (Exim, qmail, Gmail's text bounces) say
        so only in prose. False for a report whose every status is a delay
        (RFC 3464 section 2.3.3: a warning, the MTA keeps trying) or a success
        (``delivered``, ``relayed``, ``expanded``).
        """
        return bool(self.failed) or not self.statuses


def parse_dsn(raw: bytes) -> DeliveryReport:
    """Every recipient status and the returned message's Message-IDs found in ``raw``."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # the stdlib parser is lenient; belt and braces
        return DeliveryReport((), ())
    recipients: list[RecipientStatus] = []
    ids: dict[str, None] = {}
    for part in message.walk():
        ctype = part.get_content_type()
        # RFC 6533: bounces of SMTPUTF8 mail (Postfix, Exchange) carry
        # message/global-delivery-status (UTF-8, possibly base64 or QP) and return
        # message/global or message/global-headers; they were read as no report.
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            recipients.extend(_recipients(part))
        elif ctype in RETURNED_TYPES:
            for msgid in _returned_ids(part):
                ids[msgid] = None
    if not ids:
        # Many MTAs quote the original headers in the plain-text part instead.
        for match in _MESSAGE_ID_LINE.finditer(raw):
            for msgid in _MSGID_RE.findall(match.group(1)):
                ids[msgid.decode("ascii")] = None
    return DeliveryReport(tuple(recipients), tuple(ids))


def _recipients(part: Message) -> list[RecipientStatus]:
    payload = part.get_payload()
    blocks: list[Message] = []
    encoded = str(part.get("Content-Transfer-Encoding", "")).strip().lower() in _ENCODED
    if part.get_content_type() == "message/delivery-status" and not encoded:
        # compat32 splits a plain RFC 3464 body into its per-recipient blocks.
        blocks = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
    else:
        # A global (RFC 6533) or transfer-encoded report: decode, then split on blank lines.
        text = _status_bytes(part)
        blocks = [
            email.message_from_string(chunk.strip().decode("utf-8", "replace") + "\n")
            for chunk in re.split(rb"\r?\n[ \t]*\r?\n", text)
            if chunk.strip()
        ]
    found = []
    for block in blocks:
        recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
        if not recipient:
            continue
        action = _action(str(block.get("Action") or _FAILED))
        if action not in _ACTIONS:
            continue
        found.append(
            RecipientStatus(
                # "rfc822; <u@ci.com>": some MTAs keep the angle brackets.
                recipient=recipient.split(";", 1)[-1].strip().strip("<>").strip().lower(),
                action=action,
                status=str(block.get("Status") or "").strip(),
                diagnostic=" ".join(str(block.get("Diagnostic-Code") or "").split())[:500],
            )
        )
    return found


def _action(value: str) -> str:
    """The action-value of an ``Action`` field, lower-case ("" when there is none).

    RFC 3464 section 2.3.3 allows only the bare keyword, but some MTAs add a
    comment after it ("failed (mailbox full)"); the first word decides. The
    caller reads a block without ``Action`` (a required field) as a failure:
    the message it came in was classified as a bounce.
    """
    match = _ACTION_WORD.match(value.strip().lower())
    return match.group(0) if match else ""


def _returned_ids(part: Message) -> list[str]:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        value = str(payload[0].get("Message-ID") or "")
        return [m.decode("ascii") for m in _MSGID_RE.findall(value.encode("ascii", "replace"))]
    text = _payload_bytes(part)
    return [
        m.decode("ascii")
        for match in _MESSAGE_ID_LINE.finditer(text)
        for m in _MSGID_RE.findall(match.group(1))
    ]


def _status_bytes(part: Message) -> bytes:
    """The body of a delivery-status part, transfer-decoded.

    compat32 parses every message/* part but message/delivery-status as one
    embedded message (and an encoded delivery-status into junk blocks), so the
    body is written back out and decoded by the part's Content-Transfer-Encoding.
    """
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _payload_bytes(part)
    try:
        body = b"\n".join(p.as_bytes() for p in payload if isinstance(p, Message))
    except Exception:  # writing back a broken part; belt and braces
        return b""
    holder = Message()
    holder["Content-Transfer-Encoding"] = str(part.get("Content-Transfer-Encoding", "7bit"))
    holder.set_payload(body.decode("ascii", "surrogateescape"))
    return _payload_bytes(holder)


def _payload_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


_HEADER_TYPES = frozenset(
    {"text/rfc822-headers", "message/rfc822-headers", "message/global-headers"}
)


def readable_text(raw: bytes) -> str:
    """What a bounce says as a person reads it, lower-cased, whitespace collapsed: its
    bytes, plus every Subject (its own, the returned message's, one in a returned
    header part) with RFC 2047 words decoded, plus its text parts transfer-decoded.

    A notice's subject quoted in a bounce is encoded there (``=?utf-8?q?...?=``, a
    quoted-printable body) as soon as it holds one accent, and most Spanish subjects
    do: matched against the bytes alone, such a bounce (Exchange 2003, Domino: no
    Message-ID, only the subject) never found its notice. Never raises.
    """
    pieces = [raw.decode("utf-8", "replace")]
    # The stdlib parser is lenient; a failure only leaves out what it could not read.
    with contextlib.suppress(Exception):
        for part in email.message_from_bytes(raw, policy=email.policy.compat32).walk():
            pieces.extend(_subjects(part))
            ctype = part.get_content_type()
            if part.get_content_maintype() != "text" and ctype not in _HEADER_TYPES:
                continue
            # Read as bodies are read (labels that lie, windows-1252 in UTF-8...).
            text = decode_text(_payload_bytes(part), part.get_content_charset())
            pieces.append(text)
            if ctype in _HEADER_TYPES:
                returned = email.message_from_string(text, policy=email.policy.compat32)
                pieces.extend(_subjects(returned))
    return " ".join(" ".join(pieces).lower().split())


def _subjects(part: Message) -> list[str]:
    """``part``'s Subject fields with their encoded words decoded (those that can be)."""
    found = []
    for value in part.get_all("Subject") or ():
        # An unknown charset or a broken encoded word: that field is left out.
        with contextlib.suppress(Exception):
            found.append(str(email.header.make_header(email.header.decode_header(str(value)))))
    return found
