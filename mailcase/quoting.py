"""Strip quoted history and signatures from a reply body (no I/O).

Customers answer from Gmail, Outlook, Apple Mail and phones, in Spanish and
English. Each client marks the start of the quoted history differently; this
module knows the shapes below and cuts the body at the first one it finds:

* an attribution line ending in ``wrote:`` / ``escribió:`` and starting with
  ``On`` / ``El`` / ``En``, possibly wrapped over up to three lines (Gmail,
  Apple Mail, Yahoo, Thunderbird), that names an address or a time of day and
  has ``>``-quoted lines under it, or that only ``>``-quoted lines follow, or
  that, with no ``>`` lines (HTML turned into text, Yahoo's text/plain), has a
  client's whole shape: a time of day and an ``<address>``, or a date with its
  year, the time, a comma and a capitalised name (prose such as "El 20 de
  noviembre el técnico me escribió:" or "El lunes a las 10:00 nuestro técnico
  le escribió:" is kept);
* an ``-----Original Message-----`` / ``-----Mensaje original-----`` marker
  (Outlook desktop) or a forwarded-message marker (Gmail, Apple Mail);
* an Outlook header block, ``From:``/``De:`` followed by at least two of
  ``Sent:``/``Enviado:``/``Date:``/``Fecha:``, ``To:``/``Para:``,
  ``Subject:``/``Asunto:``, ``Cc:`` (with or without ``*bold*`` markers),
  together with the ``____`` or ``----`` rule Outlook and Gmail put above it.

Then it drops every ``>``-quoted line, the signature after an RFC 3676
``-- `` delimiter, and a trailing "Sent from my iPhone" style line. Text
written below or between the ``>`` lines of a quote that starts at an
attribution (Thunderbird's and mutt's habit, answers under each quoted
question, with or without a line above the quote) is kept after the text
above the quote; each part loses its own signature, so a signature above the
quote (Gmail puts it there) does not take the answers below with it.

Whatever the client, mailcase's own notice to agents must never be relayed
from an agent's reply: when the text left still holds the notice (its
``Folio:``/``Cliente:``/``Buzón:`` block, or the line introducing its command
help), it is cut at the quote header just above the notice, in any wording;
when there is none, :func:`agent_text` says so and the reply is refused.

Everything is line-based with anchored, bounded regular expressions, so the
cost is linear in the size of the text: a 1 MB reply takes tens of milliseconds, and
adversarial megabytes (100,000 "From:" lines) take well under a second.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

# Attribution lines are short; anything longer is prose that happens to end
# in "wrote:". Bounding them also bounds the work done per candidate.
_MAX_ATTRIBUTION_CHARS = 500
# Gmail wraps its attribution at ~76 columns, so a long name or address pushes
# "wrote:" onto the second or third line.
_MAX_ATTRIBUTION_LINES = 3
# Outlook header blocks can carry wrapped From/To/Cc values, and HTML → text
# conversion may put a blank line between every header line.
_HEADER_BLOCK_WINDOW = 10
_MARKER_MAX_CHARS = 120

# "En" is Yahoo's Spanish: "En viernes, 27 de noviembre de 2026, 10:00:00 CST, … escribió:".
_ATTRIBUTION_START = re.compile(r"(?:on|el|en)\s", re.IGNORECASE)
_ATTRIBUTION_END = re.compile(r"(?:wrote|escribi[oó])\s*:$", re.IGNORECASE)
# What a client's attribution names besides the date. Gmail and Apple Mail
# write the sender's address ("Juan <juan@example.com>", wrapped by Gmail as
# "<\njuan@example.com>"; "&lt;…&gt;" after a careless HTML → text); Gmail,
# Apple Mail, Yahoo, Thunderbird, Outlook mobile and mutt write the time
# ("a las 10:12", "at 10:12\u202fAM", "10:12:33 AM CST", "at 2:47").
_ATTRIBUTION_ADDRESS = re.compile(r"[\w.+'-]@[\w-]+\.\w")
_ATTRIBUTION_TIME = re.compile(r"(?<!\d)(?:[01]?\d|2[0-3]):[0-5]\d(?!\d)")
# "<juan@example.com>", Gmail's "(<juan@…>)" and wrapped "<\njuan@…>", "&lt;juan@…&gt;".
_ATTRIBUTION_BRACKETED_ADDRESS = re.compile(r"(?:<|&lt;)\s?[\w.+'-]{1,64}@[\w-]+\.\w")
# A client's date has its year ("27 nov 2026", "25/11/26"); its time is followed
# (after seconds, "AM", "a. m." or a zone) by a comma and the sender's name.
_ATTRIBUTION_YEAR = re.compile(r"(?<!\d)(?:(?:19|20)\d\d|\d{1,2}/\d{1,2}/\d{2,4})(?!\d)")
_NAME_WORD = r"[A-Z\u00c0-\u00de0-9][\w.'&-]*"
_ATTRIBUTION_TAIL = re.compile(
    rf"(?<!\d)(?:[01]?\d|2[0-3]):[0-5]\d(?!\d)[^,]{{0,16}},\s*{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,7}}"
    r"\s+(?i:wrote|escribi[oó])\s*:\s*$"
)

# Outlook desktop ("-----Original Message-----", "-----Mensaje original-----"),
# Yahoo ("----- Original Message -----"), Gmail forwards
# ("---------- Forwarded message ---------", "Mensaje reenviado") and Apple
# Mail forwards ("Begin forwarded message:", "Inicio del mensaje reenviado:").
_MARKER = re.compile(
    r"-{2,}\s*(?:original message|mensaje original|forwarded message|mensaje reenviado)\s*-{2,}"
    r"|(?:begin forwarded message|inicio del mensaje reenviado)\s*:",
    re.IGNORECASE,
)

# Outlook draws a line of 32 underscores above the header block; Gmail's
# plain-text rendering of an HTML <hr> is a run of dashes.
_RULE = re.compile(r"_{10,}|-{10,}")

# "From:", "*De:*", "**Enviado el:**": a header name of one or two words.
_HEADER_KEY = re.compile(r"[ \t]*\*{0,2}([^\W\d_]{1,12}(?: [^\W\d_]{1,12})?)\*{0,2}[ \t]*:")
_BLOCK_START_KEYS = frozenset({"from", "de"})
# Canonical name of each header Outlook (es/en) writes after From/De.
_BLOCK_KEYS = {
    "sent": "date",
    "enviado": "date",
    "enviado el": "date",  # Outlook desktop in Spanish
    "date": "date",
    "fecha": "date",
    "to": "to",
    "para": "to",
    "subject": "subject",
    "asunto": "subject",
    "cc": "cc",
    "cco": "cc",
    "bcc": "cc",
}
_MIN_BLOCK_KEYS = 2

# RFC 3676 section 4.3: the signature delimiter is "-- " alone on a line.
# Many clients and editors trim trailing whitespace, so a bare "--" counts too.
_SIG_DELIMITER = "--"

# Phone and app signatures the clients add below the new text: "Sent from my
# iPhone", "Enviado desde mi smartphone Samsung Galaxy.", "Enviado desde Yahoo
# Mail para Android", "Obtener Outlook para iOS". Only a known device after
# "my"/"mi", or a known app, followed by model words (capitalised, with a digit,
# or a device word such as "phone" or "móvil"): a customer's sentence that starts
# the same way ("Enviado desde el celular de mi esposa porque no hay internet",
# "Sent from my desk, is much easier") is kept.
_DEVICE_WORDS = (
    r"iphone|ipad|ipod|apple|samsung|galaxy|huawei|honor|motorola|moto|xiaomi|redmi|poco"
    r"|oppo|realme|vivo|nokia|lg|sony|xperia|pixel|oneplus|blackberry|android|alcatel|zte"
    r"|lenovo|wiko|verizon|sprint|t-mobile|at&t|telcel|movistar|tablet|tableta"
    r"|tel[eé]fono|celular|m[oó]vil|smartphone|dispositivo|phone|mobile|device|cellphone"
)
_APP_WORDS = (
    r"outlook|yahoo|correo|mail|gmail|aol|proton|protonmail|bluemail|spark|typeapp|samsung"
    r"|huawei|android|blackberry|windows"
)
# A word that may follow: capitalised or with a digit ("Galaxy", "S23", "5G"), or
# one of these, lower-case in the signatures clients write.
_MODEL_WORD = (
    r"(?:(?-i:[A-Z0-9\u00c1\u00c9\u00cd\u00d3\u00da\u00d1])[\w&+-]*"
    r"|(?:phone|smartphone|device|mobile|tablet|tel[eé]fono|celular|m[oó]vil|dispositivo"
    r"|tableta|inteligente|app|mail|email|secure|lite|pro|plus|max|ultra|mini|for|para|on"
    r"|en|de|iphone|ipad|ios)(?!\w))"
)
_DEVICE_SIGNATURE = re.compile(
    rf"(?:sent (?:from|with|via)|enviado (?:desde|con))\s+"
    rf"(?:(?:my|mi)\s+(?:{_DEVICE_WORDS})|(?:{_APP_WORDS}))(?!\w)"
    rf"(?:\s+{_MODEL_WORD}){{0,6}}\s*\.?"
    r"|(?:get|obtener|descargar) outlook (?:for|para) (?:ios|android)",
    re.IGNORECASE,
)
# The link an app's signature carries ("Obtener Outlook para iOS<https://aka.ms/…>",
# "Enviado desde Correo<https://go.microsoft.com/…> para Windows").
_SIGNATURE_LINK = re.compile(r"<[^<>\s]{0,200}>")


# mailcase's own notice to agents (templates/*/agent_notification.txt.j2), in
# either language: its block of fields, "Folio:" followed by "Cliente:" and
# "Buzón:" ("Customer:", "Mailbox:"; a "Escribió:" line may come between), and
# the line that introduces its command help. No agent writes these, and what
# follows them is internal: the customer's address, the mailbox, the help.
_NOTICE_FOLIO = re.compile(r"folio\s*:\s*(\S+)", re.IGNORECASE)
_NOTICE_FIELDS = (
    re.compile(r"(?:cliente|customer)\s*:", re.IGNORECASE),
    re.compile(r"(?:buz[oó]n|mailbox)\s*:", re.IGNORECASE),
)
_NOTICE_HELP = re.compile(
    r"(?:c[oó]mo trabajar este caso por correo|how to work this case by mail)\s*:", re.IGNORECASE
)
# The fields follow "Folio:" within this many lines: three, each perhaps with a
# blank line after it when the client's HTML put every line in a paragraph.
_NOTICE_FIELDS_WINDOW = 6


@dataclass(frozen=True, slots=True)
class AgentText:
    """What an agent wrote in a reply (:func:`new_text`), and whether the reply
    still holds mailcase's notice to agents.

    ``notice_line`` is ``""``, or a line of that notice (stripped) that could
    not be cut away because no quote header stands above the notice: ``text``
    then holds the notice, and the reply must not be relayed nor run.
    """

    text: str
    notice_line: str = ""


def strip_quoted(text: str) -> str:
    """The new text of a reply, without quoted history or signature.

    Guarantees: never raises; the result has no surrounding whitespace and
    its line endings are ``\\n``; it is ``""`` only when ``text`` is blank:
    when stripping would leave nothing (a message that is only a quote or
    only a signature) the whole ``text`` is returned, stripped, so that a
    customer's words are never lost; the time taken is linear in ``len(text)``.
    """
    return new_text(text) or _normalized(text).strip()


# Forward prefixes of the subject (es and en clients: Gmail "Fwd:", Outlook
# "RV:"/"FW:"/"ENC:", French and German Outlook "TR:"/"WG:"). Only as the
# first prefix: "Re: Fwd: …" answers a forward, and quotes it.
_FORWARD_SUBJECT = re.compile(
    r"^\s*(?:fwd?|rv|enc|tr|wg)\s*(?:\[\d+\])?\s*[:\uff1a]",
    re.IGNORECASE,
)
_FORWARD_MARKER = re.compile(r"forwarded message|mensaje reenviado", re.IGNORECASE)
# Reply prefixes of the subject, as mailcase.folio strips them: "Re:", Outlook's
# "RE:"/"RES:" (es, pt), German "AW:", Italian "R:". Only as the first prefix:
# "Fwd: Re: …" forwards.
_REPLY_SUBJECT = re.compile(r"^\s*(?:re|res|aw|r)\s*(?:\[\d+\])?\s*[:\uff1a]", re.IGNORECASE)


def customer_text(text: str, subject: str) -> str:
    """What a customer's message brings to the case: :func:`strip_quoted`, except
    that a forward is kept whole.

    A customer who forwards a mail ("Les reenvío el correo de la semana pasada,
    nadie me contestó", then Gmail's "Forwarded message" block or Outlook's
    ``De:``/``Enviado:`` block) means its text as the report: cut at the
    forward, the case and the notice to agents held only the cover line, and
    the report itself only the raw message (Zammad, FreeScout and RT keep a
    forwarded body whole too). A forward is a subject that starts with a
    forward prefix (``Fwd:``, ``RV:``, ``ENC:``, ``TR:``, ``WG:``), a body
    whose quoted history starts at a forwarded-message marker, or one whose
    quoted history starts at a header block (``De:``/``Para:``/``Asunto:``)
    under a subject with no reply prefix (``Re:``, ``RE:``, ``RES:``, ``AW:``,
    ``R:``): an Outlook forward whose subject was edited, or a letter with a
    memo heading.

    Guarantees: as :func:`strip_quoted` (never raises, linear, ``""`` only for
    a blank text); a forward comes back stripped of surrounding whitespace,
    with ``\n`` line endings.
    """
    normalized = _normalized(text)
    if _FORWARD_SUBJECT.match(subject):
        return normalized.strip()
    lines, before_final_quote, quote_follows = _unquoted_lines(normalized.split("\n"))
    history = _history_start(lines, before_final_quote, quote_follows)
    if history.at < len(lines) and not history.attribution:
        if _FORWARD_MARKER.search(lines[history.at]):
            return normalized.strip()
        if not _REPLY_SUBJECT.match(subject):
            # A header block (Outlook's De:/Enviado:/Para:/Asunto:, with or without
            # its rule) in a message that answers nothing: a forward whose subject
            # was edited ("URGENTE: sigo sin servicio" over Outlook's forward, which
            # writes no marker), or a letter with a memo heading ("De: Juan Pérez,
            # contrato 55321 / Para: … / Asunto: Queja"). Either way the report is
            # below it; a reply's quote comes with "RE:"/"Re:" in the subject.
            return normalized.strip()
    return strip_quoted(text)


# A forwarded block's sender line: "De: Rosa Díaz <rosa@…>", "*From:* Rosa",
# older Outlook's "From: Rosa Díaz [mailto:rosa@…]".
_FORWARDED_FROM = re.compile(
    r"[ \t]*\*{0,2}(?:from|de)\*{0,2}[ \t]*:\*{0,2}(.{0,300})", re.IGNORECASE
)
_ADDRESS = re.compile(r"[\w.+'-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
# How far below the forward's marker its sender line may be (Gmail puts it
# right under; HTML → text may put a blank line between every header line).
_FORWARDED_FROM_WINDOW = 4


def forwarded_sender(text: str) -> tuple[str, str] | None:
    """The display name and address (lower-case) of the sender a forward in ``text``
    names, or ``None``.

    The forward is the first quoted history :func:`strip_quoted` would cut at, when
    it is a forwarded-message marker (Gmail, Apple Mail) or a header block
    (Outlook); its sender is the ``From:``/``De:`` line at or just below that
    line, and must hold an address (Outlook within an organisation may write a
    name only). Never raises; linear in ``len(text)``.
    """
    lines, before_final_quote, quote_follows = _unquoted_lines(_normalized(text).split("\n"))
    history = _history_start(lines, before_final_quote, quote_follows)
    at = history.at
    if at == len(lines) or history.attribution:  # none, or "El … escribió:"
        return None
    for line in lines[at : at + 1 + _FORWARDED_FROM_WINDOW * 2]:
        found = _FORWARDED_FROM.match(line)
        if found is None:
            continue
        value = found.group(1)
        address = _ADDRESS.search(value)
        if address is None:
            return None
        name = value[: value.find("<") if "<" in value else value.find("[")]
        if "<" not in value and "[" not in value:
            name = ""
        return name.strip(" \t*\"'"), address.group(0).lower()
    return None


def new_text(text: str) -> str:
    """What :func:`strip_quoted` keeps, but ``""`` when that would be nothing.

    For agents' replies, which are relayed to the customer: a reply that is
    only the quoted notice (sent by mistake, or carrying only an attachment)
    must not send the internal notice to the customer. Same guarantees
    otherwise.
    """
    return agent_text(text).text


def agent_text(text: str) -> AgentText:
    """The new text of an agent's reply, as :func:`new_text`, and the line of
    mailcase's notice to agents it still holds, if any.

    Guarantees: never raises; linear in ``len(text)``; ``notice_line`` is
    ``""`` unless a line of the notice (its ``Folio:`` block or the line that
    introduces its help) is left in the text after the quoted history is cut
    and no quote header (an attribution in any wording, a ``----`` or
    ``____`` rule, a marker such as ``-----Original Message-----``) stands
    just above the notice to cut it at. Cutting there never removes a line
    above that header, so the agent's words are kept whole. Text written
    between or below the ``>`` lines of a quote that starts at an attribution
    is kept too, after the text above it.
    """
    normalized = _normalized(text)
    # Quoted lines go first, then the history is looked for in what is left:
    # looked for with them in place, an attribution or Outlook header block
    # with ">" lines inside was missed, then found once those lines were gone,
    # so stripping the result again cut more (tests/test_properties.py).
    raw_lines = normalized.split("\n")
    lines, before_final_quote, quote_follows = _unquoted_lines(raw_lines)
    history = _history_start(lines, before_final_quote, quote_follows)
    above, notice_line = _without_quoted_notice(lines[: history.start])
    if notice_line or len(above) < history.start or _quotes_the_notice(raw_lines):
        # Also when the ">" quote is mailcase's notice: nothing below it is the
        # agent's. A client that wraps a long quoted line leaves its rest without
        # ">" ("ragged quoting"), and a piece of the notice (its routing note,
        # internal) read as an answer written between the quoted lines.
        # The notice, or the quote header above it, is in the text above: what
        # follows is the notice's, never the agent's.
        return AgentText(_joined(_signed_off(above)), notice_line)
    below, notice_line = _without_quoted_notice(
        _below_quote(lines, history, before_final_quote, quote_follows)
    )
    above_text, below_text = _joined(_signed_off(above)), _joined(_signed_off(below))
    if not below_text or not above_text:
        return AgentText(above_text or below_text, notice_line)
    both = f"{above_text}\n\n{below_text}"
    if not notice_line and _reads_as_quoted(both.split("\n")):
        # Side by side, the two parts read as the start of another quote (an
        # Outlook "De:" line above, its "Para:"/"Asunto:" lines below): a second
        # look would cut there, so keep what a second look keeps.
        return AgentText(above_text, "")
    return AgentText(both, notice_line)


_WRAP_WIDTH = 60  # a quoted line this long, cut mid-sentence, was wrapped by the client
_SENTENCE_END = (".", "!", "?", ":", ";", "…", ")", '"', "»")


def _wrapped_from(previous: str, line: str) -> bool:
    """Whether ``line``, with no ``>`` of its own, is the rest of the quoted line
    ``previous`` that the replier's client wrapped ("ragged quoting": Outlook's plain
    text, mutt, K-9): right under a long quoted line that stops mid-sentence.

    Read as the reply's own words, such a piece of the quote (of the notice's
    internal routing note, say) went to the customer.
    """
    if not line.strip() or not _is_quoted(previous) or _is_quoted(line):
        return False
    quoted = previous.rstrip()
    return len(quoted) >= _WRAP_WIDTH and not quoted.endswith(_SENTENCE_END)


_QUOTE_MARKS = re.compile(r"^\s*(?:>\s?)+")


def _quotes_the_notice(lines: Sequence[str]) -> bool:
    """Whether the ``>``-quoted ones among ``lines`` hold mailcase's notice to agents."""
    quoted = [_QUOTE_MARKS.sub("", line) for line in lines if _is_quoted(line)]
    if not quoted:
        return False
    kept, notice_line = _without_quoted_notice(quoted)
    return bool(notice_line) or len(kept) < len(quoted)


