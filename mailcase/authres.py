"""Was an agent's message authenticated by our receiving server? (RFC 8601, no I/O)

Anybody can put ``From: ana.tecnica@internet-plarey.com.mx`` on a message.
Before mailcase runs an agent's commands or relays their words to a
customer, it wants evidence that the message really came from the agent's
domain: a DKIM signature of that domain, an SPF pass for it, or a DMARC pass,
as recorded by the mail server that received the message in an
``Authentication-Results`` header (RFC 8601).

Which headers to believe is the whole point. A header field is only as
trustworthy as whoever wrote it, and the sender writes every header below the
ones the receiving servers prepend (RFC 5322 3.6: trace fields are added at
the top). So results count only from a server we trust:

* with ``trusted_authserv_ids`` (recommended: the authserv-id our own MX or
  mailbox provider writes, e.g. ``mx.google.com`` or ``mail.internet-plarey.com.mx``),
  headers whose authserv-id is one of them count. RFC 8601 section 5
  requires such a server to delete headers that claim its own authserv-id
  before adding its own, so a forged one does not survive; but not every
  server does (OpenDKIM's removal has had bugs, CVE-2022-48521), so a forged
  one below the real one must not outvote it: for each method, the topmost
  trusted header that gives results for it decides (each milter of a Postfix
  writes its own header: OpenDKIM dkim, OpenDMARC dmarc), and nothing below
  a trusted header that records a failure counts;
* with ``trust_topmost`` instead (for a server that writes no authserv-id,
  such as Microsoft 365), only the topmost header counts: the last server to
  handle the message, our receiving server, added it after every header the
  sender could have written. This has a known gap: if our server adds no
  Authentication-Results at all, the topmost one is the sender's. So it is
  an admin's explicit choice (``agents.trust_topmost_authentication_results``);
* with neither, no header counts: an agent proves itself by replying to a
  signed notice (:mod:`mailcase.msgid`).

Results are per domain, never per mailbox: a pass proves the message left the
domain's own servers, not which of its users wrote it. A domain check is also
exact: ``mail.internet-plarey.com.mx`` does not vouch for
``internet-plarey.com.mx`` (a subdomain may be delegated to someone else).

The parser follows RFC 8601 section 2.2's grammar loosely enough to read what
Gmail, Microsoft 365 (which omits the authserv-id) and Postfix milters
(OpenDKIM, OpenDMARC, policyd-spf) actually write, and never raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mailcase.inbound import InboundMail

# The methods whose passes name a domain we can compare, and the property
# (RFC 8601 section 2.7, "ptype.property") that names it, in order of preference.
_DOMAIN_PROPERTIES: dict[str, tuple[str, ...]] = {
    "dkim": ("header.d", "header.i"),  # the signing domain (RFC 6376 3.5 d= / i=)
    "spf": ("smtp.mailfrom",),  # the envelope sender checked (RFC 7208 2.4)
    "dmarc": ("header.from",),  # the From domain DMARC aligned (RFC 7489)
}


# Results that say the check was made and failed (RFC 8601 2.7; RFC 7208 2.6).
# Not "none" nor "neutral": no signature, or a domain without a DMARC policy, is
# how most mail arrives, and says nothing against a pass of another method.
_FAILURES = frozenset({"fail", "softfail", "permerror", "policy"})


@dataclass(frozen=True, slots=True)
class _Result:
    """One ``method=result`` clause with its properties (lower-cased names)."""

    method: str
    result: str
    properties: dict[str, list[str]] = field(default_factory=dict)


def authenticated_domains(
    headers: Sequence[str],
    *,
    trusted_authserv_ids: frozenset[str] = frozenset(),
    trust_topmost: bool = False,
) -> frozenset[tuple[str, str]]:
    """The ``(method, domain)`` pairs that passed, per the trusted headers.

    ``headers`` are the Authentication-Results values in header order, topmost
    first (as in ``InboundMail.headers["authentication-results"]``).
    ``method`` is ``"dkim"``, ``"spf"`` or ``"dmarc"``; ``domain`` is lower
    case without a trailing dot. Guarantees: only ``pass`` results count;
    only headers from a trusted server are read (see the module docstring);
    never raises.
    """
    trusted = {_normalise_domain(a) for a in trusted_authserv_ids}
    trusted.discard("")
    if trusted:
        chosen: Sequence[str] = headers
    elif trust_topmost:
        # No list of trusted servers: believe only the header the receiving
        # server prepended last; every header below it may be the sender's.
        chosen = headers[:1]
    else:
        return frozenset()
    found: set[tuple[str, str]] = set()
    decided: set[str] = set()  # methods a header above already gave results for
    for header in chosen:
        authserv_id, results = _parse_header(header)
        if trusted and _normalise_domain(authserv_id) not in trusted:
            continue
        here = {r.method for r in results if r.method in _DOMAIN_PROPERTIES}
        for result in results:
            if result.method not in here - decided or result.result != "pass":
                continue
            for prop in _DOMAIN_PROPERTIES[result.method]:
                for value in result.properties.get(prop, ()):
                    domain = _domain_of(value)
                    if domain:
                        found.add((result.method, domain))
        decided |= here
        if any(r.result in _FAILURES for r in results if r.method in here):
            break  # what a server we trust found failing, nothing below can pass
    return frozenset(found)


def sender_is_authenticated(
    mail: InboundMail,
    address: str,
    *,
    trusted_authserv_ids: frozenset[str] = frozenset(),
    trust_topmost: bool = False,
) -> bool:
    """True when ``mail`` comes from ``address``'s domain, as our server verified.

    Guarantees: False unless ``address`` is the message's From address (not
    Reply-To or a web form's customer: a pass for our own web form's domain
    must not turn anything typed into it into an agent) and a trusted
    Authentication-Results header records a DKIM, SPF or DMARC pass for
    exactly ``address``'s domain. Never raises.
    """
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not (local and at and domain) or address != mail.from_address.lower():
        return False
    domain = _normalise_domain(domain)
    headers = mail.headers.get("authentication-results", ())
    passed = authenticated_domains(
        headers, trusted_authserv_ids=trusted_authserv_ids, trust_topmost=trust_topmost
    )
    return any(d == domain for _, d in passed)


# --- parsing ---------------------------------------------------------------------


def _parse_header(value: str) -> tuple[str, list[_Result]]:
    """An Authentication-Results value → (authserv-id, results); "" when it has none."""
    segments = _split_outside_quotes(_strip_comments(value), ";")
    if not segments:
        return "", []
    first = _Scanner(segments[0])
    first.keyword()
    first.skip_space()
    if first.peek() == "=":
        # Microsoft 365 writes "Authentication-Results: spf=pass ...; dkim=..."
        # with no authserv-id: the first segment is already a result.
        authserv_id = ""
        result_segments = segments
    else:
        # The authserv-id is a token or a quoted string; what follows it in
        # its segment is an optional version number, of no use here.
        authserv_id = _Scanner(segments[0]).value()
        result_segments = segments[1:]
    results = [r for r in (_parse_result(s) for s in result_segments) if r is not None]
    return authserv_id, results


def _parse_result(segment: str) -> _Result | None:
    """``method[/version]=result [reason=...] [ptype.property=value ...]``, or None."""
    scanner = _Scanner(segment)
    method = scanner.keyword()
    if not method:
        return None
    scanner.skip_space()
    if scanner.peek() == "/":  # a method version, "dkim/1=pass"
        scanner.advance()
        scanner.keyword()
        scanner.skip_space()
    if scanner.peek() != "=":
        return None  # "none" (RFC 8601 no-result) or noise
    scanner.advance()
    result = _Result(method=method.lower(), result=scanner.keyword().lower())
    while not scanner.at_end():
        name = scanner.keyword()
        scanner.skip_space()
        if not name or scanner.peek() != "=":
            scanner.skip_word()  # something unparseable: skip it, keep the rest
            continue
        scanner.advance()
        result.properties.setdefault(name.lower(), []).append(scanner.value())
    return result


def _strip_comments(value: str) -> str:
    """``value`` with every RFC 5322 comment (nested, escaped) replaced by a space.

    Quoted strings are kept as they are: "(" inside quotes is not a comment.
    An unterminated comment runs to the end, as a lenient reader would.
    """
    out: list[str] = []
    depth = 0
    in_quote = False
    chars = iter(value)
    for char in chars:
        if char == "\\" and (depth or in_quote):
            escaped = next(chars, "")
            if in_quote:
                out.append(char + escaped)
        elif depth:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if not depth:
                    out.append(" ")
        elif in_quote:
            out.append(char)
            in_quote = char != '"'
        elif char == "(":
            depth = 1
        else:
            out.append(char)
            in_quote = char == '"'
    return "".join(out)


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    in_quote = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif in_quote and char == "\\":
            escaped = True
        elif char == '"':
            in_quote = not in_quote
        elif char == separator and not in_quote:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


class _Scanner:
    """A cursor over one comment-free ``;`` segment."""

    _SPECIALS = frozenset('=/;"')

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def advance(self) -> None:
        self.pos += 1

    def skip_space(self) -> None:
        # Folded headers keep their CRLF and tabs: all of it is whitespace.
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def skip_word(self) -> None:
        """Move past at least one character, then to the next whitespace."""
        self.skip_space()
        self.pos += 1
        while self.pos < len(self.text) and not self.text[self.pos].isspace():
            self.pos += 1

    def keyword(self) -> str:
        """A method, result or property name: a run without whitespace or ``=/;"``."""
        self.skip_space()
        start = self.pos
        while self.pos < len(self.text) and not (
            self.text[self.pos].isspace() or self.text[self.pos] in self._SPECIALS
        ):
            self.pos += 1
        return self.text[start : self.pos]

    def value(self) -> str:
        """A property value: up to the next whitespace, quoted parts unquoted.

        ``=`` and ``/`` are part of values (``header.b=Ab/c+d=``), and a quoted
        local part may precede a domain (``smtp.mailfrom="a b"@example.com``).
        """
        self.skip_space()
        parts: list[str] = []
        while self.pos < len(self.text) and not self.text[self.pos].isspace():
            if self.text[self.pos] == '"':
                parts.append(self._quoted())
            else:
                parts.append(self.text[self.pos])
                self.pos += 1
        return "".join(parts)

    def _quoted(self) -> str:
        self.pos += 1  # the opening quote
        parts: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                break
            if char == "\\" and self.pos < len(self.text):
                char = self.text[self.pos]
                self.pos += 1
            parts.append(char)
        return "".join(parts)


def _domain_of(value: str) -> str:
    """The domain of ``user@domain``, ``@domain`` or ``domain``; "" if none."""
    return _normalise_domain(value.strip().strip("<>").rpartition("@")[2])


def _normalise_domain(domain: str) -> str:
    domain = domain.strip().lower().rstrip(".")
    # A domain has no whitespace or brackets; anything else is not one.
    if any(c.isspace() or c in '<>@"' for c in domain):
        return ""
    return domain
