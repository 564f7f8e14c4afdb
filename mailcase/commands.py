"""Commands an agent writes at the top of a reply to work a case by mail (no I/O).

An agent (technician, customer service) answers mailcase's notification of a
case from an ordinary mail client. The first lines of that answer may be
commands, one per line, each starting with ``#``::

    #resolver procedente
    #área soporte-tecnico

    Buenas tardes, don Juan: ya quedó su servicio...

The command block is the ``#`` lines at the very top of the text (blank lines
before and between them are allowed). The first line that does not start with
``#`` ends it; that line and everything after it are the agent's words
(:attr:`ParsedCommands.text`). Invisible format characters (a byte order mark,
a zero-width space: Unicode category Cf, which editors and HTML mail leave at
the start of a line) are not read as part of a line's start.

Every ``#`` line in the block is either a :class:`Command` or a
:class:`CommandProblem`, never both and never dropped: a typo such as
``#ntoa`` must not be mistaken for text (it would send an internal note to the
customer), so it is reported back to the agent instead. A ``#`` line further
down is ordinary text ("#1 en el servicio", a hashtag), unless it names a
command: an agent who writes "Buenas tardes," and then ``#nota`` (or
``#nota: el cliente debe...``) meant a note, and relaying it would send the
note to the customer, so that line is a ``misplaced_command`` problem too.

Spanish and English names are aliases of each other, and names and arguments
compare case- and accent-insensitively (``#Área``, ``#AREA`` and ``#area`` are
one command), because agents type on phones with auto-capitalisation and
Spanish keyboards.

The parser never raises and has no notion of "today": whether a visit date is
in the past, or whether commands contradict each other (``#cerrar`` and
``#reabrir`` together), is for the caller to decide.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, time
from enum import StrEnum
from typing import Literal

from mailcase.inbound import MAX_ADDRESS, canonical_address
from mailcase.textfold import fold


class CommandKind(StrEnum):
    """What a command asks mailcase to do with the case."""

    NOTE = "note"  # keep the agent's text as an internal note; send nothing to the customer
    RESOLVE = "resolve"  # resolve with an outcome (procedente / improcedente)
    VISIT = "visit"  # tell the customer a technician's visit date (and time)
    ROUTE = "route"  # turn the case over to another area
    CLOSE = "close"
    REOPEN = "reopen"
    PARTICIPANT = "participant"  # let another address of the customer's write on the case
    MERGE = "merge"  # merge this case into the one whose folio follows (merging.merge)
    TYPE = "type"  # classify the case: complaint, question, clarification or cancellation
    ASSIGN = "assign"  # give the case an owner (an agent), or take it away
    # Wait for the customer's answer for some days, then close the case unresolved; the
    # text below it is relayed to the customer (the question the case waits on).
    PENDING = "pending"
    # This case is one of the reports of the outage followed in the case whose folio
    # follows (the main case): resolving that one resolves this one (outages.join_outage).
    OUTAGE = "outage"
    # Send the customer a canned reply (templates/replies/<language>/NAME.txt.j2) after
    # the agent's own text below the commands, if any (mailcase.replies).
    REPLY = "reply"
    # The case is spam the filter missed: closed with nothing sent to the customer, out of
    # the report's figures, its customer's new mail set aside (casework.mark_spam).
    # "#spam no": it is not spam after all (casework.unmark_spam).
    SPAM = "spam"


Outcome = Literal["valid", "invalid"]


@dataclass(frozen=True, slots=True)
class Command:
    """One well-formed command. Only the fields its ``kind`` uses are set."""

    kind: CommandKind
    outcome: Outcome | None = None  # RESOLVE only
    visit_date: date | None = None  # VISIT only
    visit_time: time | None = None  # VISIT only, and only when a time was written
    cancel: bool = False  # VISIT only: "#visita cancelar" (no date then)
    address: str | None = None  # PARTICIPANT only: lower-cased
    area: str | None = None  # ROUTE only: lower-case ASCII letters, digits, "-" and "_"
    # MERGE and OUTAGE: as written; the service reads it with the prefix.
    folio: str | None = None
    case_type: str | None = None  # TYPE only: a models.CaseType value ("complaint", …)
    # ASSIGN only, one of three: ``owner`` (the agent named, lower-cased), ``myself``
    # ("#asignar yo": the agent who writes, whom the service knows) or ``nobody``
    # ("#asignar nadie").
    owner: str | None = None
    myself: bool = False
    nobody: bool = False
    days: int | None = None  # PENDING only, when written; None: [cases] pending_days
    # PENDING: "#pendiente no" / "#pending off": the case waits for the customer no
    # more (the customer answered by phone, say); no days then, and nothing is relayed.
    # OUTAGE: "#masivo no" / "#outage off": the case is no report of an outage any more.
    # SPAM: "#spam no" / "#spam off": the case is not spam (the mark is undone).
    stop: bool = False
    # OUTAGE only: "#masivo aviso" / "#outage update" on a main case: the text below it is
    # relayed to its customer and to each open report's (an estimated time of restoration).
    update: bool = False
    reply: str | None = None  # REPLY only: the canned reply's name, folded (reply_key)
    line: str = ""  # the line as the agent wrote it, read by line_start()


@dataclass(frozen=True, slots=True)
class CommandProblem:
    """A ``#`` line of the command block that is not a well-formed command, or a
    well-formed command below the block (``misplaced_command``).

    ``problem`` is one of :data:`PROBLEM_CODES`; templates turn it into a sentence.
    """

    line: str  # the line as the agent wrote it, read by line_start()
    problem: str


@dataclass(frozen=True, slots=True)
class ParsedCommands:
    """The command block of a message, split into commands, problems and the rest."""

    commands: tuple[Command, ...]
    problems: tuple[CommandProblem, ...]
    text: str  # the lines after the command block, leading blank lines removed


# The short codes CommandProblem.problem takes. "bad_area" is for an area name
# with characters outside letters, digits, "-" and "_" (e.g. "soporte/redes");
# "unknown_area" (a well-formed name not in [areas], CONFIG_PROBLEM_CODES) is
# found by the service, which knows the configuration, and reported alike.
PROBLEM_CODES: tuple[str, ...] = (
    "unknown",
    "missing_outcome",
    "bad_outcome",
    "bad_date",
    "bad_time",
    "missing_area",
    "bad_area",
    "unexpected_argument",
    "missing_address",  # "#participante" without an address
    "bad_address",  # "#participante juan" (no domain), or more than one word
    "missing_folio",  # "#fusionar" or "#masivo" without a folio
    "missing_type",  # "#tipo" without the kind of report
    "bad_type",  # "#tipo reclamo": not one of the four kinds
    "missing_owner",  # "#asignar" without whom
    "bad_owner",  # "#asignar ana" (no domain), or more than one word
    "bad_days",  # "#pendiente mañana", "#pendiente 0", "#pendiente 120": not 1 to PENDING_MAX_DAYS
    "missing_reply",  # "#respuesta" without the canned reply's name
    "bad_reply",  # "#respuesta reinicio modem": not one name of letters, digits and "-"
    "misplaced_command",  # a line naming a command below the first line of text
)
# Codes the service adds, knowing the configuration and the database: an area not
# in [areas]; a participant that is an address of mailcase, an agent's or the
# customer's own; a "#fusionar" naming no folio of an existing case; an "#asignar"
# naming an address that is not in agents.addresses.
CONFIG_PROBLEM_CODES: tuple[str, ...] = (
    "unknown_area",
    "bad_participant",
    "unknown_folio",
    "unknown_agent",
    "unknown_reply",  # "#respuesta NOMBRE" naming no canned reply (mailcase.replies)
    "reply_broken",  # its file does not render (for this case): the admin's to fix
)
# Codes the service adds about the reply as a whole: mailcase's own notice to
# agents is still in the reply's text because nothing above it marks where the
# quote starts (quoting.AgentText.notice_line), so relaying would send it.
REPLY_PROBLEM_CODES: tuple[str, ...] = ("quoted_notice",)

# The valid forms, Spanish first, for the help footer of notices to agents.
COMMAND_FORMS: tuple[str, ...] = (
    "#nota / #note",
    "#resolver procedente|improcedente / #resolve valid|invalid",
    "#visita AAAA-MM-DD [HH:MM] | cancelar / #visit YYYY-MM-DD [HH:MM] | cancel",
    "#area NOMBRE / #route NAME",
    "#cerrar / #close",
    "#reabrir / #reopen",
    "#participante CORREO / #participant ADDRESS",
    "#fusionar FOLIO / #merge FOLIO",
    "#tipo queja|consulta|aclaracion|cancelacion / "
    "#type complaint|question|clarification|cancellation",
    "#asignar CORREO|yo|nadie / #assign ADDRESS|me|none",
    "#pendiente [DIAS] | no / #pending [DAYS] | off",
    "#masivo FOLIO | no | aviso / #outage FOLIO | off | update",
    "#respuesta NOMBRE / #reply NAME",
    "#spam | no (#correo-basura) / #spam | off",
)

# The longest wait ``#pendiente`` takes (and ``cases pending --days``): a quarter is
# long past any answer a customer still means to give; more is a typo.
PENDING_MAX_DAYS = 90

# Names after folding (lower case, no accents): "#Área" → "area".
_NAMES: dict[str, CommandKind] = {
    "nota": CommandKind.NOTE,
    "note": CommandKind.NOTE,
    "resolver": CommandKind.RESOLVE,
    "resolve": CommandKind.RESOLVE,
    "visita": CommandKind.VISIT,
    "visit": CommandKind.VISIT,
    "area": CommandKind.ROUTE,
    "route": CommandKind.ROUTE,
    "cerrar": CommandKind.CLOSE,
    "close": CommandKind.CLOSE,
    "reabrir": CommandKind.REOPEN,
    "reopen": CommandKind.REOPEN,
    "participante": CommandKind.PARTICIPANT,
    "participant": CommandKind.PARTICIPANT,
    "fusionar": CommandKind.MERGE,
    "merge": CommandKind.MERGE,
    "tipo": CommandKind.TYPE,
    "type": CommandKind.TYPE,
    "asignar": CommandKind.ASSIGN,
    "assign": CommandKind.ASSIGN,
    "pendiente": CommandKind.PENDING,
    "pending": CommandKind.PENDING,
    "masivo": CommandKind.OUTAGE,
    "outage": CommandKind.OUTAGE,
    "respuesta": CommandKind.REPLY,
    "reply": CommandKind.REPLY,
    "spam": CommandKind.SPAM,
    "correo-basura": CommandKind.SPAM,
}

# "#pendiente no" / "#pending off": the wait ends, the case stays open (folded).
_STOP_WAITING = frozenset({"no", "off", "fin", "end", "cancelar", "cancel"})

# "#masivo aviso" / "#outage update": news of the outage for every customer of it (folded).
_OUTAGE_UPDATE = frozenset({"aviso", "avisar", "update"})

# What may follow the number of days, as agents write it ("#pendiente 7 días").
_DAY_WORDS = frozenset({"dia", "dias", "day", "days", "d"})

# Both vocabularies in either language: an agent who writes "#resolve
# procedente" has made their meaning plain, and refusing it only costs a
# round trip.
_OUTCOMES: dict[str, Outcome] = {
    "procedente": "valid",
    "valid": "valid",
    "improcedente": "invalid",
    "invalid": "invalid",
}

# The kinds of report (models.CaseType), folded: both vocabularies in either
# language, as for the outcomes.
_TYPES: dict[str, str] = {
    "queja": "complaint",
    "complaint": "complaint",
    "consulta": "question",
    "question": "question",
    "aclaracion": "clarification",
    "clarification": "clarification",
    "cancelacion": "cancellation",
    "cancellation": "cancellation",
}

# "#asignar yo" / "#assign me", "#asignar nadie" / "#assign none", folded: both
# vocabularies under either name, as for the outcomes.
_MYSELF = frozenset({"yo", "mi", "me", "myself"})
_NOBODY = frozenset({"nadie", "ninguno", "none", "nobody", "no-one", "noone"})
# "#asignar a ana@x.mx", "#asignar a mí", "#assign to me": how the sentence is said.
_ASSIGN_PREPOSITIONS = frozenset({"a", "to"})

# What agents write after a time that is not 24-hour ("4:30 pm", "16:30 hrs",
# "4:30 p. m."), folded and without dots: the time is what is wrong.
_CLOCK_SUFFIXES = frozenset({"am", "pm", "h", "hr", "hrs", "hs", "horas"})
# "#visita cancelar" / "#visit cancel", as agents write it.
_CANCEL_WORDS = frozenset({"cancelar", "cancela", "cancel", "cancelled", "canceled", "cancelada"})
# Written after the outcome as in a sentence ("#resolver procedente.").
_TRAILING_PUNCTUATION = ".:,;"

# re.ASCII: \d would otherwise accept Arabic-Indic and other digits, which
# int() reads but no agent means.
_DATE_RE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})", re.ASCII)
_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})", re.ASCII)
_AREA_RE = re.compile(r"[a-z0-9_-]+", re.ASCII)
# A canned reply's name, as its file is named (mailcase.replies.REPLY_NAME_RE alike).
_REPLY_RE = re.compile(r"[a-z0-9-]+", re.ASCII)


def parse_commands(text: str) -> ParsedCommands:
    """Split ``text`` into its leading command block and the agent's words.

    Guarantees, for any string:

    * never raises;
    * every ``#`` line of the block yields exactly one :class:`Command` or one
      :class:`CommandProblem`, in the order written;
    * every line of ``text`` that names a command (:func:`command_kind`) yields
      one ``misplaced_command`` problem, after those of the block; no other
      line of ``text`` yields anything;
    * ``text`` is ``"\\n".join(lines[k:])`` for ``lines = text.split("\\n")`` and
      some ``k`` (so it is a suffix of the input); it is empty or starts with a
      non-blank line that does not start with ``#``, both read by
      :func:`line_start`.

    A line is blank when :func:`line_start` leaves nothing of it; a line
    belongs to the block when what it leaves starts with ``#``.
    """
    # Split on "\n" only (not str.splitlines, which also splits on \x0b, \x1c,
    # U+2028...) so that the remaining text is an exact suffix of the input;
    # a "\r" left by CRLF text is whitespace to strip() below.
    lines = text.split("\n")
    commands: list[Command] = []
    problems: list[CommandProblem] = []
    index = 0
    while index < len(lines):
        stripped = line_start(lines[index])
        if stripped.startswith("#"):
            parsed = _parse_line(stripped)
            if isinstance(parsed, Command):
                commands.append(parsed)
            else:
                problems.append(parsed)
        elif stripped:
            break
        index += 1
    for line in lines[index + 1 :]:
        stripped = line_start(line)
        # A line that names a command, well-formed or not ("#nota: el cliente
        # debe..."): "#1 en el servicio" or "#SomosPLR" is text the agent means
        # the customer to read, a note is not.
        if stripped.startswith("#") and command_kind(stripped) is not None:
            problems.append(CommandProblem(stripped, "misplaced_command"))
    return ParsedCommands(
        commands=tuple(commands), problems=tuple(problems), text="\n".join(lines[index:])
    )


def line_start(line: str) -> str:
    """``line`` without surrounding whitespace nor the format characters before it.

    Format characters (Unicode category Cf: U+FEFF, U+200B, U+2060, bidi
    marks, soft hyphens) are invisible: a line the agent sees as ``#nota`` is
    read as ``#nota`` whatever the editor or the HTML put before it.
    """
    stripped = line.strip()
    start = 0
    while start < len(stripped) and (
        stripped[start].isspace() or unicodedata.category(stripped[start]) == "Cf"
    ):
        start += 1
    return stripped[start:]


def _without_format_characters(value: str) -> str:
    return "".join(c for c in value if unicodedata.category(c) != "Cf")


def area_key(name: str) -> str:
    """The ``[areas]`` key an agent means by ``name``, however it is spelt: folded like a
    command's name, so "Soporte-Técnico" is "soporte-tecnico" (area names are
    configuration keys, and an accent is not a different area). ``#area`` and the
    command line's ``--area`` both read names so."""
    return fold(name.strip())