def _reads_as_quoted(lines: list[str]) -> bool:
    """Whether ``lines`` (no ``>`` lines among them) hold quoted history or the notice."""
    if _history_start(lines, None, frozenset()).at < len(lines):
        return True
    kept, notice_line = _without_quoted_notice(lines)
    return bool(notice_line) or len(kept) < len(lines)


def _below_quote(
    lines: Sequence[str],
    history: _History,
    before_final_quote: int | None,
    quote_follows: frozenset[int],
) -> list[str]:
    """The lines written between and below the ``>`` lines of the quote that
    ``history`` starts, up to the next quoted history; none unless ``>``
    lines follow its mark and it is an attribution or nothing is written above it.

    Written below the quote (Thunderbird's and mutt's default) or between its
    lines (answers under each question, often after "les contesto abajo" above
    the quote): the text is what follows the attribution's ">" lines. A header
    block or marker quotes the whole history with no ">" (Outlook), so what
    follows it is history, unless nothing is written above it.
    """
    at = history.at
    if at not in quote_follows:
        return []
    if not history.attribution and any(line.strip() for line in lines[: history.start]):
        return []
    rest = lines[at + 1 :]
    # Looked for again in the rest: its lines' indices are shifted by at + 1.
    final = None if before_final_quote is None or before_final_quote <= at else before_final_quote
    follows = frozenset(i - at - 1 for i in quote_follows if i > at)
    return list(
        rest[: _history_start(rest, None if final is None else final - at - 1, follows).start]
    )


