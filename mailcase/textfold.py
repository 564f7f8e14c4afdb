"""Words compared as people type them: without case or accents (no I/O).

Agents write ``#Área``, ``#area`` or ``#AREA``; customers write "Respuesta
Automática" or "respuesta automatica", "Gracias" or "GRACIAS": one folded form
for each, shared by the modules that read people's words.
"""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """``text`` case-folded and without accents: "Área" → "area", "ÉXITO" → "exito".

    Guarantees: never raises; compatibility forms are decomposed first (NFKD), so
    "ﬁ" becomes "fi"; linear in ``len(text)``.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
