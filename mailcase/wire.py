"""Notices on the wire: headers and MIME bodies written straight to bytes.

The standard library's ``EmailMessage`` re-parses every header it is given
and refolds it on output; for the two notices each message brings that was a
fifth of ingest time (see README, "Benchmark"). Notices have a fixed shape,
so they are written here directly, to the same standards:

* Every header line ends in CRLF and is folded before 78 columns where the
  value has spaces to fold at, and never reaches RFC 5322's 998.
* Text that is not plain printable ASCII goes into RFC 2047 encoded words
  (UTF-8, base64, never splitting a character), unless the message is for an
  SMTPUTF8 recipient, where RFC 6532 lets UTF-8 stand as it is. Text that
  merely *looks* like an encoded word (``=?``) is encoded too, so a customer's
  subject reaches the customer exactly as written.
* Callers pass values already folded onto one line (``render.one_line``);
  this module still refuses to emit CR, LF or NUL inside a header.
* Bodies are UTF-8 quoted-printable with CRLF line ends; the multipart
  boundary contains ``=_``, which quoted-printable output can never contain.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_LINE = 78  # RFC 5322 2.1.1: SHOULD be no more than 78 characters
MAX_ID = 900  # a folded line holds one id; RFC 5322 2.1.1's hard limit is 998
# UTF-8 bytes per encoded word: 48 base64 characters, 60 in all, so that even
# "Content-Language: " and one word fit in 78 columns.
_ENCODED_CHUNK = 36
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(\.[{_ATEXT}]+)*\Z")
# RFC 6532 3.2: with SMTPUTF8, any non-ASCII character is atext too.
# (The non-ASCII range written as a negated class: as a range next to others it
# cost 7 ms to compile, at every start.)
_UATEXT = rf"(?:[{_ATEXT}]|[^\x00-\x7f])"
_DOT_ATOM_UTF8 = re.compile(rf"{_UATEXT}+(?:\.{_UATEXT}+)*\Z")
_PHRASE_ATOMS = re.compile(rf"[{_ATEXT} ]*\Z")
_ASCII_ID = re.compile(r"[\x21-\x7e]+\Z")
_UTF8_ID = re.compile(r"[^\x00-\x20\x7f-\x9f\s]+\Z")  # no controls, no spaces
_DOMAIN_JUNK = re.compile(r"[\x00-,/:-@\[-`{-\x7f]")  # ASCII but letters, digits, "." and "-"
_FORBIDDEN = str.maketrans({"\r": " ", "\n": " ", "\x00": " "})


def _needs_encoding(text: str, utf8: bool) -> bool:
    if "=?" in text:
        return True
    if utf8:
        return not text.isprintable()  # controls, C1, separators, format characters
    return not _PRINTABLE.match(text)


def encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 B-encoded words of at most 60 characters each."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        width = len(char.encode("utf-8", "surrogatepass"))
        if size + width > _ENCODED_CHUNK and chunk:
            words.append(_word("".join(chunk)))
            chunk, size = [], 0
        chunk.append(char)
        size += width
    if chunk or not words:
        words.append(_word("".join(chunk)))
    return words


def _word(text: str) -> str:
    data = text.encode("utf-8", "replace")
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def _fold(name: str, tokens: Iterable[str]) -> str:
    """``Name: token token ...`` folded between tokens before 78 columns."""
    lines: list[str] = []
    line = name + ":"
    for token in tokens:
        if len(line) + 1 + len(token) > MAX_LINE and line != name + ":":
            lines.append(line)
            line = " " + token
        else:
            line += " " + token
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def unstructured(name: str, value: str, *, utf8: bool = False) -> str:
    """An unstructured header (Subject and the like) for ``value``."""
    value = value.translate(_FORBIDDEN)
    words = value.split(" ")
    if _needs_encoding(value, utf8) or any(len(w) > MAX_LINE - len(name) - 2 for w in words):
        # Whitespace between adjacent encoded words is not part of the text
        # (RFC 2047 6.2), so every space travels inside a word.
        return _fold(name, encoded_words(value))
    return _fold(name, [w for w in words if w] if value.strip() else [""])


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def addr_spec(address: str, *, utf8: bool = False) -> str:
    """``local@domain`` safe in a header: an odd local part quoted, junk in a domain dropped.

    A customer's address comes from parsed mail and may be anything; this
    guarantees only that it cannot break the header or add one. Without
    ``utf8`` the caller guarantees an ASCII address (``message`` refuses others).
    """
    local, at, domain = address.translate(_FORBIDDEN).rpartition("@")
    if not at:
        local, domain = domain, ""
    if not (_DOT_ATOM_UTF8 if utf8 else _DOT_ATOM).match(local):
        local = _quoted(local)
    domain = _DOMAIN_JUNK.sub("", domain)
    return f"{local}@{domain}" if domain else local


def ascii_domain(address: str) -> str:
    """``address`` with a non-ASCII domain in its ASCII form (IDNA, RFC 5891), when
    its local part is ASCII: ``juan@telefonía.mx`` → ``juan@xn--telefona-i2a.mx``.

    Such an address then needs no SMTPUTF8 (RFC 6531), which many relays lack;
    the same mailbox either way. Anything else is returned as it is, and so is
    a domain that Python's codec (IDNA 2003) would map to another name than
    IDNA 2008 does: "straße.de" would become "strasse.de", another domain.
    """
    local, at, domain = address.rpartition("@")
    if not at or address.isascii() or not local.isascii():
        return address
    try:
        ascii_form = domain.encode("idna")
        if ascii_form.decode("idna").lower() != domain.lower():
            return address
        return f"{local}@{ascii_form.decode('ascii')}"
    except UnicodeError:  # not a valid IDN: left to SMTPUTF8, or refused there
        return address


def address(name: str, display_name: str, addr: str, *, utf8: bool = False) -> str:
    """An address header: ``Name: display name <addr>``, or just ``<addr>``'s spec."""
    spec = addr_spec(addr, utf8=utf8)
    display_name = " ".join(display_name.translate(_FORBIDDEN).split())
    if not display_name:
        return _fold(name, [spec])
    if _needs_encoding(display_name, utf8):
        return _fold(name, [*encoded_words(display_name), f"<{spec}>"])
    if _PHRASE_ATOMS.match(display_name):
        return _fold(name, [*display_name.split(" "), f"<{spec}>"])
    return _fold(name, [_quoted(display_name), f"<{spec}>"])


