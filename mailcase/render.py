"""Notices: jinja2 templates → the complete message, as bytes ready for SMTP.

Guarantees:

* Customer-controlled text (names, subjects, bodies) is only ever passed to
  templates as *data*; it is never compiled as template source, and the
  environment is sandboxed so an admin's override cannot reach Python objects.
* HTML templates autoescape; text templates do not (they are text/plain).
* No string can create a header: every value put in a header is folded onto
  one line first (CR, LF and the Unicode line separators become spaces).
* Templates are looked up in ``[templates] directory`` first, then in the ones
  shipped with mailcase, as ``<language>/<kind>.txt.j2`` and ``.html.j2``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailcase import wire
from mailcase.classify import LOOP_HEADER
from mailcase.errors import MessageError, TemplateError
from mailcase.reasons import Reason


def shipped_templates() -> Path:
    """The default templates: inside the wheel, or at the top of a source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("mailcase's default templates are missing from the installation")


@lru_cache(maxsize=8)
def _environment(override: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if override is not None:
        loaders.append(jinja2.FileSystemLoader(str(override)))
    loaders.append(jinja2.FileSystemLoader(str(shipped_templates())))
    return ImmutableSandboxedEnvironment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2", "html")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # Files are compared with what was compiled in _recheck, every
        # TEMPLATE_RECHECK_SECONDS, not on every lookup (includes too).
        auto_reload=False,
    )


def one_line(value: str) -> str:
    """``value`` folded onto one line: safe to put in any header."""
    return " ".join(value.replace("\x00", " ").split())


@dataclass(frozen=True, slots=True)
class RenderedBody:
    text: str
    html: str | None


def render_body(
    kind: str, language: str, context: Mapping[str, Any], *, override: Path | None = None
) -> RenderedBody:
    """Render ``kind``'s text (required) and HTML (optional) templates for ``language``.

    An edited template, or a new HTML template where there was none, is used
    within :data:`TEMPLATE_RECHECK_SECONDS`. Raises
    :class:`~mailcase.errors.TemplateError`, one sentence naming the file, when
    a template cannot be compiled (a typo in an override), and
    :class:`~mailcase.errors.MessageError` when it fails on this context
    (:func:`_render`).
    """
    env = _environment(override)
    name = f"{language}/{kind}.txt.j2"
    text_template = _template(env, name)
    if text_template is None:
        raise TemplateError(f"template {name} is missing")
    text = _render(text_template, context)
    html_template = _template(env, f"{language}/{kind}.html.j2")
    if html_template is None:
        return RenderedBody(text=text, html=None)
    return RenderedBody(text=text, html=_render(html_template, context))


def _render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """``template`` rendered with ``context``.

    A template that cannot work for anyone (a syntax error in a file it
    includes, an include that is missing, a name no notice has, a reach for
    Python's internals that the sandbox stops) raises
    :class:`~mailcase.errors.TemplateError`; one that fails on this data
    (an override's ``customer_name.split()[1]`` for a customer without a
    name) raises :class:`~mailcase.errors.MessageError`: that message is
    quarantined, the others are answered.
    """
    filename = template.filename or template.name
    try:
        return template.render(context)
    except (jinja2.TemplateSyntaxError, jinja2.TemplateNotFound, SecurityError) as exc:
        raise TemplateError(f"template {filename} cannot be used: {exc}") from exc
    except UnicodeDecodeError as exc:  # a file it includes, saved as Latin-1
        raise TemplateError(
            f"template {filename} includes a file that is not UTF-8 text (mailcase check names it)"
        ) from exc
    except OSError as exc:  # a file it includes that cannot be read (its mode, SELinux)
        raise TemplateError(
            f"template {filename} includes a file that cannot be read: {exc.strerror or exc}"
        ) from exc
    except Exception as exc:
        unknown = (
            _unknown_names(template, context) if isinstance(exc, jinja2.UndefinedError) else []
        )
        if unknown:  # "{{ follio }}": no notice has it, so none can be rendered
            raise TemplateError(
                f"template {filename} uses {', '.join(unknown)}, which this notice does not have"
            ) from exc
        raise MessageError(
            Reason.TEMPLATE_FAILED, template=str(filename), error=f"{type(exc).__name__}: {exc}"
        ) from exc