def _signed_off(lines: list[str]) -> list[str]:
    """``lines`` without the signature and the device signature that end them."""
    return _without_device_signature(_without_signature(lines))


def _joined(lines: Sequence[str]) -> str:
    return "\n".join(lines).strip()


def shared_signature(text: str, earlier: str) -> str:
    """The signature ``text`` and ``earlier`` (one writer's messages) both end with, or "".

    A signature a mail client adds with no ``-- `` line above it (Outlook's, most
    often) is learnt as Zammad learns it: from the closing lines two messages of
    the same writer share. Guarantees: "" unless at least two non-blank lines
    are shared, none of them a ``#`` line, ``earlier`` has words of its own
    above them, and a blank line stands above them in ``earlier`` (a signature
    is set apart; an answer sent again, corrected, is not one); blank lines and
    surrounding whitespace do not count; linear in the sizes of both texts.
    """
    mine = [line.strip() for line in text.split("\n") if line.strip()]
    lines = earlier.split("\n")
    theirs = [(n, line.strip()) for n, line in enumerate(lines) if line.strip()]
    shared = 0
    while (
        shared < min(len(mine), len(theirs))
        and mine[-1 - shared] == theirs[-1 - shared][1]
        and not mine[-1 - shared].startswith("#")
    ):
        shared += 1
    if shared < 2 or shared == len(theirs):
        return ""
    first = theirs[-shared][0]
    if first == 0 or lines[first - 1].strip():
        return ""
    return "\n".join(mine[-shared:])