def identifiers(name: str, ids: Iterable[str], *, utf8: bool = False) -> str:
    """In-Reply-To / References: msg-ids folded between ids; unusable ids are left out.

    Returns "" when none is left. An id with spaces, controls, or (without
    SMTPUTF8) non-ASCII characters is not a msg-id any receiver can match; one
    longer than ``MAX_ID`` would not fit on a line of 998 with its field name.
    """
    pattern = _UTF8_ID if utf8 else _ASCII_ID
    kept = [i for i in ids if 0 < len(i) <= MAX_ID and "=?" not in i and pattern.match(i)]
    return _fold(name, kept) if kept else ""


def raw_header(name: str, value: str) -> str:
    """A header whose value mailcase made itself (dates, MIME fields): no encoding needed."""
    return f"{name}: {value.translate(_FORBIDDEN)}\r\n"


def quoted_printable(text: str) -> bytes:
    """``text`` as UTF-8 quoted-printable with CRLF line ends (RFC 2045 6.7)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(text.encode("utf-8", "replace"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


def _part(subtype: str, text: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii") + quoted_printable(text)


@dataclass(frozen=True, slots=True)
class FileAttachment:
    """A file sent with a notice: the sender's file name, its MIME type and its bytes."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+\Z")
_QUOTABLE_NAME = re.compile(r"[\x20-\x7e]+\Z")
# RFC 2231 attr-char: what may stand in an extended value without a %XX escape.
_ATTR_CHAR = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
MAX_FILENAME = 200  # characters; longer names keep their ending (".pdf")
_NAME_CHUNK = 50  # characters of a percent-encoded name per continuation line


def _safe_filename(name: str) -> str:
    """``name`` as a file name to send: one line, no path, at most MAX_FILENAME characters."""
    name = "".join(c for c in name if c.isprintable()).replace("/", "_").replace("\\", "_")
    name = name.strip().strip(".") or "adjunto"
    if len(name) > MAX_FILENAME:
        stem, dot, ending = name.rpartition(".")
        ending = dot + ending if stem and len(ending) <= 10 else ""
        name = name[: MAX_FILENAME - len(ending)] + ending
    return name


def _name_params(param: str, name: str) -> str:
    """``param="name"`` on a folded line of its own, or its RFC 2231 form (UTF-8, in
    numbered sections) for other names; every line shorter than 78 characters."""
    if _QUOTABLE_NAME.match(name) and '"' not in name and "\\" not in name and len(name) <= 60:
        return f';\r\n {param}="{name}"'
    encoded = "".join(chr(b) if b in _ATTR_CHAR else f"%{b:02X}" for b in name.encode("utf-8"))
    chunks: list[str] = []
    while encoded:
        cut = min(_NAME_CHUNK, len(encoded))
        # Never split a %XX escape between two lines.
        if "%" in encoded[max(cut - 2, 0) : cut]:
            cut = encoded.rindex("%", 0, cut)
        chunks.append(encoded[:cut])
        encoded = encoded[cut:]
    chunks[0] = "utf-8''" + chunks[0]
    # RFC 2231 section 3: numbered sections, each on a folded line of its own.
    return "".join(f";\r\n {param}*{i}*={chunk}" for i, chunk in enumerate(chunks))


