"""Read a delivery-status report (RFC 3464): who failed, with what status, for which message.

No I/O. Used when a bounce comes back for one of our notices: the report's
``message/delivery-status`` part names the recipients and their status, and
the returned ``message/rfc822`` or ``text/rfc822-headers`` part carries the
Message-ID of the notice that bounced. Never raises on malformed reports: what
cannot be read is simply not reported.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

_MSGID_RE = re.compile(rb"<[!-;=?-~]+>")
_MESSAGE_ID_LINE = re.compile(
    rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)


_ENCODED = frozenset({"base64", "quoted-printable"})
_RETURNED_TYPES = frozenset(
    {
        "message/rfc822",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/global",
        "message/global-headers",
    }
)


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    recipient: str
    status: str  # e.g. "5.1.1"
    diagnostic: str


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    recipients: tuple[FailedRecipient, ...]
    message_ids: tuple[str, ...]  # Message-IDs of the returned message, as "<id>"


def parse_dsn(raw: bytes) -> DeliveryReport:
    """The failed recipients and the returned message's Message-IDs found in ``raw``."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # the stdlib parser is lenient; belt and braces
        return DeliveryReport((), ())
    recipients: list[FailedRecipient] = []
    ids: dict[str, None] = {}
    for part in message.walk():
        ctype = part.get_content_type()
        # RFC 6533: bounces of SMTPUTF8 mail (Postfix, Exchange) carry
        # message/global-delivery-status (UTF-8, possibly base64 or QP) and return
        # message/global or message/global-headers; they were read as no report.
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            recipients.extend(_recipients(part))
        elif ctype in _RETURNED_TYPES:
            for msgid in _returned_ids(part):
                ids[msgid] = None
    if not ids:
        # Many MTAs quote the original headers in the plain-text part instead.
        for match in _MESSAGE_ID_LINE.finditer(raw):
            for msgid in _MSGID_RE.findall(match.group(1)):
                ids[msgid.decode("ascii")] = None
    return DeliveryReport(tuple(recipients), tuple(ids))


def _recipients(part: Message) -> list[FailedRecipient]:
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
        action = str(block.get("Action") or "failed").strip().lower()
        if action not in ("failed", "delayed"):
            continue
        found.append(
            FailedRecipient(
                recipient=recipient.split(";", 1)[-1].strip().lower(),
                status=str(block.get("Status") or "").strip(),
                diagnostic=" ".join(str(block.get("Diagnostic-Code") or "").split())[:500],
            )
        )
    return found


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
