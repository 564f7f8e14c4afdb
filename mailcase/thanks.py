"""Whether a customer's reply is only thanks or an acknowledgement (no I/O).

At an ISP most replies to a resolution notice are "Muchas gracias", "Ok, gracias",
"Perfecto, gracias por la atención" or "Thanks!". Each one reopened a finished
case and told the agents (mailcase.triage, rule 6), as Freshdesk's thank-you
detector and Zendesk's and Help Scout's rules exist to prevent.

The judgement is deliberately conservative: a false "thanks" buries a complaint
in a resolved case, a missed one costs the agents one needless notice. So the
text must be short, ask nothing, carry no number, and be made of a closed
vocabulary of thanks, acknowledgements, greetings and closings (Spanish of
Mexico and English), with at least one word that thanks or acknowledges.
Words that can turn thanks into a complaint or an answer are never in it:
"pero", "sigo", "sigue", "sin", "falla", "todavía", "aún", "ya", "nada"
("gracias por nada"), "no" and "sí" (either may answer a question the desk
asked), "quedo" ("quedo en espera"), "but", "still", "not", "works". The
tests hold the two lists apart.
"""

from __future__ import annotations

import re
import unicodedata

from mailcase.textfold import fold

# Own words longer than this are a message, whatever they are made of.
MAX_CHARS = 200

# What the ledger's reason ends with, and the case's note after such a message says
# (read back by mailcase.reminders: that message starts no wait).
NOT_REOPENED = "thanks only: not reopened"

# At least one of these: what makes a message thanks or an acknowledgement.
_THANKS = frozenset(
    {
        # Spanish
        "gracias",
        "agradezco",
        "agradecemos",
        "agradecido",
        "agradecida",
        "agradecidos",
        "agradecidas",
        "ok",
        "okay",
        "okey",
        "oki",
        "vale",
        "perfecto",
        "perfecta",
        "excelente",
        "genial",
        "listo",
        "enterado",
        "enterada",
        "entendido",
        "recibido",
        # English
        "thanks",
        "thank",
        "thankyou",
        "thx",
        "tks",
        "tnx",
        "ty",
        "appreciate",
        "appreciated",
        "great",
        "perfect",
        "excellent",
        "awesome",
        "noted",
        "received",
        "understood",
        "cheers",
    }
)

# Words allowed around them: intensifiers, "por la atención", greetings, closings,
# forms of address. None of them says anything about the service on its own.
_COURTESY = frozenset(
    {
        # Spanish
        "mucho",
        "muchas",
        "muchisimo",
        "muchisimas",
        "mil",
        "infinitas",
        "muy",
        "super",
        "amable",
        "amables",
        "bien",
        "bueno",
        "de",
        "acuerdo",
        "verdad",
        "por",
        "todo",
        "todos",
        "todas",
        "el",
        "la",
        "los",
        "las",
        "un",
        "una",
        "su",
        "sus",
        "tu",
        "a",
        "al",
        "y",
        "se",
        "le",
        "les",
        "lo",
        "usted",
        "ustedes",
        "atencion",
        "atenciones",
        "ayuda",
        "apoyo",
        "pronta",
        "rapida",
        "rapido",
        "respuesta",
        "solucion",
        "seguimiento",
        "paciencia",
        "hola",
        "buen",
        "buenas",
        "buenos",
        "feliz",
        "bonito",
        "bonita",
        "que",
        "tenga",
        "tengan",
        "saludo",
        "saludos",
        "cordial",
        "cordiales",
        "cordialmente",
        "atentamente",
        "atte",
        "att",
        "slds",
        "sds",
        "ordenes",
        "bendiciones",
        "dios",
        "bendiga",
        "joven",
        "senor",
        "senora",
        "senorita",
        "sr",
        "sra",
        "srta",
        "lic",
        "licenciado",
        "licenciada",
        "ing",
        "ingeniero",
        "ingeniera",
        # English
        "you",
        "u",
        "so",
        "very",
        "much",
        "many",
        "lot",
        "lots",
        "for",
        "the",
        "your",
        "all",
        "and",
        "everything",
        "help",
        "support",
        "assistance",
        "quick",
        "fast",
        "prompt",
        "response",
        "good",
        "nice",
        "fine",
        "got",
        "it",
        "really",
        "i",
        "we",
        "have",
        "hi",
        "hello",
        "hey",
        "regards",
        "best",
        "kind",
        "kindest",
        "warm",
        "sincerely",
        "yours",
        "take",
        "care",
        "guys",
        "team",
    }
)

# Never a word of thanks, whatever else is written; a name made of them is no
# sign-off either (the tests check the vocabulary against this list).
NEVER = frozenset(
    {
        "no",
        "si",
        "pero",
        "sin",
        "sigo",
        "sigue",
        "seguimos",
        "siguen",
        "falla",
        "fallando",
        "todavia",
        "aun",
        "ya",
        "nada",
        "nunca",
        "otra",
        "nuevamente",
        "again",
        "tarde",
        "late",
        "vez",
        "quedo",
        "espera",
        "funciona",
        "servicio",
        "internet",
        "antemano",
        "but",
        "not",
        "still",
        "yet",
        "nothing",
        "works",
        "working",
        "issue",
        "problem",
    }
)

