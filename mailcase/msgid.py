"""Message-IDs of ours that carry a case id and a MAC (no I/O).

When mailcase notifies agents about a case, the notice's Message-ID is
``<mc.{case_id}.{nonce}.{mac}@{domain}>``. An agent who replies from an
ordinary mail client sends it back in ``In-Reply-To``/``References``
(RFC 5322 3.6.4), so a reply that names a valid id proves its writer saw our
notice of that case: a Message-ID cannot be guessed, because the MAC is an
HMAC-SHA256 under a key only mailcase holds, over the case id and a random
nonce.

The domain is not part of the MAC and is ignored on verification: it is only
there to make the id globally unique (RFC 5322 3.6.4), and it changes with the
mailbox that sent the notice or with a renamed domain, while the proof does not.

A Message-ID is no secret once sent: anyone who received the notice (or a
forward of it) holds the id. It proves "saw our notice of case N", not "is
agent X"; combine it with :mod:`mailcase.authres` for the sender. An id seen
going to, or coming from, someone who is not an agent is no proof from then
on (the service keeps such ids; see ``service._note_exposed``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

# 24 hex digits = 96 bits of HMAC: far beyond guessing by mail, and short
# enough that the id stays on one header line in every client.
MAC_HEX_DIGITS = 24

# The case id has no leading "+"/"-" and at most 18 digits (it fits a signed
# 64-bit column, and int() never sees a huge string); the nonce is what
# secrets.token_hex gives, or any short alphanumeric string a test chooses.
_NONCE_RE = re.compile(r"[0-9A-Za-z]{1,64}")
_DOMAIN_RE = re.compile(r"[0-9A-Za-z](?:[0-9A-Za-z.-]{0,251}[0-9A-Za-z])?")
_SIGNED_RE = re.compile(
    rf"<mc\.([0-9]{{1,18}})\.([0-9A-Za-z]{{1,64}})\.([0-9a-fA-F]{{{MAC_HEX_DIGITS}}})@[^<>@\s]+>"
)


def _mac(key: bytes, case_id: str, nonce: str) -> str:
    message = f"{case_id}.{nonce}".encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:MAC_HEX_DIGITS]


def signed_message_id(key: bytes, case_id: int, domain: str, *, nonce: str | None = None) -> str:
    """A fresh Message-ID ``<mc.{case_id}.{nonce}.{mac}@{domain}>`` for a notice of ``case_id``.

    Guarantees: :func:`verify_message_id` with the same ``key`` returns
    ``case_id`` for it; the id is a valid RFC 5322 msg-id on one line; with
    ``nonce=None`` each call gives a different id (64 random bits).
    Raises ValueError for an empty key, a negative case id, or a nonce or
    domain that would make the id malformed (all programming or configuration
    errors, never the content of a message).
    """
    if not key:
        # HMAC with an empty key is a MAC anyone can compute.
        raise ValueError("the Message-ID key must not be empty")
    if isinstance(case_id, bool) or case_id < 0 or case_id >= 10**18:
        raise ValueError(f"case id out of range: {case_id!r}")
    if nonce is None:
        nonce = secrets.token_hex(8)
    elif not _NONCE_RE.fullmatch(nonce):
        raise ValueError("a Message-ID nonce must be 1 to 64 ASCII letters or digits")
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"not a domain for a Message-ID: {domain!r}")
    return f"<mc.{case_id}.{nonce}.{_mac(key, str(case_id), nonce)}@{domain}>"


def verify_message_id(key: bytes, message_id: str) -> int | None:
    """The case id that ``message_id`` was signed for under ``key``, else None.

    Guarantees: None for anything not produced by :func:`signed_message_id`
    with this key (other keys, changed case id, nonce or MAC, other formats,
    an empty key), whatever the domain; never raises; the MAC comparison takes
    the same time wherever the first wrong digit is (hmac.compare_digest), so
    timing reveals nothing about a valid MAC.
    """
    if not key:
        return None
    match = _SIGNED_RE.fullmatch(message_id.strip())
    if match is None:
        return None
    case_text, nonce, mac = match.groups()
    # The MAC is over the digits exactly as written: "0123" is not "123".
    expected = _mac(key, case_text, nonce)
    # Hex is case-insensitive; a client that upper-cases an id is no forger.
    if not hmac.compare_digest(expected, mac.lower()):
        return None
    return int(case_text)


def signed_ids_in(text: str) -> list[str]:
    """Every string of ``text`` shaped like a signed id (unverified: see :func:`proofs_in`)."""
    return [match.group(0) for match in _SIGNED_RE.finditer(text)]


def proofs_in(key: bytes, message_ids: Iterable[str]) -> tuple[tuple[int, str], ...]:
    """``(case id, proof)`` of each verified id in ``message_ids``: in order, each proof once.

    The proof (``"{case_id}.{nonce}"``) names a signed id whatever the domain
    it is written with, since the domain is not signed: an id known to have
    reached someone else is refused by its proof. Guarantees: only ids
    :func:`verify_message_id` accepts contribute; never raises for any string.
    """
    found: dict[str, int] = {}
    for message_id in message_ids:
        case_id = verify_message_id(key, message_id)
        if case_id is not None:
            match = _SIGNED_RE.fullmatch(message_id.strip())
            assert match is not None  # verified above
            found.setdefault(f"{match.group(1)}.{match.group(2)}", case_id)
    return tuple((case_id, proof) for proof, case_id in found.items())