def render_named(
    name: str, context: Mapping[str, Any], *, override: Path | None = None, fresh: bool = False
) -> str | None:
    """Template ``name`` (a loader name: ``replies/es/reinicio-modem.txt.j2``) rendered
    with ``context``, ``override`` first; None when no loader has it.

    Raises as :func:`render_body` does: :class:`~mailcase.errors.TemplateError`
    naming the file when it cannot be compiled or uses a name ``context`` lacks,
    :class:`~mailcase.errors.MessageError` when it fails on this data. ``fresh``: from
    the files as they are now, nothing compiled kept (for checks).
    """
    template = _fresh_template(environment(override), name) if fresh else None
    if not fresh:
        template = _template(_environment(override), name)
    return None if template is None else _render(template, context)


def _fresh_template(env: jinja2.Environment, name: str) -> jinja2.Template | None:
    """``name`` from ``env`` (not kept among the environments :func:`_template` rechecks),
    or None when no loader has it."""
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound:
        return None
    except (jinja2.TemplateError, UnicodeDecodeError, OSError) as exc:
        # OSError: a file mailcase may not read (root's 0600, an SELinux label kept by mv)
        # is the admin's to fix, as a syntax error is: not a message to quarantine.
        reason = compile_error(env, name) or f"template {name} cannot be compiled"
        raise TemplateError(reason) from exc


def _unknown_names(template: jinja2.Template, context: Mapping[str, Any]) -> list[str]:
    """The names ``template``'s own source uses that are neither in ``context`` nor
    set by the template itself (its includes are not looked at)."""
    env = template.environment
    if env.loader is None or template.name is None:
        return []
    try:
        source = env.loader.get_source(env, template.name)[0]
        used = meta.find_undeclared_variables(env.parse(source))
    except jinja2.TemplateError:
        return []
    return sorted(name for name in used if name not in context and name not in env.globals)


def compile_error(env: jinja2.Environment, name: str) -> str | None:
    """Why template ``name`` of ``env`` cannot be compiled (one sentence naming its
    file and line), or ``None``."""
    try:
        env.get_template(name)
    except jinja2.TemplateSyntaxError as exc:
        return f"template {exc.filename or name} line {exc.lineno}: {exc.message}"
    except jinja2.TemplateError as exc:
        return f"template {name}: {exc}"
    except UnicodeDecodeError:
        # Saved as Latin-1 or Windows-1252 (Notepad, an older editor): jinja2 reads UTF-8,
        # and its UnicodeDecodeError is no TemplateError, so it escaped as a traceback.
        return f"template {_file_of(env, name)} is not UTF-8 text: save it as UTF-8"
    except OSError as exc:
        return f"template {_file_of(env, name)} cannot be read: {exc.strerror or exc}"
    return None


def _file_of(env: jinja2.Environment, name: str) -> str:
    """The file template ``name`` of ``env`` is read from (the first loader having it),
    or ``name`` itself when no file-system loader has it."""
    loader = env.loader
    loaders = loader.loaders if isinstance(loader, jinja2.ChoiceLoader) else [loader]
    for one in loaders:
        if isinstance(one, jinja2.FileSystemLoader):
            for root in one.searchpath:
                path = Path(root) / name
                if path.is_file():
                    return str(path)
    return name


def environment(override: Path | None) -> jinja2.Environment:
    """A fresh templates' environment, as notices are rendered in: ``override`` first,
    then the shipped templates; nothing compiled yet (for checks of the files as they are)."""
    return _environment.__wrapped__(override)


TEMPLATE_RECHECK_SECONDS = 2.0
# jinja2 compared a template file's time on every lookup, includes too, and
# looking for a file that is not there costs a stat in every loader (most
# agent notices have no HTML part): together a tenth of rendering time.
_CHECKED: dict[jinja2.Environment, float] = {}  # when its files were last compared
_MISSING: set[tuple[jinja2.Environment, str]] = set()  # looked for and not found since