_WORDS = frozenset(_THANKS | _COURTESY)
_QUESTION = frozenset("?¿？⸮")
# Sarcasm or displeasure next to "gracias": read as a complaint. Faces and gestures
# that frown, cry, roll their eyes or turn a thumb down, and ":(" ":/" ":'(" "D:".
# And the faces of irony: an upside-down smile, a clown, a smirk, tears of laughter,
# and the eye-rolls typed as "¬¬" (common in Mexico) and "-_-".
_DISPLEASED = frozenset("😡😠🤬😤😞😢😭😒🙄👎💢☹🙁😕😟😔😩😫😣😖🤦😑😐🖕🙃🤡😏😂🤣")
_FROWN = re.compile(r"[:;=]'?-?[(\[/\\|]|\bD:|¬\s*¬|-_+-|-\.-")
_WORD = re.compile(r"[^\W\d_]+")
# Whole phrases whose words alone are not all allowed (matched on folded text). A
# time of day only in a greeting: "Gracias, muy tarde" complains of the delay. "Ya
# quedó", "ya funciona", "ya tengo internet": how customers in Mexico confirm a
# repair, an acknowledgement only as a whole ("ya" alone is never one: "ya van tres
# días"). "Su tiempo" only after "por".
_GREETINGS = re.compile(
    r"\b(?:(?:que\s+(?:tenga|tengan|tengas)\s+(?:un\s+|una\s+)?)?"
    r"buen(?:a|o|as|os)?\s+(?:dia|dias|tarde|tardes|noche|noches|fin\s+de\s+semana)"
    r"|good\s+(?:morning|afternoon|evening|day)"
    r"|have\s+a\s+(?:nice|good|great)\s+(?:day|weekend|evening)"
    r"|por\s+(?:su|tu)\s+tiempo)\b"
)
_FIXED = re.compile(
    r"\bya\s+(?:quedo|funciona|sirve|jala|(?:hay|tengo|tenemos)\s+(?:servicio|internet|senal)"
    r"|se\s+(?:arreglo|soluciono|resolvio|restablecio)|(?:it\s+)?works)\b"
    r"|\bit\s+works\s+now\b"
)
# "graciaaas", "okkk", "muuuchas": a letter written three times or more is one.
_DRAWN_OUT = re.compile(r"([^\W\d_])\1{2,}")


def is_thanks_only(text: str, sender_name: str, sender: str) -> bool:
    """Whether ``text`` (a customer's own words: quoted history and signature already
    cut, :func:`mailcase.quoting.customer_text`) is only thanks or an acknowledgement.

    True only when all of these hold: the text is not blank and at most
    :data:`MAX_CHARS` characters long; it holds no question mark (``?``, ``¿``),
    no digit (any script's), and no frowning face or emoji; every word of it,
    compared without case or accents, is in the closed vocabulary of thanks,
    acknowledgements, greetings and closings, except that the last line may
    also be the sender's own name (the words of ``sender_name`` or of the local
    part of ``sender``) as a sign-off; and at least one word thanks or
    acknowledges ("gracias", "ok", "perfecto", "thanks", …). Punctuation and
    other emoji ("!", "👍", "🙏") are ignored. Never raises; linear in ``len(text)``.
    """
    text = "".join(c for c in text if unicodedata.category(c) != "Cf").strip()
    if not text or len(text) > MAX_CHARS:
        return False
    if any(c in _QUESTION or c in _DISPLEASED or c.isnumeric() for c in text):
        return False
    if _FROWN.search(text):
        return False
    lines = [_words(line) for line in text.splitlines()]
    lines = [words for words in lines if words]
    if not lines:  # only emoji and punctuation: nothing to judge
        return False
    name = (_words(sender_name) | _words(sender.partition("@")[0])) - NEVER
    *body, last = lines
    if not (all(words <= _WORDS for words in body) and last <= _WORDS | name):
        return False
    return any(words & _THANKS for words in lines)


def _words(text: str) -> set[str]:
    """The words of ``text`` folded (lower case, no accents, drawn-out letters once), a
    greeting phrase left out and a phrase confirming the repair read as "ok"."""
    folded = _DRAWN_OUT.sub(r"\1", fold(text))
    folded = _FIXED.sub(" ok ", _GREETINGS.sub(" ", folded))
    return set(_WORD.findall(folded))


# How far below a signature delimiter a postscript is looked for, and what starts one.
_SIGNATURE_LINES = 8
_POSTSCRIPT = re.compile(r"\s*(?:p\.?\s?d\b|p\.?\s?s\b)", re.IGNORECASE)
_QUOTE_START = re.compile(r"\s*(?:>|-{4,}|_{4,}|(?:de|from|enviado|sent)\s*:)", re.IGNORECASE)


def signature_says_more(text: str) -> bool:
    """Whether the lines below a ``--`` signature delimiter of ``text`` (a message as
    received: the case keeps only what is above it) say more than a signature does.

    True when, within a few lines below the delimiter and above any quoted history,
    a line asks (``?``, ``¿``), starts a postscript (``PD:``, ``P.D.``, ``PS:``) or
    holds a word of :data:`NEVER` ("Gracias\n--\nSigue sin servicio"). Digits are
    fine there: signatures carry phone numbers. Never raises; linear in ``len(text)``.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "--"), None)
    if start is None:
        return False
    for line in lines[start + 1 : start + 1 + _SIGNATURE_LINES]:
        if _QUOTE_START.match(line) or line.rstrip().endswith(":"):
            break  # the quoted history (or its attribution line) begins
        if any(c in _QUESTION for c in line) or _POSTSCRIPT.match(line):
            return True
        if _words(line) & NEVER:
            return True
    return False
