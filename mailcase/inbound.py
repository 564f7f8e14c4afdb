"""Raw RFC 5322 bytes → one immutable :class:`InboundMail` value (no I/O).

mail-parser (on top of the standard library's ``email`` package) does the MIME
work: transfer encodings, charsets, RFC 2047/2231 names and attachments. This
module normalises its answer into plain typed values the rest of the pipeline
can rely on:

* every string is valid Unicode that both databases can store (undecodable
  bytes and NUL become U+FFFD, never an exception);
* addresses are lower-cased addr-specs, never taken from an RFC 2047 encoded
  word; Message-IDs keep their angle brackets (``<id@host>``) so they compare
  exactly as they appear in References, and an empty one (``<>``) is none;
* ``text`` is the readable body of the message itself (never of a message
  attached to it): its text/plain parts, or, for HTML-only mail, the HTML
  turned into text with no tags and no script or style content; decoded here
  (not by mail-parser) by the charset rules of the WHATWG Encoding Standard
  that mail clients follow (iso-8859-1 and us-ascii labels mean windows-1252);
* for HTML-only mail whose HTML marks where the quoted history starts (the
  quote elements mail clients write), ``text_above_quote`` is the text above
  that mark, found before the markup is gone (see :func:`html_texts`);
* every attachment is kept, a part without a file name under a generated one
  (``attachment-1.jpg``).

:func:`parse_inbound` raises :class:`~mailcase.errors.MessageError` only when
the bytes cannot be read as a message at all; the caller quarantines it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import email
import email.parser
import email.policy
import hashlib
import html as htmllib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from types import MappingProxyType
from typing import Any

from mailcase.errors import MessageError
from mailcase.quoting import is_attribution_line
from mailcase.reasons import Reason
from mailcase.wire import ascii_domain

# mail-parser logs its opinion of each message's parts at WARNING and ERROR
# ("Email content 'calendar' not handled", "Failed decoding header part: …"),
# quoting headers and file names: message content, which mailcase's logs never
# carry, and nothing an admin can act on (a message that cannot be read is
# quarantined with its reason). Silenced here, where mail-parser is used, so
# that the parser process (mailcase.parsing) is silent too.
logging.getLogger("mailparser").setLevel(logging.CRITICAL + 1)

# RFC 5322 3.6.4 msg-id: printable ASCII inside angle brackets. Ids with other
# characters cannot be echoed back in our In-Reply-To/References, so they are
# not treated as ids at all.
_MSGID_RE = re.compile(r"<[!-;=?-~]+>")


MAX_THREAD_IDS = 100


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment. ``filename`` is the sender's name for it: data, never a path."""

    filename: str
    content_type: str
    payload: bytes = field(repr=False)
    # Shown within the HTML (a Content-ID, not marked "attachment"): a signature's
    # logo, say, rather than a file the sender meant to send.
    inline: bool = False
    # A file of a message attached to this one (mail-parser lists those too): part
    # of that message, which is never relayed to a customer whole or in pieces.
    in_message: bool = False

    @property
    def size(self) -> int:
        return len(self.payload)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True, slots=True)
