"""Folios (``PLR-2026-000123``): their format, and finding them in subjects (no I/O).

A folio is ``PREFIX-YYYY-NNNNNN``: the configured prefix, the year the case was
opened and a per-year sequence, zero-padded to six digits (it grows past six
digits rather than wrap). Customers and their mail clients mangle subjects, so
:func:`find_folios` tolerates ``Re:``/``RV:``/``Fwd:`` prefixes (they do not
matter: the folio is searched anywhere), any letter case, and spaces or
underscores around the dashes, e.g. ``re: [folio plr - 2026 - 123]``.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache

FOLIO_DIGITS = 6


def format_folio(prefix: str, year: int, number: int) -> str:
    """The canonical folio text for ``number`` in ``year``."""
    return f"{prefix}-{year:04d}-{number:0{FOLIO_DIGITS}d}"


@lru_cache(maxsize=16)
def _folio_pattern(prefix: str) -> re.Pattern[str]:
    # The prefix comes from config: escape it, never splice it raw into a regex.
    # A dash (ASCII, or the Unicode ones some clients substitute), or spaces: a folio
    # read out on the phone comes back typed as "PLR 2026 000123". Written with no
    # separator at all, the number must have its full six digits ("PLR2026000123").
    sep = r"(?:[\s_]*[-‐‑–—][\s_]*|[\s_]+)"
    return re.compile(
        rf"(?<![A-Za-z0-9]){re.escape(prefix)}"
        rf"(?:{sep}([0-9]{{4}}){sep}([0-9]{{1,9}})|([0-9]{{4}})([0-9]{{6,9}}))(?![0-9])",
        re.IGNORECASE,
    )


def find_folios(subject: str, prefix: str) -> list[str]:
    """Every folio of ``prefix`` in ``subject``, canonicalised, in order of appearance."""
    found: dict[str, None] = {}
    for match in _folio_pattern(prefix).finditer(subject):
        year, number = (int(match.group(i) or match.group(i + 2)) for i in (1, 2))
        if number > 0:
            found[format_folio(prefix, year, number)] = None
    return list(found)


# The colon class was meant to hold the full-width colon (U+FF1A) that CJK
# clients write, as in classify.py; it had lost it and held ":" twice.
_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|rv|fw|fwd|tr|aw|wg|r|enc|res)\s*(?:\[\d+\])?\s*[:\uff1a]\s*)+",
    re.IGNORECASE,
)


def strip_reply_prefixes(subject: str) -> str:
    """``subject`` without leading Re:/RE:/RV:/Fwd:/Fw:/ENC: markers (es and en clients)."""
    return _REPLY_PREFIX.sub("", subject).strip()


# How much of a sender's subject our notices repeat. Anyone can write to the
# support address, and an acknowledgement repeating a 17 KB subject of links
# would carry a spammer's text from the provider's own mailbox (backscatter).
SUBJECT_ECHO_CHARS = 120


def clip(text: str, limit: int = SUBJECT_ECHO_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# A link, or a bare domain ("bit.ly/premio", "premios-plarey.com"): what a
# spammer forging a victim's From wants our acknowledgement to carry to them.
_LINK = re.compile(
    r"(?P<url>(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)\S*)"  # scheme:// or www.
    r"|[\w-]+(?:\.[\w-]+)*\.(?P<tld>[a-z]{2,})\b(?:/\S*)?",  # a dotted name ending in letters
    re.IGNORECASE,
)
# Endings of file names, not of domains: "factura.pdf" and "CFDI A123.xml" are
# what customers write about. (.zip and .mov are both, and stay masked.)
_FILE_ENDINGS = frozenset(
    {
        *("pdf", "xml", "txt", "rtf", "csv", "js"),
        *("jpg", "jpeg", "png", "gif", "heic", "webp", "bmp", "tif", "tiff"),
        *("doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods"),
        *("rar", "mp3", "mp4", "wav", "ogg"),
    }
)
LINK_MASK = "[…]"


def _is_link(match: re.Match[str]) -> bool:
    if match.group("url"):
        return True
    tld = match.group("tld")
    # "Ma.Guadalupe", "ayer.Favor": a capitalised word after a missing space is
    # a name or a sentence, not a domain (which mail clients write in one case).
    return tld.lower() not in _FILE_ENDINGS and (tld.islower() or tld.isupper())


def has_link(text: str) -> bool:
    """Whether ``text`` holds a link or anything shaped like a domain name."""
    return any(_is_link(m) for m in _LINK.finditer(text))


def echoable_subject(subject: str) -> str:
    """``subject`` as our notices to customers may repeat it: links and domains
    masked, then clipped.

    Sender-supplied text reaches whoever the From names, who may not have
    written it (backscatter); a subject such as "Falla en mi módem" or "No abre
    factura.pdf" is kept whole. The case keeps the subject as written; only
    the echo is masked.
    """
    # Cut first: the mask's search is not linear in a pathological subject.
    text = subject[: 4 * SUBJECT_ECHO_CHARS]
    return clip(_LINK.sub(lambda m: LINK_MASK if _is_link(m) else m.group(0), text))


def tagged_subject(folio: str, subject: str, *, mask: bool = True) -> str:
    """``[Folio X] subject``, without doubling a tag the subject already carries.

    The subject is repeated as :func:`echoable_subject` allows; with ``mask``
    false (notices to agents, who may see the links) only clipped.
    """
    bare = remove_folio_tags(strip_reply_prefixes(subject), folio.split("-", 1)[0])
    return f"[Folio {folio}] {echoable_subject(bare) if mask else clip(bare)}".rstrip()


def remove_folio_tags(subject: str, prefix: str) -> str:
    """``subject`` without any ``[Folio PREFIX-…]`` tag (the rest of the text kept)."""
    return " ".join(_folio_tag_pattern(prefix).sub(" ", subject).split())


@lru_cache(maxsize=16)
def _folio_tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[\s*folio\s+{_folio_pattern(prefix).pattern}\s*\]", re.IGNORECASE)


def new_message_id(domain: str) -> str:
    """A fresh, unguessable RFC 5322 Message-ID of ours: ``<mc.RANDOM@domain>``."""
    return f"<mc.{secrets.token_hex(12)}@{domain}>"