def without_known_signature(text: str, signature: str) -> str:
    """``text`` without ``signature`` when it ends with all of its lines; else ``text``.

    Blank lines and surrounding whitespace do not count; the result may be ""
    (a reply that is only the signature has no words of its own).
    """
    wanted = [line.strip() for line in signature.split("\n") if line.strip()]
    if not wanted:
        return text
    lines = text.rstrip().split("\n")
    i = len(lines) - 1
    for line in reversed(wanted):
        while i >= 0 and not lines[i].strip():
            i -= 1
        if i < 0 or lines[i].strip() != line:
            return text
        i -= 1
    return "\n".join(lines[: i + 1]).rstrip()


def is_attribution_line(line: str) -> bool:
    """Whether ``line`` ends as a client's attribution does ("… wrote:", "… escribió:").

    Only for a line known to stand right above quoted history (an HTML quote
    element, our own notice): that is the evidence :func:`strip_quoted` looks
    for elsewhere, so any wording counts ("Internet Plarey escribió:").
    """
    stripped = line.strip()
    if not stripped.endswith(":") or len(stripped) > _MAX_ATTRIBUTION_CHARS:
        return False
    return _ATTRIBUTION_END.search(unicodedata.normalize("NFC", stripped[-24:])) is not None


def _normalized(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _unquoted_lines(lines: Sequence[str]) -> tuple[list[str], int | None, frozenset[int]]:
    """The lines that are not ``>``-quoted; the index among them of the last
    non-blank one when ``>``-quoted lines (and blank ones) are all that follow
    it in ``lines``, else ``None``; and the indices of the non-blank ones that
    ``>``-quoted lines follow (blank lines between them aside).
    """
    unquoted: list[str] = []
    last_text: int | None = None
    quoted_after_last_text = False
    quote_follows: set[int] = set()
    previous = ""
    for line in lines:
        wrapped = _wrapped_from(previous, line)
        previous = line
        if _is_quoted(line) or wrapped:
            quoted_after_last_text = True
            if last_text is not None:
                quote_follows.add(last_text)
            continue
        if line.strip():
            last_text = len(unquoted)
            quoted_after_last_text = False
        unquoted.append(line)
    return (
        unquoted,
        last_text if quoted_after_last_text else None,
        frozenset(quote_follows),
    )


class _History(NamedTuple):
    """Where the quoted history of a list of lines starts (see :func:`_history_start`)."""

    start: int  # its first line, or len(lines)
    at: int  # the line that marks it (an attribution's last line, a marker), or len(lines)
    attribution: bool  # marked by an "On …/El … wrote:/escribió:" attribution


def _history_start(
    lines: Sequence[str], before_final_quote: int | None, quote_follows: frozenset[int]
) -> _History:
    """Where the quoted history of ``lines`` (``>``-quoted lines removed) starts.

    ``before_final_quote`` is the index of the line that only ``>``-quoted
    lines followed in the original text, if any, and ``quote_follows`` the
    indices of the lines ``>``-quoted lines followed (see ``_unquoted_lines``).
    """
    header_names = _HeaderNames(lines)
    for i, line in enumerate(lines):
        if _is_quoted(line):
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if len(stripped) <= _MARKER_MAX_CHARS:
            if _MARKER.fullmatch(stripped):
                return _History(i, i, attribution=False)
            if _RULE.fullmatch(stripped) and _rule_above_header_block(header_names, i):
                return _History(i, i, attribution=False)
        if _is_header_block(header_names, i):
            return _History(i, i, attribution=False)
        start = _attribution_start(
            lines, i, introduces_final_quote=i == before_final_quote, quoted=i in quote_follows
        )
        if start is not None:
            return _History(start, i, attribution=True)
    return _History(len(lines), len(lines), attribution=False)


class _HeaderNames:
    """The header name ("from", "enviado el", …) each line starts with, or "".

    Each line is matched at most once: a header block is recognised by looking
    ahead, and a body made of thousands of "From:" lines must stay linear.
    """

    def __init__(self, lines: Sequence[str]) -> None:
        self._lines = lines
        self._names: list[str | None] = [None] * len(lines)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, i: int) -> str:
        name = self._names[i]
        if name is None:
            line = self._lines[i]
            match = _HEADER_KEY.match(line) if ":" in line[:40] else None
            name = match.group(1).lower() if match else ""
            self._names[i] = name
        return name

    def is_blank(self, i: int) -> bool:
        return not self._lines[i].strip()