class InboundMail:
    """Everything the pipeline needs to know about one received message."""

    sender: str  # the customer: From, or Reply-To for web-form senders; "" when absent
    sender_name: str
    from_address: str  # the From header's address, whatever ``sender`` became
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    subject: str
    message_id: str | None  # "<id@host>", or None when the message has none
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    date: datetime | None  # timezone-aware (UTC when the header had none)
    text: str
    attachments: tuple[Attachment, ...]
    headers: Mapping[str, tuple[str, ...]]  # lower-cased name → decoded values
    content_type: str  # top-level MIME type, lower-cased, e.g. "multipart/report"
    raw_sha256: str
    size: int
    defects: tuple[str, ...] = ()
    # Without a Message-ID: the hash of the message without the header fields each
    # delivery adds (content_digest); "" when it has an id.
    content_sha256: str = ""
    # HTML-only mail with a client's quote element: the text above it, without
    # the attribution line right above it; None otherwise (see html_texts).
    text_above_quote: str | None = None

    def header(self, name: str) -> str:
        """The first value of header ``name`` (case-insensitive), or ""."""
        values = self.headers.get(name.lower(), ())
        return values[0] if values else ""

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Message-IDs this message answers: In-Reply-To first, then References from
        the newest; at most :data:`MAX_THREAD_IDS` of them.

        A conversation's last ids are the ones that tie it to a case (clients trim
        References from the front, RFC 5322 3.6.4); a message of 70,000 ids made a
        lookup PostgreSQL refuses (65,535 parameters), failing its mailbox's
        every poll.
        """
        seen: dict[str, None] = dict.fromkeys(self.in_reply_to)
        seen.update(dict.fromkeys(reversed(self.references)))
        return tuple(seen)[:MAX_THREAD_IDS]

    @property
    def dedup_key(self) -> str:
        """The identity of this message across mailboxes.

        Its Message-ID; without one, the hash of its content without the trace
        fields each delivery adds (``content:…``), so that the copies delivered
        to contacto@ and info@ are one message; ``sha256:`` of the raw bytes
        for mail parsed before that hash existed.
        """
        if self.message_id:
            return self.message_id
        return f"content:{self.content_sha256}" if self.content_sha256 else self.raw_key

    @property
    def raw_key(self) -> str:
        """``sha256:`` of the raw bytes: the identity once given to mail without a Message-ID."""
        return f"sha256:{self.raw_sha256}"

    @property
    def origin(self) -> tuple[str, datetime | None]:
        """Who wrote it and when (From, Date): what every copy of one message shares."""
        return self.from_address, self.date


def header_summary(head: bytes) -> dict[str, str]:
    """From, To, Subject, Date and Message-ID of the message whose raw bytes begin
    with ``head``, decoded for people ("" for a field it lacks); never raises."""
    try:
        message = email.message_from_bytes(_header_section(head))
        headers, _ = _collect_headers(message)
    except Exception:  # a header too damaged even for that: nothing to show
        return {}
    return {
        name: _one_line(headers.get(name, ("",))[0])
        for name in ("from", "to", "subject", "date", "message-id")
    }


SENDER_FIELDS = ("from", "sender", "reply-to")


def senders_of(head: bytes, fields: Iterable[str] = SENDER_FIELDS) -> frozenset[str]:
    """The addresses in From, Sender and Reply-To (or the header ``fields`` named, in
    lower case) of the message whose raw bytes begin with ``head``, spelt as
    :func:`canonical_address` spells them; never raises."""
    try:
        message = email.message_from_bytes(_header_section(head))
        # 8-bit UTF-8 headers (RFC 6532: juan@telefonía.mx) read as parse_inbound reads them.
        wanted = frozenset(fields)
        values = [_recover_8bit(v) for k, v in message.raw_items() if k.lower() in wanted]
        return frozenset(
            canonical_address(addr.strip().lower())
            for _, addr in email.utils.getaddresses(values)
            if "@" in addr
        )
    except Exception:  # a header too damaged even for that: nobody's
        return frozenset()


def _header_section(head: bytes) -> bytes:
    return head.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]


def origin_of(head: bytes) -> tuple[str, datetime | None]:
    """:attr:`InboundMail.origin` of the message whose raw bytes begin with ``head``.

    Reads the header section only, as :func:`parse_inbound` reads it; never raises.
    """
    try:
        message = email.message_from_bytes(_header_section(head))
        _, address_fields = _collect_headers(message)
        pairs = _addresses(address_fields.get("from", ()))
        dates = tuple(_recover_8bit(v) for k, v in message.raw_items() if k.lower() == "date")
        return (pairs[0][1] if pairs else ""), _date(dates)
    except Exception:  # a damaged header: an origin that matches nothing
        return "", None


_PART_HEADER = b"content-type:"  # at the start of a line, in any case

# The stdlib's MIME-parameter and address parsers (which mail-parser calls) take
# time quadratic in the length of one header field: a 200 KB Content-Type of
# "x=y;" pairs cost 1.7 s, a 1 MB one minutes (found by tests/test_fuzz.py); and
# mail-parser reads the parameters of every part several times (a 60 KB one:
# 0.6 s, times 500 parts). The longest field in the shared corpus of real mail
# is 2 KB, bar one 200 KB test Subject. So, like a part bomb, a message is
# refused before parsing when a field of its top-level header section is longer
# than max_field_bytes, or a Content-Type or Content-Disposition field of any
# part longer than max_mime_field_bytes.
# Searched for in the lowercased message: with re.IGNORECASE the scans of a
# message with an attachment took 0.25 ms, a fifth of its parse.
_MIME_FIELD_RE = re.compile(rb"content-(?:type|disposition)[ \t]*:")
MAX_HEADER_BYTES = 1_000_000  # the top-level header section, all fields together
# Recipients kept per To or Cc of one message: enough for any real message (a
# customer copying the family, an office's distribution list), and a bound on what
# one stranger's message can make mailcase store and look up.
MAX_RECIPIENTS = 200
_LINE_BREAK = rb"(?:\r\n|\r(?!\n)|\n)"  # CRLF, LF or a lone CR (old Mac mail)
_FIELD_END_RE = re.compile(_LINE_BREAK + rb"(?![ \t])")  # a line break that does not fold
_HEADER_END_RE = re.compile(_LINE_BREAK * 2)


def parse_inbound(
    raw: bytes,
    *,
    web_form_senders: Iterable[str] = (),
    max_parts: int = 500,
    max_depth: int = 20,
    max_field_bytes: int = 65_536,
    max_mime_field_bytes: int = 8_192,
) -> InboundMail:
    """Parse ``raw`` into an :class:`InboundMail`.

    Guarantees: never raises for bad charsets or encodings (they are replaced);
    raises :class:`MessageError` when mail-parser cannot parse the bytes at all,
    or when the MIME structure has more than ``max_parts`` parts or is nested
    deeper than ``max_depth``, or a header field is longer than
    ``max_field_bytes`` (a Content-Type or Content-Disposition field:
    ``max_mime_field_bytes``), because hostile structures must not cost
    unbounded time; and when an address field nests parentheses deeper than the
    stdlib's address parser can recurse.
    """
    # Counted on the raw bytes before parsing, so a part bomb costs one scan.
    lowered = raw.lower()
    parts = _count_parts(lowered)
    if parts > max_parts:
        raise MessageError(Reason.MIME_PARTS, parts=parts, limit=max_parts)
    longest, longest_mime = _longest_fields(raw, lowered)
    if longest > max_field_bytes:
        raise MessageError(Reason.HEADER_FIELD, size=longest, limit=max_field_bytes)
    if longest_mime > max_mime_field_bytes:
        raise MessageError(Reason.MIME_FIELD, size=longest_mime, limit=max_mime_field_bytes)
    del lowered  # a copy of the whole message, not needed while it is parsed
    end = _HEADER_END_RE.search(raw, 0, MAX_HEADER_BYTES + 4)
    if end is None and len(raw) > MAX_HEADER_BYTES:
        # Short fields, repeated: 44 MB of "Cc:" lines made 1.6 million participants
        # in six minutes and 4.8 GB (sixth review round). Real mail's header sections
        # are a few kilobytes; a long Received chain, tens.
        raise MessageError(Reason.HEADER_SECTION, limit=MAX_HEADER_BYTES)
    try:
        # What mailparser.parse_from_bytes does, in two steps (see _read_body).
        message = message_from_bytes(raw)
    except Exception as exc:  # RecursionError for absurd nesting, belt and braces
        raise MessageError(Reason.UNPARSEABLE, error=f"{type(exc).__name__}: {exc}") from exc

    depth, parts = _mime_shape(message)
    if depth > max_depth:
        raise MessageError(Reason.MIME_DEPTH, depth=depth, limit=max_depth)
    if parts > max_parts:  # what the scan above could not see (the parser is lenient)
        raise MessageError(Reason.MIME_PARTS, parts=parts, limit=max_parts)
    headers, address_fields = _collect_headers(message)
    try:
        # Before mail-parser reads the parts: it must see the names given to unnamed ones.
        plain_parts, html_parts, paired = _sort_parts(message)
        parsed = _read_body(message)
        text, text_above_quote = _body_text(plain_parts, html_parts, paired=paired)
    except Exception as exc:  # mail-parser raises many types for broken input
        raise MessageError(Reason.UNPARSEABLE, error=f"{type(exc).__name__}: {exc}") from exc
    message_id = _first_msgid(headers.get("message-id", ()))
    from_pairs = _addresses_of(address_fields, "from")
    from_address = from_pairs[0][1] if from_pairs else ""
    sender_name = from_pairs[0][0] if from_pairs else ""
    reply_to_pairs = _addresses_of(address_fields, "reply-to")
    reply_to = tuple(addr for _, addr in reply_to_pairs)
    sender = from_address
    web_form = {s.lower() for s in web_form_senders}
    if from_address in web_form and reply_to:
        # A web form relays the customer's words; the customer is whoever it
        # names in Reply-To (django-helpdesk and Zammad treat form mail alike),
        # with the name it gives there ("Pedro Gómez <pedro@…>"), not the form's.
        sender, sender_name = reply_to_pairs[0][1], reply_to_pairs[0][0]

    return InboundMail(
        sender=sender,
        sender_name=sender_name,
        from_address=from_address,
        to=tuple(addr for _, addr in _addresses_of(address_fields, "to"))[:MAX_RECIPIENTS],
        cc=tuple(addr for _, addr in _addresses_of(address_fields, "cc"))[:MAX_RECIPIENTS],
        reply_to=reply_to,
        subject=_one_line(headers.get("subject", ("",))[0]),
        message_id=message_id,
        in_reply_to=_msgids(headers.get("in-reply-to", ())),
        references=_msgids(headers.get("references", ())),
        date=_date(headers.get("date", ())),
        text=text,
        attachments=tuple(_attachments(parsed, _files_of_attached_messages(message))),
        headers=MappingProxyType(headers),
        content_type=_content_type(message.get_content_type()),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        content_sha256="" if message_id else content_digest(raw),
        text_above_quote=text_above_quote,
        size=len(raw),
        defects=tuple(sorted(str(c) for c in (parsed.defects_categories or ()))),
    )


def _longest_fields(raw: bytes, lowered: bytes) -> tuple[int, int]:
    """Bytes in the longest (unfolded) field of the top-level header section, and in
    the longest Content-Type or Content-Disposition field anywhere; linear in ``len(raw)``.

    ``lowered`` is ``raw.lower()`` (the same length: bytes are lowered one for one).
    """
    end = _HEADER_END_RE.search(raw)
    head = raw[: end.start()] if end else raw
    longest = max((len(field) for field in _FIELD_END_RE.split(head)), default=0)
    longest_mime = pos = 0
    while (match := _MIME_FIELD_RE.search(lowered, pos)) is not None:
        start = match.start()
        if start and raw[start - 1] not in b"\r\n":  # not at the start of a line
            pos = match.end()
            continue
        field_end = _FIELD_END_RE.search(raw, match.end())
        pos = field_end.start() if field_end else len(raw)
        longest_mime = max(longest_mime, pos - start)
    return longest, longest_mime


# The headers mail-parser needs to find and decode the body; mailcase reads the others.
_BODY_HEADERS = frozenset(
    {"content-type", "content-transfer-encoding", "content-disposition", "mime-version"}
)


# The parts a report returns the message in (RFC 3464 section 2, RFC 6533 for
# internationalised mail): the whole message or its headers.
RETURNED_TYPES = frozenset(
    {
        "message/rfc822",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/global",
        "message/global-headers",
    }
)

# Bytes handed to the stdlib's parser at a time (see message_from_bytes).
_PARSE_CHUNK = 1 << 16


def message_from_bytes(raw: bytes) -> Message:
    """``email.message_from_bytes(raw)`` (the compat32 policy), at a third of its memory.

    The stdlib decodes the whole message to text and reads it through a
    ``StringIO``, which keeps its own copy at four bytes a character: the peak
    was 7.7 times the message's size (a 45 MB message, 350 MB) before a part was
    read. Fed a chunk of bytes at a time, the same feed parser holds only the
    lines it has not placed yet: 2.7 times. It splits lines itself, a CRLF cut
    between two chunks included, so the message it builds is the same.
    """
    parser = email.parser.BytesFeedParser()
    view = memoryview(raw)
    for start in range(0, len(raw), _PARSE_CHUNK):
        parser.feed(bytes(view[start : start + _PARSE_CHUNK]))
    return parser.close()


def _read_body(message: Any) -> Any:
    """mail-parser's reading of ``message`` (text parts, attachments, defects).

    Call it after the headers were collected: when mail-parser fails, it is
    tried again on ``message`` stripped of every header but the MIME ones.
    """
    # Imported here: a poll that parses in a child process (mailcase.parsing)
    # never needs it, and its import is 25 ms of the command's start.
    import mailparser

    if message.is_multipart() and message.epilogue is None:
        # mail-parser 4.8 reads the epilogue when a part lacks its start boundary
        # and fails on None ("'NoneType' object has no attribute 'index'"): mail
        # cut short was refused (a SendGrid bounce in the corpus; mutants in
        # tests/test_fuzz.py). No epilogue and an empty one mean the same.
        message.epilogue = ""
    try:
        return mailparser.MailParser(message)
    except Exception:
        # mail-parser decodes every header up front and gives up on the whole
        # message for one it cannot (an encoded word with bad base64 in a From
        # name, a NUL in a charset name: HeaderParseError, ValueError), while
        # mailcase decodes headers itself (_collect_headers). Read the body alone;
        # a NUL in a part's charset (ValueError, not LookupError) is dropped too.
        for name in {str(k).lower() for k in message} - _BODY_HEADERS:
            del message[name]
        for part in message.walk():
            charset = part.get_param("charset")
            if isinstance(charset, str) and "\x00" in charset:
                part.set_param("charset", charset.replace("\x00", ""))
        return mailparser.MailParser(message)


def _mime_shape(message: Any) -> tuple[int, int]:
    """How deeply multiparts nest (1 for a single part) and how many parts there
    are in all (the message itself included), without recursion."""
    deepest, count, stack = 0, 0, [(message, 1)]
    while stack:
        part, depth = stack.pop()
        deepest, count = max(deepest, depth), count + 1
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((child, depth + 1) for child in payload)
    return deepest, count


_BOUNDARY_RE = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
# A literal first: the regex engine then skips to each "--" at C speed (a 47 MB
# attachment: 50 ms); whether it starts a line is looked at for each match.
_DELIMITER_RE = re.compile(rb"--([^\r\n]{1,210})")
_LINE_ENDS = (0x0A, 0x0D)


def _count_parts(lowered: bytes) -> int:
    """How many MIME parts the lowercased message ``lowered`` has, at least.

    A part need not have a Content-Type (it is then text/plain, RFC 2045 5.2):
    a message of 100,000 parts with only a Content-Disposition each, or with
    lone-CR line ends, counted none. So the larger of two counts: Content-Type
    lines (any line end), and delimiter lines of the boundaries the message
    declares (RFC 2046 5.1.1: "--" and the boundary, closing ones not counted).
    """
    by_type = (
        lowered.startswith(_PART_HEADER)
        + lowered.count(b"\n" + _PART_HEADER)  # after LF or CRLF
        + lowered.count(b"\r" + _PART_HEADER)  # after a lone CR
    )
    boundaries = {m.group(1) or m.group(2) for m in _BOUNDARY_RE.finditer(lowered)}
    if not boundaries:
        return by_type
    delimiters = 0
    for match in _DELIMITER_RE.finditer(lowered):
        start = match.start()
        if start and lowered[start - 1] not in _LINE_ENDS:
            continue
        if match.group(1).rstrip(b" \t") in boundaries:
            delimiters += 1
    return max(by_type, delimiters)


# WHATWG Encoding Standard (section 4.2, "Names and labels"): every label of
# windows-1252. Browsers and mail clients decode text so labelled as
# windows-1252, because Windows mailers label their curly quotes, dashes and
# euro signs (bytes 0x80-0x9F) as iso-8859-1 or us-ascii; read as Latin-1 those
# bytes are invisible C1 controls. iso-8859-15 is not among them: it differs
# from windows-1252 in other positions too (0xA4 is the euro sign).
_WINDOWS_1252_LABELS = frozenset(
    {
        *("ansi_x3.4-1968", "ascii", "cp1252", "cp819", "csisolatin1", "ibm819"),
        *("iso-8859-1", "iso-ir-100", "iso8859-1", "iso88591", "iso_8859-1"),
        *("iso_8859-1:1987", "l1", "latin1", "us-ascii", "windows-1252", "x-cp1252"),
    }
)
# Of those, the labels that promise 7-bit text. 8-bit text under them (or under
# no label at all) is whatever the sender's machine wrote: UTF-8 when it decodes
# as such (an invalid UTF-8 sequence in Latin text is very unlikely), else
# windows-1252, the rule raw 8-bit headers follow too.
_ASCII_LABELS = frozenset({"ansi_x3.4-1968", "ascii", "us-ascii"})
# windows-1252 as the WHATWG defines it: the five bytes Python's cp1252 leaves
# undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) are the C1 controls of the same
# number, so decoding never fails.
_WINDOWS_1252_TABLE = "".join(bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(256))


def _windows_1252(data: bytes) -> str:
    """``data`` as WHATWG windows-1252; never raises."""
    return codecs.charmap_decode(data, "strict", _WINDOWS_1252_TABLE)[0]


def _utf8_else_windows_1252(data: bytes) -> str:
    """``data`` as UTF-8 when it is valid UTF-8, else as windows-1252; never raises."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _windows_1252(data)


