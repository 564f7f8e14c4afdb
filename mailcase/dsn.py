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
        if ctype == "message/delivery-status":
            recipients.extend(_recipients(part))
        elif ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
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
    if isinstance(payload, list):
        blocks = [p for p in payload if isinstance(p, Message)]
    else:
        text = _payload_bytes(part)
        blocks = [
            email.message_from_bytes(chunk.strip() + b"\n")
            for chunk in re.split(rb"\r?\n\r?\n", text)
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


def _payload_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""
