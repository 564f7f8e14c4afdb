"""Notices: jinja2 templates → a complete :class:`email.message.EmailMessage`.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailcase.classify import LOOP_HEADER


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
    """Render ``kind``'s text (required) and HTML (optional) templates for ``language``."""
    env = _environment(override)
    text = env.get_template(f"{language}/{kind}.txt.j2").render(context)
    try:
        html_template = env.get_template(f"{language}/{kind}.html.j2")
    except jinja2.TemplateNotFound:
        return RenderedBody(text=text, html=None)
    return RenderedBody(text=text, html=html_template.render(context))


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


def _address(name: str, addr: str) -> Address:
    local, _, domain = one_line(addr).rpartition("@")
    return Address(display_name=one_line(name), username=local, domain=domain)


def build_message(envelope: Envelope, body: RenderedBody) -> EmailMessage:
    """A complete MIME message: text/plain, plus text/html as an alternative when given."""
    msg = EmailMessage()
    msg["From"] = _address(envelope.from_name, envelope.from_addr)
    msg["To"] = _address("", envelope.to_addr)
    if envelope.reply_to:
        msg["Reply-To"] = _address("", envelope.reply_to)
    msg["Subject"] = one_line(envelope.subject)
    msg["Date"] = format_datetime(envelope.date)
    msg["Message-ID"] = one_line(envelope.message_id)
    if envelope.in_reply_to:
        msg["In-Reply-To"] = one_line(envelope.in_reply_to)
    refs = [one_line(r) for r in envelope.references if r]
    if refs:
        # RFC 5322 3.6.4: keep the thread; long chains are trimmed from the middle.
        if len(refs) > 20:
            refs = refs[:1] + refs[-19:]
        msg["References"] = " ".join(refs)
    if envelope.auto_reply:
        # RFC 3834: mark it automatic so vacation responders stay quiet; Exchange
        # honours X-Auto-Response-Suppress instead.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = one_line(envelope.from_addr)
    msg.set_content(body.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if body.html is not None:
        msg.add_alternative(body.html, subtype="html", charset="utf-8", cte="quoted-printable")
    # After the body: set_content() clears every Content-* header and
    # add_alternative() moves them into the first part, so set earlier it was lost.
    msg["Content-Language"] = "es-MX" if envelope.language == "es" else one_line(envelope.language)
    return msg