# WHATWG Encoding Standard, section 4.2: labels whose text is decoded with a
# superset of the charset named, because mailers label their superset's text with
# the older name (GBK text as gb2312, cp932 as Shift_JIS, windows-1254 as
# iso-8859-9). Python's strict codecs of the older names refused that text.
_SUPERSETS = MappingProxyType(
    {
        **dict.fromkeys(
            ("chinese", "csgb2312", "csiso58gb231280", "gb2312", "gb_2312", "gb_2312-80"),
            "gb18030",
        ),
        **dict.fromkeys(("gbk", "iso-ir-58", "x-gbk"), "gb18030"),
        **dict.fromkeys(("big5", "big5-hkscs", "cn-big5", "csbig5", "x-x-big5"), "big5hkscs"),
        **dict.fromkeys(
            ("csshiftjis", "ms932", "ms_kanji", "shift-jis", "shift_jis", "sjis", "x-sjis"),
            "cp932",
        ),
        **dict.fromkeys(("windows-31j",), "cp932"),
        **dict.fromkeys(
            ("cseuckr", "csksc56011987", "euc-kr", "iso-ir-149", "korean", "ks_c_5601-1987"),
            "cp949",
        ),
        **dict.fromkeys(("ks_c_5601-1989", "ksc5601", "ksc_5601", "windows-949"), "cp949"),
        **dict.fromkeys(("iso-8859-9", "iso8859-9", "iso88599", "latin5", "l5"), "cp1254"),
        **dict.fromkeys(("iso-8859-11", "tis-620", "dos-874", "windows-874"), "cp874"),
    }
)
# WHATWG labels of UTF-8.
_UTF8_LABELS = frozenset({"unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "utf-8", "utf8"})
_MEND_UTF8 = "mailcase-windows-1252"


def _windows_1252_for_invalid_utf8(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: bytes that are not UTF-8 read as windows-1252 instead."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return _windows_1252(error.object[error.start : error.end]), error.end


codecs.register_error(_MEND_UTF8, _windows_1252_for_invalid_utf8)


def decode_text(data: bytes, charset: str | None) -> str:
    """Text bytes labelled ``charset`` (None: no label) as Unicode; never raises.

    Unlabelled and ASCII-labelled bytes: UTF-8, else windows-1252. Every other
    WHATWG label of windows-1252: windows-1252. A UTF-8 label: UTF-8, each
    invalid byte sequence read as windows-1252. A label the WHATWG reads as a
    superset (gb2312 as gb18030, Shift_JIS as cp932...): that superset. Any
    other charset Python knows:
    that charset; bytes invalid in it are UTF-8 when they decode as such (mail
    converted to UTF-8 keeps its old label), else that charset with U+FFFD for
    what it cannot read. An unknown or unusable label: as if there were none.
    The result may hold lone surrogates or NUL (``_clean`` removes them).
    """
    label = (charset or "").strip().lower()
    if not label or label in _ASCII_LABELS:
        return _utf8_else_windows_1252(data)
    if label in _WINDOWS_1252_LABELS:
        return _windows_1252(data)
    label = _SUPERSETS.get(label, label)
    if label in _UTF8_LABELS:
        # Labelled UTF-8 but written in windows-1252 (older Outlook, forms, a
        # signature pasted from another program): "señal" arrived as "se\ufffdal".
        # Each byte sequence that is not UTF-8 is read as windows-1252, so the
        # valid UTF-8 around it is kept (the WHATWG decoder would replace it).
        return data.decode("utf-8", _MEND_UTF8)
    try:
        return data.decode(label)
    except UnicodeDecodeError:
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode("utf-8")
        # Some codecs refuse "replace" too ("idna", "punycode": a bare UnicodeError).
        with contextlib.suppress(UnicodeError, LookupError, ValueError):
            return data.decode(label, "replace")
        return _utf8_else_windows_1252(data)
    except (LookupError, ValueError):
        # Unknown name, a non-text codec ("base64"), a NUL in the name, or a codec
        # that refuses to decode at all ("undefined" raises a bare UnicodeError).
        return _utf8_else_windows_1252(data)


def _recover_8bit(value: Any) -> str:
    """A raw header value as Unicode, its raw 8-bit bytes decoded; encoded words untouched.

    Raw 8-bit headers are common (RFC 6532 allows UTF-8; older clients send
    Latin-1): the stdlib keeps their bytes as surrogate escapes, which are
    recovered here and decoded as UTF-8, else as windows-1252; and as UTF-8
    when the one fault is a character cut short at the end of a word (Yahoo
    cuts long file names so: read whole as windows-1252, a customer was greeted
    as "JosÃ© RamÃ³n"). Not per byte otherwise: in windows-1252 an accented
    capital before a quote or a no-break space ("PAGUÉ”") is a valid UTF-8 pair.
    """
    text = str(value)
    if not _has_8bit(text):
        return text
    data = text.encode("ascii", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if _cut_short(data, exc.start):
            return data.decode("utf-8", _MEND_UTF8)
        return _windows_1252(data)


def _cut_short(data: bytes, start: int) -> bool:
    """Whether the UTF-8 fault at ``start`` of ``data`` is a character cut short (a lead
    byte with fewer continuation bytes than it needs) at the end of ``data`` or before
    a quote, a space or an angle bracket, with valid UTF-8 after it."""
    lead = data[start]
    need = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if lead <= 0xF4 else 0
    if lead < 0xC2 or need == 0:
        return False
    end = start + 1
    while end < len(data) and end - start < need and 0x80 <= data[end] <= 0xBF:
        end += 1
    if end - start >= need:
        return False
    rest = data[end:]
    if rest and rest[:1] not in (b'"', b" ", b"\t", b"<", b">", b";"):
        return False
    try:
        rest.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_MENDED_WORD_LABELS = _WINDOWS_1252_LABELS | _UTF8_LABELS | frozenset(_SUPERSETS)


def _decode_words(text: str) -> str:
    """``text`` with its RFC 2047 encoded words decoded; never raises."""
    try:
        words = decode_header(text)
        if len(words) > 1 or words[0][1] is not None:  # else: no encoded word at all
            # Encoded words labelled with a windows-1252 or a UTF-8 label are
            # decoded as bodies are (decode_text); handed on as Unicode. A
            # non-ASCII charset name keeps make_header's spacing between words.
            words = [
                (decode_text(data, charset), "utf-8")
                if isinstance(data, bytes) and charset in _MENDED_WORD_LABELS and not data.isascii()
                else (data, charset)
                for data, charset in words
            ]
            text = str(make_header(words))
    except Exception:
        # make_header gives up on the whole value for one bad encoded word (an
        # unknown charset such as =?x-unknown?q?...?=, bytes invalid in the
        # declared charset, or non-ASCII text next to an encoded word), which
        # left "=?utf-8?q?...?=" in subjects. The modern parser decodes each
        # word on its own and replaces what it cannot read; else keep the text.
        with contextlib.suppress(Exception):
            text = str(email.policy.default.header_factory("x-unstructured", text))
    return text


def _clean(text: str) -> str:
    # Lone surrogates (surrogateescape of 8-bit header bytes) are not Unicode. A NUL
    # (a raw byte, =00 in an encoded word, %00 in an RFC 2231 file name) is, but
    # PostgreSQL text cannot hold it: the whole message was quarantined there.
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    return text.replace("\x00", "\ufffd")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# RFC 5322 3.6.2 and 3.6.3 address fields, and their Resent- forms (3.6.6).
_ADDRESS_FIELDS = frozenset(
    {
        *("from", "sender", "reply-to", "to", "cc", "bcc"),
        *("resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc"),
    }
)


def _collect_headers(
    message: Message,
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Every header, decoded; and the address fields, with their encoded words undecoded.

    The first mapping is lower-cased name -> decoded values (``InboundMail.headers``).
    The second holds only the fields of ``_ADDRESS_FIELDS``, their raw 8-bit bytes
    decoded but their RFC 2047 encoded words left as they are, for :func:`_addresses`.
    """
    headers: dict[str, list[str]] = {}
    address_fields: dict[str, list[str]] = {}
    # raw_items(): the values as they were on the wire, before compat32 turns
    # 8-bit ones into opaque Header objects.
    for name, value in message.raw_items():
        key = str(name).lower()
        text = _recover_8bit(value)
        headers.setdefault(key, []).append(_clean(_decode_words(text)))
        if key in _ADDRESS_FIELDS:
            address_fields.setdefault(key, []).append(text)
    return (
        {name: tuple(values) for name, values in headers.items()},
        {name: tuple(values) for name, values in address_fields.items()},
    )


# Bounds on what a header may give us; beyond them a value is not an address
# or id anyone can answer (and PostgreSQL, unlike SQLite, enforces the columns).
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: a path holds at most 256 octets with <>
MAX_NAME = 200
MAX_MSGID = 998  # RFC 5322 2.1.1: a line is at most 998 characters
MAX_CONTENT_TYPE = 255  # RFC 6838 4.2: type and subtype names of at most 127 each


def _addresses_of(fields: Mapping[str, tuple[str, ...]], name: str) -> list[tuple[str, str]]:
    """:func:`_addresses` of the address field ``name`` (lower case) of ``fields``.

    Raises :class:`MessageError` for a field the stdlib's address parser cannot
    follow: it recurses once per "(" of a comment, so ``Juan ((((…`` with a few
    hundred of them raises RecursionError (the message is quarantined, and says why).
    """
    try:
        return _addresses(fields.get(name, ()))
    except RecursionError as exc:
        raise MessageError(Reason.ADDRESS_NESTING, field=name.title()) from exc


def _addresses(values: Iterable[str]) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs of address field values with encoded words undecoded.

    Guarantees: each addr-spec is lower-cased, holds an "@" with something on
    both sides and no space, and is at most MAX_ADDRESS long, exactly as
    written in the field ("@example.com", what a From of two bare addresses
    parses to, is none): RFC 2047 section 5
    forbids encoded words in an addr-spec, so the field is parsed before any is
    decoded (decoding first let ``From: =?utf-8?q?Ana_=3Cana=40x=2Ecom=3E=2C?=
    <mallory@y.com>`` name ana@x.com as its sender). Only the display names are
    decoded, into one line of at most MAX_NAME characters.
    """
    pairs = []
    for name, addr in getaddresses(list(values)):
        addr = canonical_address(_clean(addr).strip().lower())
        local, at, domain = addr.rpartition("@")
        if (
            at
            and local
            and domain
            and not any(c.isspace() for c in addr)
            and len(addr) <= MAX_ADDRESS
        ):
            pairs.append((display_name(_clean(_decode_words(name))), addr))
    return pairs


def display_name(name: str) -> str:
    """``name`` as mailcase keeps a person's name: one line of at most MAX_NAME characters
    (the length of the columns that hold it, which PostgreSQL enforces)."""
    return _one_line(name)[:MAX_NAME]


# Header fields that the servers on the way add to each delivered copy (RFC 5321
# 4.4 trace fields, the delivery agent's, and the filters'), not the sender.
_TRACE_FIELDS = frozenset(
    {
        *(b"received", b"return-path", b"delivered-to", b"x-original-to", b"envelope-to"),
        *(b"x-envelope-to", b"x-envelope-from", b"x-delivered-to", b"x-received"),
        *(b"authentication-results", b"received-spf", b"x-greylist", b"x-forwarded-to"),
        *(b"x-original-authentication-results", b"dkim-filter", b"x-mailcase-loop"),
    }
)
_TRACE_PREFIXES = (b"arc-", b"x-spam", b"x-virus", b"x-rspamd", b"x-ms-exchange-organization")


def content_digest(raw: bytes) -> str:
    """sha256 of ``raw`` without its trace fields, line ends as LF; never raises.

    What two copies of one message share whatever their deliveries added: two
    copies without a Message-ID, delivered to two of our mailboxes, differ only
    in what each delivery added on top of the header.
    """
    data = raw.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    digest = hashlib.sha256()
    keep = True
    for line in head.split(b"\n"):
        if line[:1] not in (b" ", b"\t"):  # a new field; else a continuation line
            name = line.partition(b":")[0].strip().lower()
            keep = name not in _TRACE_FIELDS and not name.startswith(_TRACE_PREFIXES)
        if keep:
            digest.update(line + b"\n")
    digest.update(sep + body)
    return digest.hexdigest()


# RFC 5322 3.2.3 dot-atom text: a local part that needs no quotes.
_DOT_ATOM = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def canonical_address(addr: str) -> str:
    """One spelling for one mailbox (``addr`` lower-cased and stripped): ``"juan"@x.com.``
    is ``juan@x.com``. Every door through which an address enters (a message's
    fields, ``cases open --customer``, ``cases list --customer``) spells it so.

    A quoted local part that needs no quotes (RFC 5321 4.1.2: the same
    mailbox) loses them, and the domain its root dot. Otherwise a forger
    could vary the spelling of one victim's address past the per-sender cap
    on acknowledgements, and one customer's cases would be split.
    """
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr
    if len(local) > 2 and local[0] == local[-1] == '"' and _DOT_ATOM.fullmatch(local[1:-1]):
        local = local[1:-1]
    # A non-ASCII domain in its IDNA form (RFC 5891), the form notices go to: a
    # customer whose client writes either spelling is one customer.
    return ascii_domain(f"{local}@{domain.rstrip('.')}")


def _msgids(values: Iterable[str]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for value in values:
        for msgid in _MSGID_RE.findall(value):
            if len(msgid) <= MAX_MSGID:  # longer: no id (dedup falls back to the content hash)
                found[msgid] = None
    return tuple(found)


def _content_type(value: object) -> str:
    text = str(value or "application/octet-stream").lower()
    # A control character (a NUL above all, which PostgreSQL cannot store) makes no type.
    ok = len(text) <= MAX_CONTENT_TYPE and text.isprintable()
    return text if ok else "application/octet-stream"


def _first_msgid(values: Iterable[str]) -> str | None:
    """The message's own id as ``<id>``, or None when it has no usable one.

    Guarantees: the id is ``<``, printable ASCII without spaces or angle brackets
    holding at least one letter or digit, then ``>``. ``<>``, ``< >``, ``<<>>``
    and the like are no id (dedup then falls back to the content hash): taken as
    one, every such message was a duplicate of the first. Ids without an "@"
    are kept: Exchange and other real mailers write ``<0000ff00-2222-...>``.
    """
    ids = [msgid for msgid in _msgids(values) if _usable_msgid(msgid[1:-1])]
    if ids:
        return ids[0]
    # Some mailers omit the brackets; keep a bare token rather than lose the id.
    for value in values:
        token = value.strip()
        if (
            token.isascii()
            and token.isprintable()
            and " " not in token
            and len(token) < 500
            and _usable_msgid(token)
        ):
            return f"<{token}>"
    return None


def _usable_msgid(inner: str) -> bool:
    # No bracket inside (a "<>" token became "<<>>"), and at least one letter or
    # digit: "<>", "<@>" or "<.>" are placeholders that many senders share.
    return "<" not in inner and ">" not in inner and any(c.isalnum() for c in inner)


def _date(values: tuple[str, ...]) -> datetime | None:
    if not values:
        return None
    try:
        parsed = parsedate_to_datetime(values[0])
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: "Date: 3 Nov 99999999999999999999 ..." overflows a C long
        # in the stdlib; it escaped parse_inbound (found by tests/test_properties.py).
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        # "31 Dec 9999 23:00 -0500" parses, but is past datetime.max in UTC, where
        # it is stored: the OverflowError quarantined the customer's message.
        parsed.astimezone(UTC)
    except OverflowError:
        return None
    return parsed


_BODY_TYPES = frozenset({"text/plain", "text/html"})
# Extensions for generated attachment names, by content type. A fixed table:
# mimetypes.guess_extension would read /etc/mime.types (I/O, and a different
# answer on every system).
_EXTENSIONS = MappingProxyType(
    {
        **{"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif"},
        **{"image/webp": ".webp", "image/heic": ".heic", "image/bmp": ".bmp"},
        **{"image/tiff": ".tif", "application/pdf": ".pdf", "application/zip": ".zip"},
        **{"application/msword": ".doc", "application/vnd.ms-excel": ".xls"},
        **{
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
        },
        **{"text/plain": ".txt", "text/html": ".html", "text/csv": ".csv"},
        **{"text/calendar": ".ics", "application/ics": ".ics", "text/rtf": ".rtf"},
        **{"application/rtf": ".rtf", "audio/mpeg": ".mp3", "video/mp4": ".mp4"},
        **{"message/rfc822": ".eml", "message/global": ".eml"},
        **{"application/pgp-signature": ".asc", "application/pkcs7-signature": ".p7s"},
    }
)


def _sort_parts(message: Message) -> tuple[list[Message], list[Message], bool]:
    """The text/plain and the text/html parts of ``message``'s own body, in order; and
    whether they are one of each, alternatives of one multipart/alternative.

    Also names every other leaf part that has no file name ``attachment-N.ext``,
    N counting from 1 in the message's part order, the extension from its
    content type where known, and marks it ``Content-Disposition: attachment``
    (``inline`` for an image the HTML shows by its Content-ID, which mail-parser
    would have named by that id), so that
    mail-parser keeps it as an attachment: it drops unnamed parts that are not
    text (a photo or a PDF sent without a name), and names unnamed text
    attachments at random. Never looks inside a message/* part (an attached
    message is one attachment: its text is not this message's body).
    """
    plain: list[Message] = []
    html: list[Message] = []
    generated = 0
    # (part, inside an attachment, id of the multipart/alternative it is a child of)
    stack: list[tuple[Message, bool, int | None]] = [(message, False, None)]
    # RFC 2046 5.1.4: alternatives are the same content; two text/plain ones (the
    # second often HTML labelled as plain) are one text, not two to join.
    alternatives_taken: set[tuple[int, str]] = set()
    alternative_of: dict[int, int | None] = {}  # id of a body part -> its alternative's
    while stack:
        part, in_attachment, alternative = stack.pop()
        content_type = part.get_content_type()
        maintype = content_type.partition("/")[0]
        _recover_8bit_params(part)
        disposition = part.get_content_disposition()
        named = bool(part.get_filename())
        # Only a container's payload is read here: a leaf's get_payload() decodes 8-bit
        # text by its charset, which some codecs refuse outright ("idna").
        payload = part.get_payload() if part.is_multipart() else None
        if maintype == "multipart" and isinstance(payload, list):
            # RFC 2183 section 2.9: a container's disposition covers its parts. The
            # text of an attached multipart is not the body (mail-parser's rule).
            in_attachment = in_attachment or (
                disposition not in (None, "inline") or (named and disposition != "inline")
            )
            parent = id(part) if content_type == "multipart/alternative" else None
            stack.extend(
                (child, in_attachment, parent)
                for child in reversed(payload)
                if isinstance(child, Message)
            )
            if disposition != "attachment" or named:
                continue  # else mail-parser keeps the whole of it: name it below
        elif (
            content_type in _BODY_TYPES
            and not in_attachment
            and disposition != "attachment"
            and (not named or disposition == "inline")
        ):
            # mail-parser's body parts, as it picks them. A named text part is
            # body text only when inline (Apple Mail); mail-parser keeps it as
            # an attachment too.
            if alternative is not None:
                if (alternative, content_type) in alternatives_taken:
                    continue
                alternatives_taken.add((alternative, content_type))
            (plain if content_type == "text/plain" else html).append(part)
            alternative_of[id(part)] = alternative
            continue
        elif maintype == "message" and disposition != "attachment":
            # Forwarded mail (message/rfc822), a bounce's report and returned
            # message: mail-parser keeps a message part (a container to it) only
            # when its disposition is "attachment", and else drops it.
            if named:
                _set_disposition_type(part, "attachment")
                continue
        elif named:
            continue  # mail-parser keeps it under its own name
        generated += 1
        name = f"attachment-{generated}{_EXTENSIONS.get(content_type, '')}"
        # An image the HTML shows by its Content-ID stays inline (a signature's logo);
        # mail-parser named it by the Content-ID itself ("<c024cb5b@...>").
        shown = maintype == "image" and bool(part.get("content-id")) and disposition != "attachment"
        del part["content-disposition"]
        part["Content-Disposition"] = f'{"inline" if shown else "attachment"}; filename="{name}"'
    paired = (
        len(plain) == len(html) == 1
        and alternative_of[id(plain[0])] is not None
        and alternative_of[id(plain[0])] == alternative_of[id(html[0])]
    )
    return plain, html, paired


def _recover_8bit_params(part: Message) -> None:
    """Decode raw 8-bit bytes in ``part``'s Content-Type and Content-Disposition fields.

    A file name written in raw 8-bit ("recibo_se\\xf1al.pdf", not RFC 2231) is
    common from older mailers; the stdlib would hand it on with U+FFFD for
    each such byte. The fields are rewritten as :func:`_recover_8bit` reads them.
    """
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition") and _has_8bit(value):
            part.replace_header(name, _recover_8bit(value))


def _has_8bit(text: str) -> bool:
    """Whether ``text`` holds raw 8-bit bytes (surrogate escapes, as the stdlib keeps them)."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def _set_disposition_type(part: Message, disposition: str) -> None:
    """Make ``disposition`` the disposition type of ``part``, its parameters kept as written."""
    for name, value in part.raw_items():
        if name.lower() == "content-disposition":
            _, semicolon, params = str(value).partition(";")
            part.replace_header(name, disposition + semicolon + params)
            return
    part["Content-Disposition"] = disposition


def _body_text(
    plain_parts: Iterable[Message], html_parts: Iterable[Message], *, paired: bool = False
) -> tuple[str, str | None]:
    """The readable text of the body: its text/plain parts, else its HTML as text;
    and, for HTML, the text above its first quote element (None when it has none,
    and for text/plain, where the quote is found in the text: mailcase.quoting)."""
    plain = [t for t in map(_part_text, plain_parts) if t.strip()]
    above: str | None = None
    html = ""
    if not plain or (paired and _placeholder("\n".join(plain))):
        html = "\n".join(t for t in map(_part_text, html_parts) if t)
    if html:
        text, above = html_texts(html)
        if plain and not _placeholder("\n".join(plain), text):
            text, above = "\n".join(plain), None
    else:
        text = "\n".join(plain)
    return _tidy(text), None if above is None else _tidy(above)


_PLACEHOLDER_CHARS = 300
_WORD_RE = re.compile(r"\w{3,}")
_LINK_RE = re.compile(r"<?(?:https?://|mailto:|www\.)\S+>?", re.IGNORECASE)


def _placeholder(plain: str, html_text: str | None = None) -> bool:
    """Whether a short ``plain`` text may be a stand-in for the HTML ("This is the body in
    plain text for non-HTML mail clients", PHPMailer's sample AltBody, copied into web
    forms; "This is an HTML message. Please use an HTML capable mail program"), and,
    given the HTML's text, whether it is one: fewer than a fifth of its words (links
    aside) are in it. Only for a plain part and an HTML part that are alternatives of
    each other (:func:`_sort_parts`): an unrelated HTML part never stands in.

    A real alternative repeats the HTML's words (an agent's "#resolver procedente ..."
    in both parts), and keeps its plain text, where commands and quotes are read.
    """
    if len(plain) > _PLACEHOLDER_CHARS:
        return False
    if html_text is None:
        return True
    if not re.search(r"\w", html_text):
        return False  # an HTML with no words (a photo, an empty body) stands in for nothing
    # A link's target is in the plain text ("comprobante <https://drive...>") and not
    # in the HTML's text: its words count for neither.
    words = {w.casefold() for w in _WORD_RE.findall(_LINK_RE.sub(" ", plain))}
    if not words:
        return False
    known = {w.casefold() for w in _WORD_RE.findall(html_text)}
    return len(words & known) * 5 < len(words)


def _tidy(text: str) -> str:
    text = _clean(text).replace("\r\n", "\n").replace("\r", "\n")
    return text.strip("\n")


def _part_text(part: Message) -> str:
    """A text part's content, transfer encoding and charset decoded (see decode_text)."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes) or not data:
        return ""
    return decode_text(data, part.get_content_charset())


def _files_of_attached_messages(message: Message) -> frozenset[str]:
    """The sha256 digests of the leaf parts inside ``message``'s attached messages
    (message/rfc822 and the like, at any depth): files that belong to them."""
    digests: set[str] = set()
    for part in message.walk():
        if part is message or part.get_content_maintype() != "message":
            continue
        for inner in part.walk():
            if inner is part or inner.is_multipart():
                continue
            with contextlib.suppress(Exception):  # a broken part: not a file to match
                data = inner.get_payload(decode=True)
                if isinstance(data, bytes) and data:
                    digests.add(hashlib.sha256(data).hexdigest())
    return frozenset(digests)


def _attachments(parsed: Any, inner: frozenset[str] = frozenset()) -> Iterable[Attachment]:
    """mail-parser's attachments as :class:`Attachment`; ``inner``: the digests of the
    files inside attached messages (:func:`_files_of_attached_messages`)."""
    for item in parsed.attachments or []:
        payload = item.get("payload") or ""
        if item.get("binary"):
            data = _from_base64(str(payload))
        else:
            data = str(payload).encode("utf-8", "replace")
        disposition = str(item.get("content-disposition") or "").lower()
        yield Attachment(
            # Without bidirectional overrides: "factura\u202efdp.exe" reads as
            # "facturaexe.pdf" wherever the name is shown (a known lure).
            filename=BIDI_CONTROLS.sub(
                "", _one_line(_clean(str(item.get("filename") or "attachment")))
            )
            or "attachment",
            content_type=_content_type(item.get("mail_content_type")),
            payload=data,
            inline=bool(item.get("content-id")) and not disposition.startswith("attachment"),
            in_message=bool(inner) and hashlib.sha256(data).hexdigest() in inner,
        )


# Bidirectional overrides and isolates: "factura\u202efdp.exe" shows as "facturaexe.pdf".
BIDI_CONTROLS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
# Base64 text with nothing to clean but line breaks and blanks, padded at its end only.
# The blanks after the padding are matched only after an "=": with two classes both
# taking blanks in a row, a run of them before a stray character was tried at every
# split (a 78 KB attachment took 28 s, holding the interpreter lock all along).
_PLAIN_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n\t ]*(?:=+[\r\n\t ]*)?")


def _from_base64(payload: str) -> bytes:
    """The bytes of a part's base64 text, padding restored when the sender left it off.

    Some mailers (and mail cut short on the way) end base64 without its "="
    padding; ``b64decode`` refused it, and the base64 text itself was stored as
    the "photo", which nothing could open. The stdlib's own decoder pads too.
    """
    if _PLAIN_BASE64.fullmatch(payload):
        # The usual case: lines of base64 and its padding. Decoded as it stands
        # (binascii skips the line breaks), with no cleaned copy of the text: those
        # were two more copies of a large attachment at the peak of a parse.
        with contextlib.suppress(binascii.Error, ValueError):
            return binascii.a2b_base64(payload)  # a padding error: the way below
    clean = _NOT_BASE64.sub("", payload)
    if len(clean) % 4 == 1:  # a lone last character carries no whole byte
        clean = clean[:-1]
    try:
        return base64.b64decode(clean + "=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        return payload.encode("utf-8", "replace")


_BLOCK_TAGS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "br", "div", "dl", "dt", "dd"),
        *("footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li"),
        *("main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul"),
    }
)
# Not "head": an HTML mail that never closes its <head> (browsers and mail clients
# show the body all the same) lost every word after it. What <head> holds with text
# is skipped by its own tag; <meta> and <link> hold none.
_SKIP_TAGS = frozenset({"script", "style", "title", "noscript", "template", "xml"})  # Word's <xml>
_CELL_TAGS = frozenset({"td", "th"})  # a web form's "Nombre | Rosa Díaz" rows
# Elements with no end tag: never taken for hidden, since nothing would close them.
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
    | {"track", "wbr", "param"}
)
# A template's preheader, the line inbox lists show beside the subject: hidden from
# the reader (display:none, Outlook's mso-hide:all, the hidden attribute).
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|mso-hide\s*:\s*all", re.IGNORECASE)
_SPACE_RUN = re.compile(r"\s+")
_ANY_TAG = re.compile(r"<[a-zA-Z!/?]")

# Where mail clients start the quoted history of a reply in HTML: Apple Mail,
# Thunderbird and most webmail quote in <blockquote type="cite">; Gmail in
# div.gmail_quote (inside div.gmail_quote_container, with its attribution);
# Yahoo in div.yahoo_quoted, whose id is "yahoo_quoted_…" (or "ydp…yahoo_quoted_…");
# Thunderbird writes its attribution in div.moz-cite-prefix; Outlook on the
# web and new Outlook put div#appendonsend above the rule and div#divRplyFwdMsg
# (the From/Sent block) under it. A bare <blockquote> is a quote only right
# under an attribution ("… escribió:"): Gmail's "indent" is one too.
_QUOTE_CLASSES = frozenset(
    {"gmail_quote", "gmail_quote_container", "yahoo_quoted", "moz-cite-prefix"}
)
_QUOTE_IDS = frozenset({"appendonsend", "divrplyfwdmsg"})
_QUOTE_ID_PART = "yahoo_quoted"
# How much text is looked at above a bare <blockquote> for its attribution:
# an attribution is one line of at most a few hundred characters, and bounding
# the look keeps thousands of <blockquote> linear.
_ATTRIBUTION_LOOKBACK_PARTS = 64
_ATTRIBUTION_LOOKBACK_CHARS = 600


def _is_quote_element(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    """Whether a start tag is one of the quote elements above (a bare <blockquote> aside)."""
    values = {name: (value or "") for name, value in attrs}
    if tag == "blockquote" and values.get("type", "").strip().lower() == "cite":
        return True
    if not _QUOTE_CLASSES.isdisjoint(values.get("class", "").lower().split()):
        return True
    element_id = values.get("id", "").strip().lower()
    return element_id in _QUOTE_IDS or _QUOTE_ID_PART in element_id


class _TextExtractor(HTMLParser):
    """Text as a mail client shows the HTML: line breaks from blocks and <br> only (a
    line break in the source is a space: Outlook and Thunderbird wrap their HTML at a
    space, and a wrapped "&gt; 300 ms" then read as a quoted line and was cut), table
    cells apart, a link's address after its words."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0  # inside <pre>: its lines are kept as written
        # (href, len(parts) at the <a>) of each link open now.
        self.links: list[tuple[str, int]] = []
        # [tag, len(parts) at its start, open elements of that name] of each hidden
        # element open now. Its text is dropped at its end tag: one never closed
        # drops nothing (unclosed, it could have hidden the rest of the mail).
        self.hidden: list[list[Any]] = []
        # len(parts) when the first quote element started: parts[:quote_at] is
        # the text above the quoted history. None while there is none.
        self.quote_at: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._note_quote(tag, attrs)
        if self.hidden and tag == self.hidden[-1][0]:
            self.hidden[-1][2] += 1
        elif tag not in _VOID_TAGS and _hidden(attrs):
            self.hidden.append([tag, len(self.parts), 1])
        if tag in _SKIP_TAGS:
            self.skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        elif tag == "pre":
            self.pre_depth += 1
        elif tag == "a":
            # Links do not nest (HTML: an <a> ends the one open, as browsers read it):
            # kept open to the end, each one's words were joined again at every </a>
            # (quadratic: 2.5 MB of them took minutes).
            if self.links:
                self._link_address(*self.links.pop())
            self.links.append((dict(attrs).get("href") or "", len(self.parts)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._note_quote(tag, attrs)
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def _note_quote(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.quote_at is not None or self.skip_depth:
            return
        if _is_quote_element(tag, attrs) or (
            tag == "blockquote" and is_attribution_line(self._last_line())
        ):
            self.quote_at = len(self.parts)

    def _last_line(self) -> str:
        """The last non-blank line of the text so far, or part of it (bounded look-back)."""
        tail: list[str] = []
        size = 0
        for part in reversed(self.parts[-_ATTRIBUTION_LOOKBACK_PARTS:]):
            tail.append(part)
            size += len(part)
            if size > _ATTRIBUTION_LOOKBACK_CHARS:
                break
        lines = "".join(reversed(tail)).rstrip().rsplit("\n", 1)
        return lines[-1]

    def handle_endtag(self, tag: str) -> None:
        if self.hidden and tag == self.hidden[-1][0]:
            self.hidden[-1][2] -= 1
            if not self.hidden[-1][2]:
                _, start, _ = self.hidden.pop()
                del self.parts[start:]
                if self.quote_at is not None:
                    self.quote_at = min(self.quote_at, start)
                # A link opened inside it is gone with its words.
                self.links = [(href, at) for href, at in self.links if at <= start]
        if tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        elif tag in _CELL_TAGS:
            self.parts.append(" ")
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        elif tag == "a" and self.links:
            self._link_address(*self.links.pop())

    def _link_address(self, href: str, start: int) -> None:
        """After a link's words, its web address when they do not show it: the
        customer's evidence (a payment receipt on Drive, a speed test) is the address."""
        written = "".join(self.parts[start:])
        words = written.strip()
        address = href.strip()
        if not words or not address.lower().startswith(("http://", "https://")):
            return  # an image's link (a logo), a mailto:, an anchor
        bare = address.split("://", 1)[1].rstrip("/").lower()
        if bare not in words.lower():
            # After the words, before the space that ends them ("aquí (https://…) y").
            self.parts.append(f" ({address})" + (" " if written[-1:].isspace() else ""))

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data if self.pre_depth else _SPACE_RUN.sub(" ", data))


def _hidden(attrs: list[tuple[str, str | None]]) -> bool:
    """Whether an element with ``attrs`` is hidden from the reader."""
    return any(
        name == "hidden" or (name == "style" and _HIDDEN_STYLE.search(value or ""))
        for name, value in attrs
    )


def html_to_text(html: str) -> str:
    """Readable text from HTML: no tags, no script/style content, entities decoded."""
    return html_texts(html)[0]


def html_texts(html: str) -> tuple[str, str | None]:
    """:func:`html_to_text` of ``html``, and the text above its quoted history.

    The second is ``None`` unless ``html`` has one of the quote elements mail
    clients write (see ``_QUOTE_CLASSES``): then it is the text before the
    first of them, read as :func:`html_to_text` reads it, without its last
    line when that line is an attribution ("Internet Plarey escribió:"), in
    any wording, since it stands right above a quote. Cut here, where the
    markup still says where the quote starts: in the text, only the
    attribution's wording would, and not every client's is known.
    """
    if not _ANY_TAG.search(html):
        # Plain text labelled text/html (a hand-made PHP form's "Nombre: …" lines): its
        # lines are all the layout it has.
        return _readable(htmllib.unescape(html)), None
    extractor = _TextExtractor()
    try:
        extractor.feed(_without_unclosed_tags(html))
        extractor.close()
    except Exception:  # HTMLParser is lenient; this is belt and braces
        return re.sub(r"<[^>]*>", " ", html), None
    text = _readable("".join(extractor.parts))
    if extractor.quote_at is None:
        return text, None
    above = _readable("".join(extractor.parts[: extractor.quote_at])).split("\n")
    if is_attribution_line(above[-1]):
        above.pop()
    return text, "\n".join(above).strip()


# A "<" with no ">" before the next "<" (or the end) cannot open a tag. Python's
# HTMLParser looks for the end of each such "<" to the end of the text: quadratic
# (CVE-2025-6069, fixed in CPython 3.11.13; Debian 12 ships 3.11.2), so 120 KB of
# "<a " took three minutes, and a poll past the watchdog got the daemon restarted
# to read the same message again. [^<>]* stops at the next "<" or ">": linear.
_UNCLOSED_TAG = re.compile(r"<(?=[^<>]*(?:<|\Z))")
# Real mail has a few ("a < b" in text, a comment holding a tag); each costs the
# parser one scan of the text. Rewritten only beyond this, so that markup as
# mail clients write it is read as written.
_UNCLOSED_TAGS_TOLERATED = 10


# Comments and marked sections end at a string of their own, which HTMLParser
# looks for to the end of the text from each one left open ("<!--x>" repeated:
# 480 KB took 50 s): "-->" for a comment, "]>" for Outlook's "<![if …]>",
# "]]>" for the others ("<![CDATA[").
_SECTION_OPENER = re.compile(r"<!--|<!\[\s*(?:(if|else|endif)\b)?", re.IGNORECASE)


def _without_unclosed_tags(html: str) -> str:
    """``html``, its ``<`` that cannot open a tag, and its comments and marked sections
    that nothing closes, written ``&lt;`` when there are more than
    :data:`_UNCLOSED_TAGS_TOLERATED` of either: then linear to parse, whatever
    the Python. Linear itself."""
    html = _without_unclosed_sections(html)
    for found, _ in enumerate(_UNCLOSED_TAG.finditer(html), start=1):
        if found > _UNCLOSED_TAGS_TOLERATED:
            return _UNCLOSED_TAG.sub("&lt;", html)
    return html


def _without_unclosed_sections(html: str) -> str:
    """``html``, its comments and marked sections with no end after them written
    ``&lt;`` when there are more than :data:`_UNCLOSED_TAGS_TOLERATED`.

    One is open when it starts after the last end of its kind in the text:
    the parser's search from it would then run to the end.
    """
    ends = {"--": html.rfind("-->"), "ms": html.rfind("]>"), "cdata": html.rfind("]]>")}

    def is_open(match: re.Match[str]) -> bool:
        kind = "--" if match.group().startswith("<!--") else "ms" if match.group(1) else "cdata"
        return match.start() >= ends[kind]

    unclosed = 0
    for match in _SECTION_OPENER.finditer(html):
        unclosed += is_open(match)
        if unclosed > _UNCLOSED_TAGS_TOLERATED:
            return _SECTION_OPENER.sub(
                lambda m: "&lt;" + m.group()[1:] if is_open(m) else m.group(), html
            )
    return html


def _readable(text: str) -> str:
    """Each line's whitespace collapsed, at most one blank line in a row, no blank ends."""
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