def _is_header_block(names: _HeaderNames, i: int) -> bool:
    """Whether line ``i`` starts an Outlook ``From:/Sent:/To:/Subject:`` block."""
    if names[i] not in _BLOCK_START_KEYS:
        return False
    seen = set()
    for j in range(i + 1, min(len(names), i + 1 + _HEADER_BLOCK_WINDOW)):
        canonical = _BLOCK_KEYS.get(names[j])
        if canonical is not None:
            seen.add(canonical)
    return len(seen) >= _MIN_BLOCK_KEYS


def _rule_above_header_block(names: _HeaderNames, i: int) -> bool:
    """Whether the rule at line ``i`` is followed (blank lines aside) by a header block."""
    for j in range(i + 1, min(len(names), i + 4)):
        if not names.is_blank(j):
            return _is_header_block(names, j)
    return False


def _attribution_start(
    lines: Sequence[str], i: int, *, introduces_final_quote: bool, quoted: bool
) -> int | None:
    """If ``lines[i]`` ends an attribution ("… wrote:"), the index of its first line.

    ``introduces_final_quote``: only ``>``-quoted lines followed ``lines[i]``;
    ``quoted``: ``>``-quoted lines followed it (blank lines aside).
    """
    line = lines[i].rstrip()
    if not line.endswith(":"):
        return None
    tail = unicodedata.normalize("NFC", line[-24:])
    if not _ATTRIBUTION_END.search(tail):
        return None
    size = 0
    for j in range(i, max(-1, i - _MAX_ATTRIBUTION_LINES), -1):
        candidate = lines[j]
        size += len(candidate)
        if size > _MAX_ATTRIBUTION_CHARS or not candidate.strip() or _is_quoted(candidate):
            return None
        if _ATTRIBUTION_START.match(candidate.lstrip()):
            joined = " ".join(lines[j : i + 1])
            client = _is_client_attribution(
                joined, introduces_final_quote=introduces_final_quote, quoted=quoted
            )
            return j if client else None
    return None


