"""Canned replies ("respuestas predefinidas"): the answers agents give every day, shared.

A canned reply is a text template, one file per reply and language::

    templates/replies/es/reinicio-modem.txt.j2      (shipped with mailcase)
    <templates.directory>/replies/en/NAME.txt.j2    (the admin's own)

An admin's file of the same name and language wins over the shipped one, as for
every notice template (:mod:`mailcase.render`). Names are lower-case ASCII letters,
digits and hyphens; a file named otherwise is not a canned reply (``mailcase check``
says so). Each is rendered as every template is: sandboxed, StrictUndefined, with
the case's context (:func:`mailcase.notices.base_context`: ``folio``,
``customer_name``, ``company`` and the rest).

An agent sends one with ``#respuesta NOMBRE`` / ``#reply NAME``
(:mod:`mailcase.commands`); Zammad's text modules, OTRS/Znuny's templates,
osTicket's canned responses and FreeScout's saved replies are the same idea.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mailcase.errors import MessageError, TemplateError
from mailcase.render import TEMPLATE_RECHECK_SECONDS, render_named, shipped_templates

LANGUAGES: tuple[str, ...] = ("es", "en")
REPLIES_FOLDER = "replies"
REPLY_NAME_RE = re.compile(r"[a-z0-9-]+", re.ASCII)
_SUFFIX = ".txt.j2"

Source = Literal["shipped", "admin"]


@dataclass(frozen=True, slots=True)
class CannedReply:
    """One canned reply: its name and, per language it exists in, whose file is used."""

    name: str
    sources: Mapping[str, Source]  # language → "admin" (the override wins) or "shipped"

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(language for language in LANGUAGES if language in self.sources)

    @property
    def source(self) -> Source:
        """ "admin" when any of its languages is the admin's file, else "shipped"."""
        return "admin" if "admin" in self.sources.values() else "shipped"


def template_name(name: str, language: str) -> str:
    """The template (loader) name of canned reply ``name`` in ``language``."""
    return f"{REPLIES_FOLDER}/{language}/{name}{_SUFFIX}"


def is_reply_template(relative: str) -> bool:
    """Whether ``relative`` (a path under a templates directory, with "/") names a canned
    reply: ``replies/<es|en>/<name>.txt.j2`` with a well-formed name."""
    parts = relative.split("/")
    return (
        len(parts) == 3
        and parts[0] == REPLIES_FOLDER
        and parts[1] in LANGUAGES
        and parts[2].endswith(_SUFFIX)
        and REPLY_NAME_RE.fullmatch(parts[2].removesuffix(_SUFFIX)) is not None
    )


def _files(root: Path | None) -> dict[tuple[str, str], Path]:
    """(name, language) → file, for the well-formed canned replies under ``root``."""
    found: dict[tuple[str, str], Path] = {}
    if root is None:
        return found
    for language in LANGUAGES:
        folder = root / REPLIES_FOLDER / language
        if not folder.is_dir():
            continue
        for path in folder.glob(f"*{_SUFFIX}"):
            name = path.name.removesuffix(_SUFFIX)
            if path.is_file() and REPLY_NAME_RE.fullmatch(name):
                found[(name, language)] = path
    return found


def available(override: Path | None) -> dict[str, CannedReply]:
    """Every canned reply, by name (sorted): the shipped ones and ``override``'s
    (``templates.directory``), the admin's file winning for a name and language."""
    sources: dict[str, dict[str, Source]] = {}
    for origin, root in (("shipped", shipped_templates()), ("admin", override)):
        for name, language in _files(root):
            sources.setdefault(name, {})[language] = "admin" if origin == "admin" else "shipped"
    return {name: CannedReply(name, sources[name]) for name in sorted(sources)}


# What base_context lists in every notice to agents: read again every
# TEMPLATE_RECHECK_SECONDS (a new file is offered as soon as an edited template is used),
# not on every notice (a directory listing per notice).
_NAMES: dict[Path | None, tuple[float, tuple[str, ...]]] = {}


def reply_names(override: Path | None) -> tuple[str, ...]:
    """The names of :func:`available`, sorted; at most TEMPLATE_RECHECK_SECONDS old."""
    now = time.monotonic()
    at, names = _NAMES.get(override, (-math.inf, ()))
    if now - at >= TEMPLATE_RECHECK_SECONDS:
        names = tuple(available(override))
        _NAMES[override] = (now, names)
    return names


@dataclass(frozen=True, slots=True)
class RenderedReply:
    text: str
    language: str  # the one it was rendered in: the case's, unless it exists only in the other


def render_reply(
    name: str, language: str, context: Mapping[str, Any], *, override: Path | None = None
) -> RenderedReply | None:
    """Canned reply ``name`` rendered with ``context`` in ``language`` (the case's), or in
    the other language only when it does not exist in ``language``: a customer gets their
    own language whenever the reply has it. None when it exists in neither.

    The text is stripped of surrounding blank lines. Raises
    :class:`~mailcase.errors.TemplateError`, one sentence naming the file, when it
    cannot be compiled or uses a name the context lacks, and
    :class:`~mailcase.errors.MessageError` when it fails on this context's data, as
    every template (:func:`mailcase.render.render_body`).
    """
    others = [other for other in LANGUAGES if other != language]
    for candidate in (language, *others):
        text = render_named(template_name(name, candidate), context, override=override)
        if text is not None:
            return RenderedReply(text.strip(), candidate)
    return None


def check_replies(
    override: Path | None, contexts_of: Callable[[str], Sequence[Mapping[str, Any]]]
) -> list[str]:
    """Render every canned reply in each of its languages, from the files as they are now,
    with each of ``contexts_of(language)`` (sample cases'); the names rendered. Raises
    :class:`~mailcase.errors.TemplateError`, one sentence naming the file, for the first
    one that does not render."""
    for reply in available(override).values():
        for language in reply.languages:
            name = template_name(reply.name, language)
            for context in contexts_of(language):
                try:
                    render_named(name, context, override=override, fresh=True)
                except MessageError as exc:  # fails on a sample's data: so it would on a case's
                    raise TemplateError(f"canned reply {name} does not render: {exc}") from exc
    return list(available(override))