def command_kind(line: str) -> CommandKind | None:
    """The command a ``#`` line names, however it is spelt ("#Área x" → ROUTE), or None."""
    words = _without_format_characters(line[1:]).split()
    if not words or line[1:2].isspace():
        return None
    return _NAMES.get(fold(words[0]).rstrip(_TRAILING_PUNCTUATION))


def _parse_line(line: str) -> Command | CommandProblem:
    """One ``#`` line (read by :func:`line_start`) → a command, or the reason it is not one."""
    # Invisible characters inside the line ("#nota\u200b") are not part of any word.
    words = _without_format_characters(line[1:]).split()
    if line[1:2].isspace():
        # "# nota" reads as a Markdown heading or a list, not as "#nota".
        words = []
    # A colon after the name ("#nota:", "#visita: 2026-12-03") is how many
    # people write a label, and a period ends "#cerrar." as a sentence; accept
    # them rather than bounce the message.
    name = fold(words[0]).rstrip(_TRAILING_PUNCTUATION) if words else ""
    kind = _NAMES.get(name)
    if kind is None:
        # Also "#1 en mi lista", "# nota" and a bare "#": the agent's block
        # starts with something that looks like a command, so say so.
        return CommandProblem(line, "unknown")
    args = words[1:]
    if kind is CommandKind.RESOLVE:
        return _resolve(line, args)
    if kind is CommandKind.VISIT:
        return _visit(line, args)
    if kind is CommandKind.ROUTE:
        return _route(line, args)
    if kind is CommandKind.PARTICIPANT:
        return _participant(line, args)
    if kind is CommandKind.TYPE:
        return _type(line, args)
    if kind is CommandKind.ASSIGN:
        return _assign(line, args)
    if kind is CommandKind.PENDING:
        return _pending(line, args)
    if kind is CommandKind.OUTAGE:
        return _outage(line, args)
    if kind is CommandKind.REPLY:
        return _reply(line, args)
    if kind is CommandKind.SPAM:
        return _spam(line, args)
    if kind is CommandKind.MERGE:
        # The folio as written ("PLR-2026-000123", "PLR 2026 123", "[Folio …]."):
        # read by the service, which knows the folio prefix.
        if not args:
            return CommandProblem(line, "missing_folio")
        return Command(CommandKind.MERGE, folio=" ".join(args), line=line)
    if args:
        # "#nota llamé al cliente" would lose the note's words: they belong on
        # the next line, where they become the text.
        return CommandProblem(line, "unexpected_argument")
    return Command(kind, line=line)