def _template(env: jinja2.Environment, name: str) -> jinja2.Template | None:
    """``name`` from ``env``, or None when no loader has it."""
    _recheck(env)
    key = (env, name)
    if key in _MISSING:
        return None
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound:
        _MISSING.add(key)
        return None
    except (jinja2.TemplateError, UnicodeDecodeError, OSError) as exc:
        # OSError: a file mailcase may not read (root's 0600, an SELinux label kept by mv)
        # is the admin's to fix, as a syntax error is: not a message to quarantine.
        reason = compile_error(env, name) or f"template {name} cannot be compiled"
        raise TemplateError(reason) from exc


def _recheck(env: jinja2.Environment) -> None:
    """Every :data:`TEMPLATE_RECHECK_SECONDS`: forget ``env``'s compiled templates if
    any file changed, and which templates were missing."""
    now = time.monotonic()
    if now - _CHECKED.get(env, -math.inf) < TEMPLATE_RECHECK_SECONDS:
        return
    _CHECKED[env] = now
    cache = env.cache
    if cache is not None and not all(t.is_up_to_date for t in list(cache.values())):
        cache.clear()
    for key in [k for k in list(_MISSING) if k[0] is env]:
        _MISSING.discard(key)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The headers of one notice; every string here may be customer-controlled."""

    from_addr: str
    from_name: str
    to_addr: str
    subject: str
    message_id: str
    date: datetime
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    language: str = "es"
    auto_reply: bool = True
    reply_to: str | None = None


def build_message(
    envelope: Envelope, body: RenderedBody, attachments: Sequence[wire.FileAttachment] = ()
) -> bytes:
    """The complete message: text/plain, plus text/html as an alternative when given,
    and ``attachments`` after them (multipart/mixed).

    Headers may carry raw UTF-8 (RFC 6532) only when an address needs
    SMTPUTF8 anyway; otherwise the message is pure ASCII.
    """
    addresses = (envelope.from_addr, envelope.to_addr, envelope.reply_to or "")
    utf8 = not all(a.isascii() for a in addresses)
    headers = [
        wire.address("From", envelope.from_name, one_line(envelope.from_addr), utf8=utf8),
        wire.address("To", "", one_line(envelope.to_addr), utf8=utf8),
    ]
    if envelope.reply_to:
        headers.append(wire.address("Reply-To", "", one_line(envelope.reply_to), utf8=utf8))
    headers += [
        wire.unstructured("Subject", one_line(envelope.subject), utf8=utf8),
        wire.raw_header("Date", format_datetime(envelope.date)),
        wire.identifiers("Message-ID", [one_line(envelope.message_id)], utf8=utf8),
    ]
    if envelope.in_reply_to:
        headers.append(wire.identifiers("In-Reply-To", [one_line(envelope.in_reply_to)], utf8=utf8))
    refs = [one_line(r) for r in envelope.references if r]
    if refs:
        # RFC 5322 3.6.4: keep the thread; long chains are trimmed from the middle.
        if len(refs) > 20:
            refs = refs[:1] + refs[-19:]
        headers.append(wire.identifiers("References", refs, utf8=utf8))
    if envelope.auto_reply:
        # RFC 3834: mark it automatic so vacation responders stay quiet; Exchange
        # honours X-Auto-Response-Suppress instead.
        headers.append(wire.raw_header("Auto-Submitted", "auto-replied"))
        headers.append(wire.raw_header("X-Auto-Response-Suppress", "All"))
    headers.append(wire.unstructured(LOOP_HEADER, one_line(envelope.from_addr), utf8=utf8))
    language = "es-MX" if envelope.language == "es" else one_line(envelope.language)
    headers.append(wire.unstructured("Content-Language", language, utf8=utf8))
    return wire.message("".join(headers), body.text, body.html, utf8=utf8, attachments=attachments)