_WORD_BYTES = 42  # of a name per RFC 2047 word: 56 base64 characters, a line under 78


def _type_name(name: str) -> str:
    """Content-Type's ``name=`` for ``name``: quoted as it is when it may be, else as RFC
    2047 encoded words inside the quotes, one per folded line.

    Not RFC 2231 there: Outlook (desktop on POP/IMAP) does not read it and showed
    "Untitled attachment" (ATT00001) for any name with an accent or over 60
    characters. Encoded words in the quoted ``name`` are what Thunderbird, Gmail and
    Outlook itself write; Content-Disposition keeps the standard RFC 2231
    ``filename*``, which the other clients prefer.
    """
    if _QUOTABLE_NAME.match(name) and '"' not in name and "\\" not in name and len(name) <= 60:
        return f';\r\n name="{name}"'
    chunks: list[bytes] = []
    chunk = b""
    for char in name:  # never splitting a character's UTF-8 bytes between two words
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _WORD_BYTES:
            chunks.append(chunk)
            chunk = b""
        chunk += encoded
    chunks.append(chunk)
    encoded_words = [f"=?utf-8?B?{base64.b64encode(c).decode('ascii')}?=" for c in chunks]
    return ';\r\n name="' + "\r\n ".join(encoded_words) + '"'


def _attachment_part(attachment: FileAttachment) -> bytes:
    """The file's MIME part: its bytes in base64 under its name, and its type where
    base64 may carry it (an attached message or multipart as application/octet-stream).
    """
    content_type = attachment.content_type.strip().lower()
    name = _safe_filename(attachment.filename)
    if content_type == "message/rfc822" and not name.lower().endswith(".eml"):
        # Sent as application/octet-stream below, a forwarded mail is opened by its
        # file name alone, and ".eml" is the name mail clients and desktops open
        # as a mail; a subject as its name ("Pago $499.00") or none would not be.
        name = _safe_filename(name + ".eml")
    if not _MIME_TYPE.match(content_type) or content_type.startswith(("message/", "multipart/")):
        # RFC 2046 5.2.1: message/* allows only 7bit, 8bit or binary, and RFC 2045 6.4
        # forbids base64 for multipart/* (which would need its boundary too). A
        # customer's forwarded mail may hold 8-bit text and lines past 998, so
        # its bytes travel in base64 as a file. Sent as message/rfc822 in base64,
        # a reader parsed the base64 text as the mail: no From, no Subject.
        content_type = "application/octet-stream"
    head = (
        f"Content-Type: {content_type}{_type_name(name)}\r\n"
        f"Content-Disposition: attachment{_name_params('filename', name)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode("ascii") + base64.encodebytes(attachment.data).replace(b"\n", b"\r\n")


def _body(text: str, html: str | None) -> bytes:
    """The body entity (its Content-* lines, a blank line, its content): text, or text and HTML."""
    if html is None:
        return _part("plain", text)
    boundary = "=_mc_" + secrets.token_hex(12)
    # RFC 2046 5.1.1: the CRLF before a delimiter belongs to it, so a part's
    # own final line end needs one more.
    return b"".join(
        [
            f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'.encode(),
            f"--{boundary}\r\n".encode("ascii"),
            _part("plain", text),
            f"\r\n--{boundary}\r\n".encode("ascii"),
            _part("html", html),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        ]
    )


def message(
    headers: str,
    text: str,
    html: str | None,
    *,
    utf8: bool = False,
    attachments: Sequence[FileAttachment] = (),
) -> bytes:
    """``headers`` (whole lines), MIME-Version and a text body, or text and HTML alternatives.

    With ``attachments``, a multipart/mixed message: that body first, then each
    file in base64 under its name (RFC 2231 for a name that is not plain ASCII);
    an attached message (named ``.eml``) or multipart as application/octet-stream.
    Without ``utf8`` the result is pure ASCII (UnicodeEncodeError otherwise).
    """
    head = (headers + "MIME-Version: 1.0\r\n").encode("utf-8" if utf8 else "ascii")
    if not attachments:
        return head + _body(text, html)
    boundary = "=_mc_" + secrets.token_hex(12)
    parts = [head, f'Content-Type: multipart/mixed;\r\n boundary="{boundary}"\r\n\r\n'.encode()]
    for entity in (_body(text, html), *map(_attachment_part, attachments)):
        parts += [f"--{boundary}\r\n".encode("ascii"), entity, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(parts)