def _is_client_attribution(joined: str, *, introduces_final_quote: bool, quoted: bool) -> bool:
    """Whether an "On …/El … wrote:/escribió:" line was written by a mail client."""
    # Every client puts a date in the attribution; requiring a digit keeps
    # prose such as "On the other hand, Ana wrote:" as text.
    if not any(c.isdigit() for c in joined):
        return False
    # A date is not enough, nor a time: customers write "El 20 de noviembre el
    # técnico me escribió:", agents "El lunes a las 10:00 nuestro técnico le
    # escribió:", and then the complaint or the answer, which must reach the
    # agents or the customer. What proves a client wrote the line is what follows
    # it: in text/plain, Gmail, Apple Mail, Yahoo, Thunderbird and mutt put the
    # quote under it as ">" lines. Then the line must still carry what a client
    # adds to the date, the sender's address or the time of day (Thunderbird's
    # "El 25/11/26 a las 10:12, Juan escribió:" has no address), since customers
    # quote with ">" too ("On Nov 20 your agent wrote:\n> we will credit you");
    # or nothing but ">" lines may follow it (Alpine: "On Wed, 25 Nov 2026, Juan
    # wrote:"), and cutting there drops only the line itself.
    if introduces_final_quote:
        return True
    named = _ATTRIBUTION_ADDRESS.search(joined) is not None
    timed = _ATTRIBUTION_TIME.search(joined) is not None
    if quoted:
        return named or timed
    # Without ">" lines (HTML → text, where the quote lost its markup; Yahoo's
    # text/plain), only the whole shape of a client's attribution counts: a time
    # of day and an address in angle brackets, as Gmail, Apple Mail, Yahoo and
    # Outlook mobile write it ("…a las 10:00, Internet Plarey <contacto@…>
    # escribió:"), or a date with its year, the time, a comma and a capitalised
    # name ("En vie., 27 nov. 2026 a las 10:00, Internet Plarey escribió:").
    # People do not write "<address>" in prose, nor the year of last Monday;
    # an attribution short of that ("On Nov 26, 2013 you wrote:" and the old
    # text) is kept: showing agents some history is better than hiding a
    # complaint.
    if not timed:
        return False
    if _ATTRIBUTION_BRACKETED_ADDRESS.search(joined) is not None:
        return True
    joined = unicodedata.normalize("NFC", joined)
    return _ATTRIBUTION_YEAR.search(joined) is not None and bool(_ATTRIBUTION_TAIL.search(joined))


