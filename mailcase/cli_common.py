"""What the command line's command groups share, so that none of them imports another.

The usage error (exit 2), the store a command opens, who runs it, a customer's
address as ``--customer`` gives it, the delivery of what a command queued, and
how everything is printed. :mod:`mailcase.cli` (the parser, the entry point,
the exit codes, the small commands) and the groups' modules import this one;
it imports none of them.

What it prints keeps the promises :mod:`mailcase.cli` makes: ``--json`` is for
machines (stable keys, ISO 8601 UTC dates), tables are for people (times to the
minute in the business's time zone, cells cut to a width), and a customer's
control characters and bidirectional overrides are shown, never obeyed by the
terminal. A command's change is committed before :func:`_deliver_after_commit`
sends its notices: a delivery that cannot be made never makes the change look
failed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, func, select

from mailcase.config import Settings
from mailcase.errors import MailcaseError
from mailcase.inbound import BIDI_CONTROLS, MAX_ADDRESS, canonical_address
from mailcase.models import Notice, NoticeStatus
from mailcase.store import Store


class UsageError(MailcaseError):
    """An option's value that is not what it must be (``--date mañana``), or options that
    do not go together (``messages retry UID`` without ``--mailbox``): exit 2, as
    argparse's own usage errors, before anything is done."""


_NAMED_ADDRESS = re.compile(r"[^<>]*<([^<>]*)>")  # "Juan Pérez <juan@example.com>"


def _customer_address(text: str) -> str:
    """The customer address in ``text`` (``--customer``: bare, or "Name <address>"), spelt
    as a message's sender is (:func:`mailcase.inbound.canonical_address`), so that the
    customer's own mail finds the case; "" for none. UsageError for anything else.

    Looser than :func:`mailcase.cli_cases._mail_address`: a customer's domain may be non-ASCII
    (juan@telefonía-señal.mx goes out in its IDNA form), which #participante refuses.
    """
    named = _NAMED_ADDRESS.fullmatch(text.strip())
    customer = canonical_address((named.group(1) if named else text).strip().lower())
    _refuse_long_address("--customer", customer)
    local, at, domain = customer.rpartition("@")
    if customer and (not (at and local and domain) or any(c.isspace() for c in customer)):
        raise UsageError(f"--customer {text!r} is not a mail address")
    return customer


