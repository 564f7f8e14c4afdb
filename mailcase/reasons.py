"""Why a message was quarantined: a stable code and its parameters, said in a language.

The English sentence is the reason's public form: the ledger keeps it, ``mailcase
messages list`` and the logs show it, and admins' scripts and the tests match it.
It must not change when a translation does. A notice to agents says the reason
in the notice's language (:meth:`QuarantineReason.text`); a code with no
sentence in that language is said in English.

Pure: no I/O, and nothing of mailcase imported (``errors`` builds on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

ReasonParam = str | int


class Reason(StrEnum):
    """Every kind of reason mailcase gives for a quarantine (``TEXTS`` has its sentences)."""

    MIME_PARTS = "mime_parts"  # parts, limit
    HEADER_FIELD = "header_field"  # size, limit
    MIME_FIELD = "mime_field"  # size, limit
    HEADER_SECTION = "header_section"  # limit
    MIME_DEPTH = "mime_depth"  # depth, limit
    UNPARSEABLE = "unparseable"  # error
    PARSER_DIED = "parser_died"  # exit
    TEMPLATE_FAILED = "template_failed"  # template, error
    UNREADABLE = "unreadable"  # answer
    CASE_CHANGING = "case_changing"  # folio
    DATABASE = "database"  # error
    UNEXPECTED = "unexpected"  # error
    NO_SENDER = "no_sender"  # (triage: a From with a name and no address)
    ADDRESS_NESTING = "address_nesting"  # field


# The English sentences are the ledger's, word for word as they were before the codes
# existed; the error detail ({error}) is Python's or the database's words, not ours to
# translate.
TEXTS: Mapping[Reason, Mapping[str, str]] = {
    Reason.MIME_PARTS: {
        "en": "message has {parts} MIME parts, more than the limit of {limit}",
        "es": "el mensaje tiene {parts} partes MIME, más que el límite de {limit}",
    },
    Reason.HEADER_FIELD: {
        "en": "a header field of {size} bytes, more than the limit of {limit}",
        "es": "un campo de encabezado de {size} bytes, más que el límite de {limit}",
    },
    Reason.MIME_FIELD: {
        "en": "a Content-Type or Content-Disposition field of {size} bytes, "
        "more than the limit of {limit}",
        "es": "un campo Content-Type o Content-Disposition de {size} bytes, "
        "más que el límite de {limit}",
    },
    Reason.HEADER_SECTION: {
        "en": "a header section longer than the limit of {limit} bytes",
        "es": "una sección de encabezados más larga que el límite de {limit} bytes",
    },
    Reason.MIME_DEPTH: {
        "en": "MIME structure nested {depth} deep, more than the limit of {limit}",
        "es": "una estructura MIME anidada {depth} niveles de profundidad, "
        "más que el límite de {limit}",
    },
    Reason.UNPARSEABLE: {
        "en": "cannot parse message: {error}",
        "es": "no se pudo leer la estructura del mensaje: {error}",
    },
    Reason.PARSER_DIED: {
        "en": "the parser process died reading this message (exit {exit})",
        "es": "el proceso que lee los mensajes terminó de forma inesperada al leer este "
        "(código de salida {exit})",
    },
    Reason.TEMPLATE_FAILED: {
        "en": "template {template} failed on this message: {error}",
        "es": "la plantilla {template} falló con este mensaje: {error}",
    },
    Reason.UNREADABLE: {
        "en": "the IMAP server could not return it ({answer}); "
        "`mailcase messages retry` fetches it again",
        "es": "el servidor IMAP no lo pudo entregar ({answer}); "
        "«mailcase messages retry» lo pide de nuevo",
    },
    Reason.CASE_CHANGING: {
        # The exception's name, as every unexpected error is said: kept for the ledger.
        "en": "_CaseChanged: {folio}",
        "es": "el caso {folio} cambió de estado mientras se procesaba esta respuesta, "
        "en cada intento",
    },
    Reason.DATABASE: {
        "en": "{error}",
        "es": "la base de datos falló con este mensaje: {error}",
    },
    Reason.UNEXPECTED: {
        "en": "{error}",
        "es": "error inesperado: {error}",
    },
    Reason.NO_SENDER: {
        "en": "no sender address",
        "es": "el mensaje no trae la dirección de correo de quien lo envía, solo un nombre "
        "o nada: no se le puede contestar",
    },
    Reason.ADDRESS_NESTING: {
        "en": "the {field} field nests parentheses too deeply to read its addresses",
        "es": "el campo {field} anida paréntesis a tanta profundidad que no se pueden leer "
        "sus direcciones",
    },
}


@dataclass(frozen=True, slots=True)
class QuarantineReason:
    """A quarantine's ``code`` and the ``params`` its sentences are filled with."""

    code: Reason
    params: Mapping[str, ReasonParam] = field(default_factory=dict)

    def text(self, language: str = "en") -> str:
        """The reason in ``language``; in English when ``language`` has no sentence for it.

        English (the default) is the ledger's text, unchanged by translations.
        """
        sentences = TEXTS[self.code]
        return sentences.get(language, sentences["en"]).format(**self.params)