def _without_quoted_notice(lines: list[str]) -> tuple[list[str], str]:
    """``lines`` cut at the quote header above mailcase's notice to agents, and
    ``""``; or ``lines`` unchanged and the notice's line when there is no header
    to cut at (see :func:`agent_text`)."""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if len(stripped) > _MARKER_MAX_CHARS:
            continue
        if _NOTICE_HELP.fullmatch(stripped):
            # The help without the notice's fields above it: the quote was cut
            # or edited, and where it starts is anyone's guess.
            return lines, stripped
        folio = _NOTICE_FOLIO.fullmatch(stripped)
        if folio and _notice_fields_follow(lines, i):
            start = _quote_header_above(lines, i, folio.group(1))
            return (lines, stripped) if start is None else (lines[:start], "")
    return lines, ""


def _notice_fields_follow(lines: Sequence[str], i: int) -> bool:
    """Whether the notice's "Cliente:" and "Buzón:" lines follow its "Folio:" line ``i``."""
    found = [False] * len(_NOTICE_FIELDS)
    for line in lines[i + 1 : i + 1 + _NOTICE_FIELDS_WINDOW]:
        stripped = line.strip()
        for n, field in enumerate(_NOTICE_FIELDS):
            found[n] = found[n] or field.match(stripped) is not None
    return all(found)