def _refuse_long_address(option: str, address: str) -> None:
    """UsageError when ``address`` is longer than any mail address can be (RFC 5321
    4.5.3.1.3: :data:`~mailcase.inbound.MAX_ADDRESS`); PostgreSQL refused it as a
    value too long for its column, with a traceback."""
    if len(address) > MAX_ADDRESS:
        raise UsageError(
            f"{option} is {len(address)} characters long: a mail address has at most "
            f"{MAX_ADDRESS} (RFC 5321)"
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _open_store(settings: Settings, *, create: bool) -> Store:
    """The configured database, upgraded when ``database.auto_upgrade`` allows it.

    Which commands may create a missing SQLite database (and its directories):
    those that write to it, ``run``, ``poll``, ``db upgrade``, every ``cases`` change
    (``open``, ``resolve``, ``note``, ``visit``, ``route``, ``type``, ``assign``,
    ``participant``, ``pending``, ``outage``, ``merge``, ``spam``, ``close``, ``reopen``),
    ``cases remind``, ``messages retry/release/dismiss`` and ``outbox retry``
    (``create=True``, or through ``service.Runtime``). The read-only ones, ``db current``,
    ``check``, ``status``, ``report``, ``cases list/show``, ``messages list`` and
    ``outbox list`` (and ``customers forget``: a missing database holds nobody's
    data), refuse a missing file with a sentence naming its path: run as root
    before the service started, they would leave a database the service user
    cannot open, and after a typo in ``database.url`` an empty one.
    """
    return Store.open(
        settings.database.url, auto_upgrade=settings.database.upgrades_itself, create=create
    )


def _operator() -> str:
    """Who ran the command, for the case's record: the login name, else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


def _last_notice_id(store: Store) -> int:
    """The highest notice id so far (0 for none)."""
    with store.reading() as conn:
        return int(conn.execute(select(func.max(Notice.id))).scalar() or 0)


def _deliver_after_commit(
    store: Store, settings: Settings, *, after: int, case_ids: Sequence[int] | None = None
) -> None:
    """Send what a command just queued; what cannot be sent now stays queued.

    The command's change is committed by then. A delivery that cannot even
    start (an SMTP password given as a systemd credential, which only the
    service's processes have; the database gone) must not make it look
    failed: the admin would run it again and open a second case. One line
    says why, and the daemon sends the notices. So does a notice of the
    command's (id above ``after``, of the cases ``case_ids`` when given: a main case's
    resolution sends its reports' too) that the
    SMTP server did not take: deferred (it stays queued) or refused.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from mailcase.outbox import deliver_outbox
    from mailcase.store import error_text

    try:
        report = deliver_outbox(store, settings)
        if report.busy:
            print(
                "mailcase: another mailcase process is delivering: the notices are queued for it",
                file=sys.stderr,
            )
        elif report.deferred or report.failed:
            for line in _unsent_notices(store, after, case_ids):
                print(f"mailcase: {line}", file=sys.stderr)
    except MailcaseError as exc:
        print(f"mailcase: notices stay queued for the daemon: {exc}", file=sys.stderr)
    except SQLAlchemyError as exc:
        print(f"mailcase: notices stay queued for the daemon: {error_text(exc)}", file=sys.stderr)


def _unsent_notices(store: Store, after: int, case_ids: Sequence[int] | None) -> list[str]:
    """One line per reason for the notices above id ``after`` (of ``case_ids``) not sent."""
    query = select(Notice.status, Notice.last_error, Notice.rcpt_to).where(
        col(Notice.id) > after,
        col(Notice.status).in_([NoticeStatus.QUEUED, NoticeStatus.FAILED]),
    )
    if case_ids is not None:
        query = query.where(col(Notice.case_id).in_(case_ids))
    with store.reading() as conn:
        notices = conn.execute(query.order_by(col(Notice.id))).all()
    # Several notices (the customer's, the agents') usually share one reason: SMTP down.
    reasons: dict[tuple[str, str], list[str]] = {}
    for status, last_error, rcpt_to in notices:
        reasons.setdefault((status, last_error or "not attempted yet"), []).append(rcpt_to)
    lines = []
    for (status, error), recipients in reasons.items():
        whom = "the notice to " if len(recipients) == 1 else "the notices to "
        whom += ", ".join(recipients)
        if status == NoticeStatus.QUEUED:
            verb = "is" if len(recipients) == 1 else "are"
            lines.append(f"{whom} {verb} queued, not sent yet: {error}")
        else:
            lines.append(f"{whom} could not be sent: {error}")
    return lines


def _print_json(value: Any) -> None:
    # print(), not json.dump: with stdout closed (`>&-`, sys.stdout is None) it prints nothing.
    print(json.dumps(value, ensure_ascii=False, indent=2))


T = TypeVar("T")


DEFAULT_LIMIT = 100  # rows a listing shows unless --limit N or --all says otherwise


def _limited(session: Session, query: Any, args: argparse.Namespace, rows: str) -> list[Any]:
    """``query``'s rows (newest first) within the listing's limit, in the order they came;
    says on stderr when the limit left some out."""
    if args.all:
        return _last(session.exec(query).all())
    limit = args.limit or DEFAULT_LIMIT
    found = session.exec(query.limit(limit + 1)).all()
    if len(found) > limit:
        print(
            f"mailcase: showing the {limit} newest {rows}; --limit N or --all for more",
            file=sys.stderr,
        )
    return _last(found[:limit])


def _last(newest_first: Sequence[T]) -> list[T]:
    """Rows read newest first (so that ``--limit`` keeps the last ones), in the order they came."""
    return list(reversed(newest_first))


def _local(value: str | None, zone: ZoneInfo | None) -> str | None:
    """An ISO 8601 time as ``--json`` gives it, as a person reads it: ``2026-11-27 07:03 CST``."""
    if value is None or zone is None:
        return value
    return datetime.fromisoformat(value).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


# C0 and C1 control characters but tab and newline: what a terminal obeys. A
# customer's subject, text, file name or address may hold ESC sequences that
# retitle the window, clear the screen or hide text when an admin lists cases.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with every control character but tab and newline shown as ``\\xNN``, and
    every bidirectional override as ``\\uNNNN``: safe to print on a terminal (as git
    and less show them), and read in the order it is written."""
    text = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return BIDI_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else visible(" ".join(str(value).split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_listing(
    rows: list[dict[str, Any]], columns: list[str], args: argparse.Namespace, zone: ZoneInfo
) -> None:
    """A listing's ``rows``: as JSON with ``--json`` (every field), else as a table of
    ``columns`` with times in ``zone``."""
    if args.json:
        _print_json(rows)
    else:
        _print_table(rows, columns, zone=zone)


def _print_table(
    rows: list[dict[str, Any]],
    columns: list[str],
    width: int = 60,
    *,
    zone: ZoneInfo | None = None,
) -> None:
    """``rows`` as a table; with a ``zone``, the ``*_at`` columns in its local time."""
    if not rows:
        print("(none)")
        return
    cells = [
        [_cell(_local(row.get(c), zone) if _is_time(c) else row.get(c), width) for c in columns]
        for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _is_time(key: str) -> bool:
    """Whether a listing's or a case's ``key`` holds a time (shown in local time)."""
    return key.endswith("_at") or key == "pending_until"