def _resolve(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return CommandProblem(line, "missing_outcome")
    outcome = _OUTCOMES.get(fold(args[0]).rstrip(_TRAILING_PUNCTUATION))
    if outcome is None:
        # Includes "no procedente": the outcome must be one word, so that
        # "no" can never be read as its opposite.
        return CommandProblem(line, "bad_outcome")
    if len(args) > 1:
        return CommandProblem(line, "unexpected_argument")
    return Command(CommandKind.RESOLVE, outcome=outcome, line=line)


def parse_case_type(word: str) -> str | None:
    """The kind of report (a ``models.CaseType`` value) ``word`` names in Spanish or English,
    however capitalised or accented ("Aclaración" → "clarification"), or None. Also for
    the command line's ``--type``."""
    return _TYPES.get(fold(word.strip()).rstrip(_TRAILING_PUNCTUATION))


def _type(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return CommandProblem(line, "missing_type")
    case_type = parse_case_type(args[0])
    if case_type is None:
        # Also "#tipo no queja": one word, so that nothing is read as its opposite.
        return CommandProblem(line, "bad_type")
    if len(args) > 1:
        return CommandProblem(line, "unexpected_argument")
    return Command(CommandKind.TYPE, case_type=case_type, line=line)


def parse_days(word: str) -> int | None:
    """A number of days to wait for the customer, 1 to :data:`PENDING_MAX_DAYS`, written in
    ASCII digits ("7"), or None (also for ``cases pending --days``)."""
    word = word.strip().rstrip(_TRAILING_PUNCTUATION)
    # isascii: int() also reads Arabic-Indic digits and "+7", which no agent means.
    if not (word.isascii() and word.isdigit()):
        return None
    days = int(word)
    return days if 1 <= days <= PENDING_MAX_DAYS else None


def _pending(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return Command(CommandKind.PENDING, line=line)
    if fold(args[0]).rstrip(_TRAILING_PUNCTUATION) in _STOP_WAITING:
        if len(args) > 1:
            return CommandProblem(line, "unexpected_argument")
        return Command(CommandKind.PENDING, stop=True, line=line)
    days = parse_days(args[0])
    if days is None:
        # "#pendiente mañana", "#pendiente 0", "#pendiente 120": the question to the
        # customer goes on the next line, and the wait is 1 to 90 days.
        return CommandProblem(line, "bad_days")
    rest = args[1:]
    if rest and len(rest) == 1 and fold(rest[0]).rstrip(_TRAILING_PUNCTUATION) in _DAY_WORDS:
        rest = []  # "#pendiente 7 días", as people write it
    if rest:
        return CommandProblem(line, "unexpected_argument")
    return Command(CommandKind.PENDING, days=days, line=line)


def _outage(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return CommandProblem(line, "missing_folio")
    if fold(args[0]).rstrip(_TRAILING_PUNCTUATION) in _STOP_WAITING:
        # "#masivo no" / "#outage off", as "#pendiente no" reads.
        if len(args) > 1:
            return CommandProblem(line, "unexpected_argument")
        return Command(CommandKind.OUTAGE, stop=True, line=line)
    if fold(args[0]).rstrip(_TRAILING_PUNCTUATION) in _OUTAGE_UPDATE:
        if len(args) > 1:
            return CommandProblem(line, "unexpected_argument")
        return Command(CommandKind.OUTAGE, update=True, line=line)
    # The main case's folio as written, read by the service as #fusionar's is.
    return Command(CommandKind.OUTAGE, folio=" ".join(args), line=line)


def _spam(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return Command(CommandKind.SPAM, line=line)
    # "#spam no" / "#spam off", as "#pendiente no" reads; anything else is no spam mark
    # (the agent's words go on the next line).
    if len(args) > 1 or fold(args[0]).rstrip(_TRAILING_PUNCTUATION) not in _STOP_WAITING:
        return CommandProblem(line, "unexpected_argument")
    return Command(CommandKind.SPAM, stop=True, line=line)


def _visit(line: str, args: list[str]) -> Command | CommandProblem:
    if args and fold(args[0]).rstrip(".") in _CANCEL_WORDS:
        if len(args) > 1:
            return CommandProblem(line, "unexpected_argument")
        return Command(CommandKind.VISIT, cancel=True, line=line)
    visit_date = parse_date(args[0]) if args else None
    if visit_date is None:
        return CommandProblem(line, "bad_date")
    visit_time: time | None = None
    if len(args) > 1:
        visit_time = parse_time(args[1])
        if visit_time is None:
            return CommandProblem(line, "bad_time")
    if len(args) > 2:
        # "4:30 pm", "16:30 hrs": refuse rather than guess what was meant, and
        # say it is the time (24-hour HH:MM) that is wrong.
        if fold("".join(args[2:])).replace(".", "") in _CLOCK_SUFFIXES:
            return CommandProblem(line, "bad_time")
        return CommandProblem(line, "unexpected_argument")
    return Command(CommandKind.VISIT, visit_date=visit_date, visit_time=visit_time, line=line)


def parse_date(word: str) -> date | None:
    """An ISO date that exists (no 2026-02-30), or None (also for ``cases visit --date``)."""
    match = _DATE_RE.fullmatch(word)
    if match is None:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def parse_time(word: str) -> time | None:
    """A 24-hour ``H:MM``/``HH:MM`` time that exists (no 24:00, no 10:60), or None."""
    match = _TIME_RE.fullmatch(word)
    if match is None:
        return None
    try:
        return time(int(match.group(1)), int(match.group(2)))
    except ValueError:
        return None


_ADDRESS_RE = re.compile(r"[^@\s<>()\[\],;:\"]+@[a-z0-9-]+(\.[a-z0-9-]+)+", re.ASCII)


# Outlook's text part writes a typed address as the link it made of it:
# "juan@x.mx<mailto:juan@x.mx>", or with a space before the link.
_MAILTO_RE = re.compile(r"^<?(?:mailto:)?([^<>\s]+)>?\s*<mailto:([^<>\s]+)>$", re.IGNORECASE)


def _written_address(args: list[str]) -> str | None:
    """The one address ``args`` hold, lower-cased, as agents' clients write one (bare, in
    ``<>``, ``mailto:``, Outlook's ``x<mailto:x>``); None for anything else."""
    written = " ".join(args)
    linked = _MAILTO_RE.fullmatch(written)
    if linked and linked.group(1).lower() == linked.group(2).lower():
        args = [linked.group(1)]
    address = args[0].strip("<>").lower()
    if address.startswith("mailto:"):
        address = address.removeprefix("mailto:")
    # Longer than RFC 5321 allows (4.5.3.1.3): no server delivers to it, and
    # PostgreSQL refused it for its column, which quarantined the agent's mail.
    too_long = len(address) > MAX_ADDRESS
    if len(args) > 1 or too_long or not _ADDRESS_RE.fullmatch(address):
        return None
    return address


def _participant(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return CommandProblem(line, "missing_address")
    address = _written_address(args)
    if address is None:
        return CommandProblem(line, "bad_address")
    return Command(CommandKind.PARTICIPANT, address=address, line=line)


def _assign(line: str, args: list[str]) -> Command | CommandProblem:
    if len(args) > 1 and fold(args[0]) in _ASSIGN_PREPOSITIONS:
        args = args[1:]
    if not args:
        return CommandProblem(line, "missing_owner")
    word = fold(args[0]).rstrip(_TRAILING_PUNCTUATION)
    if word in _MYSELF or word in _NOBODY:
        if len(args) > 1:
            return CommandProblem(line, "unexpected_argument")
        return Command(
            CommandKind.ASSIGN, myself=word in _MYSELF, nobody=word in _NOBODY, line=line
        )
    address = _written_address(args)
    if address is None:
        # Also "#asignar ana": a name is not an address, and two agents may share one.
        return CommandProblem(line, "bad_owner")
    # Spelt as agents.addresses and a message's sender are (lower-cased, and
    # canonical_address), so that "#asignar Ana@Example.COM" names ana@example.com.
    return Command(CommandKind.ASSIGN, owner=canonical_address(address), line=line)


def _route(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return CommandProblem(line, "missing_area")
    if len(args) > 1:
        # "#area soporte técnico": a name with a space, which bad_area's
        # sentence explains ("sin espacios"); the agent meant one area.
        return CommandProblem(line, "bad_area")
    area = area_key(args[0])
    if not _AREA_RE.fullmatch(area):
        return CommandProblem(line, "bad_area")
    return Command(CommandKind.ROUTE, area=area, line=line)


def reply_key(name: str) -> str:
    """The canned reply an agent means by ``name``, however it is spelt: folded like a
    command's name and without a sentence's trailing punctuation, so "Reinicio-Módem."
    is "reinicio-modem". ``#respuesta`` and ``mailcase replies show`` both read names so."""
    return fold(_without_format_characters(name).strip()).rstrip(_TRAILING_PUNCTUATION)


def _reply(line: str, args: list[str]) -> Command | CommandProblem:
    if not args:
        return CommandProblem(line, "missing_reply")
    name = reply_key(args[0])
    if len(args) > 1 or not _REPLY_RE.fullmatch(name):
        # "#respuesta reinicio modem": one name, as the file is named; the agent's own
        # words go on the next line.
        return CommandProblem(line, "bad_reply")
    return Command(CommandKind.REPLY, reply=name, line=line)