def _previous_text_line(lines: Sequence[str], i: int) -> int:
    """Index of the last non-blank line before ``i``, or -1."""
    i -= 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    return i


def _quote_header_above(lines: Sequence[str], folio_line: int, folio: str) -> int | None:
    """Index of the first line of the quote header just above the notice whose
    "Folio:" line is ``folio_line``, or ``None`` when there is none.

    Only the notice's own first line ("Caso nuevo: PLR-2026-000123.", which
    names the folio) and blank lines may come between the header and the
    "Folio:" line: looking further up would search the agent's own words, and
    cutting at a line of theirs would send the customer half a message.
    """
    j = _previous_text_line(lines, folio_line)
    if j >= 0 and folio.casefold() in lines[j].casefold():
        j = _previous_text_line(lines, j)
    if j < 0:
        return None
    stripped = lines[j].strip()
    if is_attribution_line(stripped):
        # Its first line, if it wrapped ("El vie, 27 nov 2026 a la(s) 10:00,\n… escribió:").
        for k in range(j, max(-1, j - _MAX_ATTRIBUTION_LINES), -1):
            if not lines[k].strip():
                break
            if _ATTRIBUTION_START.match(lines[k].lstrip()):
                return k
        return j
    if _is_separator(stripped):
        return j
    # A header block in a language the rules do not know ("Von:", "Gesendet:",
    # "Betreff:"): "Name:" lines up to the rule or marker a client draws above it.
    for k in range(j, max(-1, j - _HEADER_BLOCK_WINDOW), -1):
        candidate = lines[k].strip()
        if _is_separator(candidate):
            return k
        if candidate and not _HEADER_KEY.match(candidate):
            return None
    return None


def _is_separator(stripped: str) -> bool:
    """Whether a stripped line is a rule or an "Original Message" style marker."""
    return len(stripped) <= _MARKER_MAX_CHARS and bool(
        _RULE.fullmatch(stripped) or _MARKER.fullmatch(stripped)
    )


def _without_signature(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if line.rstrip() == _SIG_DELIMITER:
            return lines[:i]
    return lines


def _without_device_signature(lines: list[str]) -> list[str]:
    # Every trailing device line, not just the last one: a phone's "Enviado desde
    # mi iPhone" above the app's "Obtener Outlook para iOS" (or two left once the
    # quoted lines between them are dropped) must all go, or stripping the
    # result again would remove more (found by tests/test_properties.py).
    end = len(lines)
    while end:
        last = lines[end - 1].strip()
        if last and not (
            len(last) <= 300 and _DEVICE_SIGNATURE.fullmatch(_SIGNATURE_LINK.sub("", last))
        ):
            break
        end -= 1
    return lines[:end]
