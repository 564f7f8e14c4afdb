"""The command line: the only module that prints or exits.

Global options come before the command: ``mailcase --config PATH --debug poll``.
Errors are one line on stderr naming what failed (mailbox, key, file) and a
named exit code from :mod:`mailcase.errors`; ``--debug`` adds the traceback.
``--json`` output is for machines: stable keys, ISO 8601 UTC dates, no secrets.
Tables are for people: times to the minute in the business's time zone
(``folio.timezone``, America/Mexico_City by default), with its abbreviation.
"""

from __future__ import annotations

import argparse
import atexit
import getpass
import io
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import defer
from sqlmodel import Session, col, func, select

from mailcase import __version__
from mailcase.casework import (
    FORGOTTEN,
    is_erased,
    related_folios,
)
from mailcase.commands import area_key
from mailcase.config import (
    MAX_DAYS,
    Settings,
    check_ca_files,
    check_secrets,
    config_path,
    load_settings,
)
from mailcase.errors import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SCHEMA,
    ConfigError,
    DatabaseError,
    MailboxError,
    MailcaseError,
    NotFoundError,
    SchemaTooNewError,
)
from mailcase.inbound import BIDI_CONTROLS, MAX_ADDRESS, MAX_NAME, canonical_address
from mailcase.logs import configure
from mailcase.merging import merged_target
from mailcase.models import (
    Case,
    CaseMessage,
    CaseStatus,
    Disposition,
    LedgerEntry,
    Notice,
    NoticeStatus,
    StoredAttachment,
)
from mailcase.outages import outage_reports
from mailcase.store import (
    Store,
    case_by_folio,
    error_text,
    failure_text,
    is_deadlock,
    is_unavailable,
    sqlite_path,
    user_name,
    utcnow,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors too
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"mailcase: {message}\n")


class UsageError(MailcaseError):
    """An option's value that is not what it must be (``--date mañana``), or options that
    do not go together (``messages retry UID`` without ``--mailbox``): exit 2, as
    argparse's own usage errors, before anything is done."""


_NAMED_ADDRESS = re.compile(r"[^<>]*<([^<>]*)>")  # "Juan Pérez <juan@example.com>"


def _mail_address(option: str, text: str) -> str:
    """The address in ``text`` (an ``option``'s value), lower-cased: a bare address, or
    the one in "Name <address>". UsageError for anything else.

    The address is checked as the mail command ``#participante`` checks it
    (:mod:`mailcase.commands`), so the command line and mail accept the same ones.
    """
    from mailcase.commands import CommandKind, parse_commands

    value = text.strip()
    named = _NAMED_ADDRESS.fullmatch(value)
    address = named.group(1).strip() if named else value
    _refuse_long_address(option, address)
    # One line only: a line break would end the command and start its text.
    parsed = parse_commands(f"#participante {address}") if address.isprintable() else None
    found = parsed.commands if parsed is not None and not parsed.text else ()
    if len(found) != 1 or found[0].kind != CommandKind.PARTICIPANT or not found[0].address:
        raise UsageError(
            f"{option} {text!r} is not a mail address "
            '(juan@example.com, or "Juan <juan@example.com>")'
        )
    return found[0].address


def _agent_address(option: str, text: str, settings: Settings) -> str:
    """The agent ``text`` names (an address as ``#asignar`` reads one: any capitals,
    "Name <address>"), which must be one of ``agents.addresses``; UsageError otherwise,
    naming them."""
    address = canonical_address(_mail_address(option, text))
    if address not in settings.agents.addresses:
        known = ", ".join(settings.agents.addresses) or "none configured"
        raise UsageError(
            f"{option} {address} is not an agent's address (agents.addresses: {known})"
        )
    return address


def _owner_filter(text: str) -> str | None:
    """``cases list --owner``: the address as stored (lower-cased, as ``#asignar`` spells
    it), or None for "none" (the cases nobody owns). Any address is taken, an agent's or
    not: one who left the desk (out of agents.addresses) still owns their old cases."""
    if text.strip().lower() in ("none", "nadie"):
        return None
    address = canonical_address(text.strip().lower())
    _refuse_long_address("--owner", address)
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or any(c.isspace() for c in address):
        raise UsageError(f'--owner {text!r} is not a mail address (or "none")')
    return address


def _folio(text: str, settings: Settings) -> str:
    """The folio a command-line argument names, read as the mail path reads one in a
    subject (:func:`mailcase.folio.find_folios`): ``PLR 2026 123``, ``plr-2026-000123.``
    and ``[Folio PLR-2026-000123]`` are ``PLR-2026-000123``. Anything else is returned
    upper-cased, to be reported as no such case."""
    from mailcase.folio import find_folios

    found = find_folios(text, settings.folio.prefix)
    return found[0] if len(found) == 1 else text.strip().upper()


def _customer_address(text: str) -> str:
    """The customer address in ``text`` (``--customer``: bare, or "Name <address>"), spelt
    as a message's sender is (:func:`mailcase.inbound.canonical_address`), so that the
    customer's own mail finds the case; "" for none. UsageError for anything else.

    Looser than :func:`_mail_address`: a customer's domain may be non-ASCII
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


def _outcome(text: str) -> str:
    """argparse's type for ``--outcome``: valid/invalid, or the mail command's
    procedente/improcedente (read as ``#resolver`` reads them: any case, accents)."""
    from mailcase.commands import CommandKind, parse_commands

    parsed = parse_commands(f"#resolver {text}") if text.isprintable() else None
    found = parsed.commands if parsed is not None and not parsed.text else ()
    if len(found) != 1 or found[0].kind != CommandKind.RESOLVE or found[0].outcome is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an outcome (valid or procedente; invalid or improcedente)"
        )
    return found[0].outcome


_TYPE_METAVAR = "complaint|question|clarification|cancellation"


def _case_type(text: str) -> str:
    """argparse's type for ``--type``: a case type, in English or in the mail command's
    Spanish (queja, consulta, aclaracion, cancelacion), read as ``#tipo`` reads it."""
    from mailcase.commands import parse_case_type

    found = parse_case_type(text) if text.isprintable() else None
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a case type (complaint or queja, question or consulta, "
            "clarification or aclaracion, cancellation or cancelacion)"
        )
    return found


def _pending_days(text: str) -> int:
    """argparse's type for ``cases pending --days``: 1 to 90, as ``#pendiente`` reads it."""
    from mailcase.commands import PENDING_MAX_DAYS, parse_days

    found = parse_days(text) if text.isprintable() else None
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of days from 1 to {PENDING_MAX_DAYS}"
        )
    return found


def _visit_when(day: str, hour: str | None) -> tuple[date, str | None]:
    """``--date`` and ``--time`` read as the mail command ``#visita`` reads them; UsageError
    for a value it would not take."""
    from mailcase.commands import parse_date, parse_time

    parsed = parse_date(day.strip())
    if parsed is None:
        raise UsageError(f"--date {day!r} is not a date (YYYY-MM-DD)")
    if hour is None:
        return parsed, None
    clock = parse_time(hour.strip())
    if clock is None:
        raise UsageError(f"--time {hour!r} is not a time (HH:MM)")
    return parsed, clock.strftime("%H:%M")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailcase", description="Support mail in, tracked cases out.")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $MAILCASE_CONFIG or /etc/mailcase/mailcase.toml)",
    )
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    parser.add_argument("--version", action="version", version=f"mailcase {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    poll = commands.add_parser("poll", help="read every mailbox once, then deliver the outbox")
    poll.add_argument(
        "--progress", action="store_true", help="show a progress bar per mailbox (on a terminal)"
    )
    commands.add_parser("run", help="run the daemon (poll on a schedule, deliver notices)")

    cases = commands.add_parser("cases", help="list, show, open and work cases").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = cases.add_parser("list", help="list cases, newest first")
    listing.add_argument(
        "--status", choices=[s.value for s in CaseStatus], help="only cases with this status"
    )
    listing.add_argument(
        "--customer", metavar="EMAIL", help="only this customer's cases (a caller's address)"
    )
    listing.add_argument("--area", help="only cases routed to this area (see [areas])")
    listing.add_argument(
        "--type", type=_case_type, metavar=_TYPE_METAVAR, help="only cases of this type"
    )
    listing.add_argument(
        "--owner",
        metavar="ADDRESS",
        help='only the cases this agent owns ("none": the cases nobody owns)',
    )
    listing.add_argument(
        "--unanswered",
        action="store_true",
        help="only open cases whose customer's latest message has no answer yet, "
        "the longest wait first",
    )
    listing.add_argument(
        "--pending",
        action="store_true",
        help="only open cases waiting for the customer's answer (#pendiente, cases pending)",
    )
    listing.add_argument(
        "--outage",
        metavar="FOLIO",
        help="only the reports of the outage followed in this main case (#masivo, cases outage)",
    )
    _listing_limits(listing, "cases", "newest")
    listing.add_argument("--json", action="store_true")
    show = cases.add_parser("show", help="one case with its messages")
    show.add_argument("folio")
    show.add_argument("--json", action="store_true")
    saving = cases.add_parser(
        "attachment", help="write one of a case's files (numbered as cases show lists them)"
    )
    saving.add_argument("folio")
    saving.add_argument("number", type=_positive, metavar="N")
    saving.add_argument(
        "--output", metavar="FILE", help="where to write it (default: stdout, not a terminal)"
    )
    opening = cases.add_parser("open", help="register a case received by phone, web or visit")
    opening.add_argument("--customer", default="", help="the customer's mail address, if known")
    opening.add_argument("--name", default="", help="the customer's name")
    opening.add_argument("--channel", required=True, choices=["phone", "web", "visit", "mail"])
    opening.add_argument("--subject", required=True)
    opening.add_argument("--text", required=True, help="what the customer reported")
    opening.add_argument("--mailbox", help="the mailbox whose address answers (default: the first)")
    opening.add_argument(
        "--language",
        choices=["es", "en"],
        help="the language of the case's notices (default: the mailbox's, else notices.language)",
    )
    opening.add_argument(
        "--type", type=_case_type, metavar=_TYPE_METAVAR, help="the kind of report, if known"
    )
    opening.add_argument("--json", action="store_true")
    resolving = cases.add_parser("resolve", help="resolve a case and notify the customer")
    resolving.add_argument("folio")
    resolving.add_argument(
        "--outcome",
        required=True,
        type=_outcome,
        metavar="valid|invalid",
        help="also procedente|improcedente, as in the mail command #resolver",
    )
    resolving.add_argument("--cause", required=True, help="the explanation of the causes")
    noting = cases.add_parser("note", help="add an internal note")
    noting.add_argument("folio")
    noting.add_argument("--text", required=True)
    visiting = cases.add_parser(
        "visit", help="schedule (or cancel) a home visit and notify the customer"
    )
    visiting.add_argument("folio")
    when = visiting.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", help="YYYY-MM-DD")
    when.add_argument(
        "--cancel", action="store_true", help="cancel the visit still ahead and tell the customer"
    )
    visiting.add_argument("--time", help="HH:MM")
    joining = cases.add_parser(
        "participant", help="let another address write on a case (the customer's work address)"
    )
    joining.add_argument("folio")
    joining.add_argument(
        "--add", required=True, metavar="ADDRESS", help='an address, or "Name <address>"'
    )
    routing = cases.add_parser("route", help="route a case to an area and notify it")
    routing.add_argument("folio")
    routing.add_argument("--area", required=True)
    typing = cases.add_parser(
        "type", help="classify a case: complaint, question, clarification or cancellation"
    )
    typing.add_argument("folio")
    typing.add_argument(
        "--type",
        required=True,
        type=_case_type,
        metavar=_TYPE_METAVAR,
        help="also queja|consulta|aclaracion|cancelacion, as in the mail command #tipo",
    )
    assigning = cases.add_parser(
        "assign", help="give a case an owner, the agent responsible for it (or none)"
    )
    assigning.add_argument("folio")
    whom = assigning.add_mutually_exclusive_group(required=True)
    whom.add_argument("--to", metavar="ADDRESS", help="an agent's address (agents.addresses)")
    whom.add_argument("--none", action="store_true", help="nobody owns the case any more")
    waiting = cases.add_parser(
        "pending",
        help="wait for the customer's answer (as #pendiente); the case closes unresolved, "
        "and the customer is told, when the wait passes with no word from them",
    )
    waiting.add_argument("folio")
    wait = waiting.add_mutually_exclusive_group()
    wait.add_argument(
        "--days",
        type=_pending_days,
        metavar="N",
        help="how many days (1 to 90; default: cases.pending_days)",
    )
    wait.add_argument("--clear", action="store_true", help="stop waiting (the case stays open)")
    for name, text in (("close", "close a case (no notice)"), ("reopen", "open a case again")):
        cases.add_parser(name, help=text).add_argument("folio")
    outage = cases.add_parser(
        "outage",
        help="make a case one of the reports of an outage followed in a main case (as "
        "#masivo): resolving the main case resolves it",
    )
    outage.add_argument("folio")
    main_case = outage.add_mutually_exclusive_group(required=True)
    main_case.add_argument("--of", metavar="MAIN", help="the main case's folio")
    main_case.add_argument(
        "--clear", action="store_true", help="the case is no report of an outage any more"
    )
    outage.add_argument(
        "--no-notice",
        action="store_true",
        help="do not tell the customer their report is part of a general failure",
    )
    spamming = cases.add_parser(
        "spam",
        help="mark a case spam the filter missed (as #spam): closed with nothing sent to the "
        "customer, out of the report's figures, its customer's new mail set aside",
    )
    spamming.add_argument("folio")
    spamming.add_argument(
        "--undo", action="store_true", help="it is not spam (the case stays closed)"
    )
    merging = cases.add_parser(
        "merge", help="merge a case into another of the same customer (one report written twice)"
    )
    merging.add_argument("folio", help="the case to merge (it is closed; its folio then answers")
    merging.add_argument("--into", required=True, metavar="FOLIO", help="the case that stays")
    merging.add_argument(
        "--no-notice",
        action="store_true",
        help="do not tell the customer which folio follows the report",
    )

    reminding = cases.add_parser(
        "remind",
        help="remind the agents of cases unanswered for escalation.unanswered_hours "
        "(what the daemon does every few minutes)",
    )
    reminding.add_argument("--json", action="store_true")
    customers = commands.add_parser(
        "customers", help="a customer's personal data (right of cancellation)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    forgetting = customers.add_parser(
        "forget",
        help="erase a customer's personal data from their closed cases (LFPDPPP cancellation)",
    )
    forgetting.add_argument("address", metavar="ADDRESS", help="the customer's mail address")
    forgetting.add_argument(
        "--yes", action="store_true", help="erase (without it: only say what would be erased)"
    )
    forgetting.add_argument("--json", action="store_true")
    purging = customers.add_parser(
        "purge",
        help="erase the personal data of every customer inactive for N days "
        "(retention by age, LFPDPPP art. 11)",
    )
    purging.add_argument(
        "--inactive-days",
        type=partial(_row_id, largest=MAX_DAYS),
        required=True,
        metavar="N",
        help="customers with no open case and no activity for N days (at least 1)",
    )
    purging.add_argument(
        "--yes", action="store_true", help="erase (without it: only say what would be erased)"
    )
    purging.add_argument("--json", action="store_true")

    messages = commands.add_parser("messages", help="the ledger of fetched messages")
    msg_actions = messages.add_subparsers(dest="action", required=True, metavar="ACTION")
    msg_list = msg_actions.add_parser("list", help="every fetched message and its disposition")
    msg_list.add_argument(
        "--disposition",
        choices=[d.value for d in Disposition],
        help="only this disposition (e.g. quarantined)",
    )
    msg_list.add_argument("--mailbox", help="only this mailbox")
    _listing_limits(msg_list, "messages fetched", "last")
    msg_list.add_argument("--json", action="store_true")

    msg_show = msg_actions.add_parser(
        "show", help="one message: its ledger row, headers and stored file"
    )
    msg_show.add_argument("uid", type=_row_id)
    msg_show.add_argument("--mailbox", required=True, help="the mailbox it was fetched from")
    msg_show.add_argument("--json", action="store_true")
    msg_retry = msg_actions.add_parser("retry", help="process a quarantined message again")
    retried = msg_retry.add_mutually_exclusive_group(required=True)
    retried.add_argument("uid", nargs="?", type=_row_id, help="the message's UID (with --mailbox)")
    retried.add_argument(
        "--all", action="store_true", help="every quarantined message (of --mailbox, if given)"
    )
    msg_retry.add_argument("--mailbox", help="the mailbox it was fetched from")
    msg_dismiss = msg_actions.add_parser(
        "dismiss", help="set a quarantined message aside for good (kept, not waiting any more)"
    )
    msg_dismiss.add_argument("uid", type=_row_id, help="the message's UID")
    msg_dismiss.add_argument("--mailbox", required=True, help="the mailbox it was fetched from")
    msg_dismiss.add_argument("--reason", default="", help="why, kept in the ledger")
    msg_release = msg_actions.add_parser(
        "release",
        help="process a message set aside as spam as a person's mail (opens its case, answers)",
    )
    msg_release.add_argument("uid", type=_row_id, help="the message's UID")
    msg_release.add_argument("--mailbox", required=True, help="the mailbox it was fetched from")

    outbox = commands.add_parser("outbox", help="notices waiting for, or done with, SMTP")
    out_actions = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    out_list = out_actions.add_parser("list", help="pending, sent and failed notices")
    out_list.add_argument(
        "--status",
        # "pending" is what the issue and people call a queued notice.
        choices=[*(s.value for s in NoticeStatus), "pending"],
        help="only this status ('pending' is queued)",
    )
    _listing_limits(out_list, "notices", "last")
    out_list.add_argument("--json", action="store_true")
    out_retry = out_actions.add_parser("retry", help="queue failed notices again, due now")
    which = out_retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_notice_id, help="the notice id (see outbox list)")
    which.add_argument(
        "--all",
        action="store_true",
        help="every queued notice, and those failed in the last "
        f"{RETRY_ALL_DAYS} days that no bounce refused",
    )

    reporting = commands.add_parser(
        "report", help="complaint figures of the cases opened in a period (default: last month)"
    )
    reporting.add_argument(
        "--from", dest="first", metavar="YYYY-MM-DD", help="first day (in folio.timezone)"
    )
    reporting.add_argument(
        "--to", dest="last", metavar="YYYY-MM-DD", help="last day, included (in folio.timezone)"
    )
    reporting.add_argument("--json", action="store_true")

    canned = commands.add_parser(
        "replies", help="the canned replies agents send with #respuesta NAME"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    canned_list = canned.add_parser(
        "list", help="each canned reply: its languages, and whether shipped or the admin's"
    )
    canned_list.add_argument("--json", action="store_true")
    canned_show = canned.add_parser(
        "show", help="a canned reply as a customer gets it, rendered for a sample case"
    )
    canned_show.add_argument("name", metavar="NAME")
    canned_show.add_argument(
        "--language", choices=("es", "en"), help="the case's language (default notices.language)"
    )
    commands.add_parser("check", help="check the config, database, mailboxes and SMTP")
    status = commands.add_parser("status", help="last polls, errors, backlog and outbox")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--offline", action="store_true", help="do not ask the mailboxes for backlog"
    )

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    db.add_parser("upgrade", help="apply pending migrations")
    db.add_parser("current", help="show the schema revision")
    backup = db.add_parser("backup", help="copy an SQLite database, while it runs, to FILE")
    backup.add_argument("file", metavar="FILE", type=Path, help="a new file (never written over)")
    return parser


def entry() -> NoReturn:
    """The ``mailcase`` command: :func:`main`, then exit without tearing the interpreter down.

    Everything :func:`main` opens it also closes (context managers), and the
    exit handlers still run here (a store's engine disposal, logging's flush);
    then stdout and stderr are flushed and the process ends with ``os._exit``.
    What that skips is the interpreter's teardown, freeing every module and
    object one by one: 0.15 to 0.2 s at the end of each ``mailcase poll``
    (bench/ingest.py), a tenth of a short poll. Tests call :func:`main`.
    """
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # None: started with the stream closed (`mailcase cases list >&-`).
        with suppress(OSError, ValueError):  # a closed pipe (`mailcase cases list | head`)
            if stream is not None:
                stream.flush()
    os._exit(code)


def _tolerant_streams() -> None:
    """Make stdout and stderr print what their encoding lacks as ``?`` instead of failing.

    Under a locale whose charset is not UTF-8 (es_MX.ISO-8859-1) Python encodes the
    streams in it, and the tables' "→" and "…", or a customer's emoji, raised
    UnicodeEncodeError after half a table was printed.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            with suppress(ValueError, io.UnsupportedOperation):  # closed, or not reconfigurable
                stream.reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_streams()
    args = build_parser().parse_args(argv)
    url = ""  # the database's, once the configuration is read
    try:
        settings = load_settings(config_path(args.config))
        url = settings.database.url
        configure("debug" if args.debug else settings.log.level, settings.log.format)
        return _dispatch(args, settings)
    except ConfigError as exc:
        return _fail(args, exc, EXIT_CONFIG)
    except SchemaTooNewError as exc:  # before DatabaseError, of which it is one
        return _fail(args, exc, EXIT_SCHEMA)
    except DatabaseError as exc:
        return _fail(args, exc, EXIT_DATABASE)
    except NotFoundError as exc:
        return _fail(args, exc, EXIT_NOT_FOUND)
    except UsageError as exc:
        return _fail(args, exc, EXIT_CONFIG)
    except MailcaseError as exc:
        return _fail(args, exc, EXIT_FAILURE)
    except SQLAlchemyError as exc:
        # Met after the store was opened (Store.open words its own failures): the
        # server restarted under the command, the disk filled. The driver's words
        # only: no SQL, no parameters (hide_parameters), no URL.
        if is_deadlock(exc):  # the database is fine: the command met another's change
            return _fail(args, exc, EXIT_DATABASE, _COLLIDED)
        if is_unavailable(exc):
            text = failure_text(url, exc)  # a read-only SQLite file: whose, and what to do
            return _fail(args, exc, EXIT_DATABASE, f"database unavailable: {text}")
        return _fail(args, exc, EXIT_FAILURE, f"database error: {error_text(exc)}")
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except OSError as exc:  # a file or directory the admin must fix; named in the message
        if isinstance(exc, BrokenPipeError):  # `mailcase cases list | head`
            return EXIT_OK
        return _fail(args, exc, EXIT_FAILURE)


def _fail(
    args: argparse.Namespace, exc: BaseException, code: int, message: str | None = None
) -> int:
    """Say ``message`` (else ``exc``) in one line on stderr, the traceback too with
    ``--debug``; ``code``."""
    if args.debug:
        traceback.print_exc()
    print(f"mailcase: {exc if message is None else message}", file=sys.stderr)
    return code


def _unknown_area(area: str, settings: Settings) -> str:
    known = ", ".join(sorted(settings.areas)) or "none configured"
    return f"no area named {area!r} in the configuration (areas: {known})"


def _writes(args: argparse.Namespace) -> bool:
    """Whether the command may create or change files of the state (the database, its
    companions, the message store)."""
    command: str = args.command
    if command in ("poll", "run", "customers"):
        return True
    action: str = getattr(args, "action", "")
    read_only = {
        "db": ("current",),
        "cases": ("list", "show", "attachment"),
        "messages": ("list", "show"),
    }
    if command in read_only:
        return action not in read_only[command]
    return command == "outbox" and action == "retry"


def _nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its nearest ancestor that does."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def _refuse_root_over_service_files(settings: Settings) -> None:
    """UsageError when root runs a command that writes, while the state belongs to another
    user (the service's).

    What root creates there (the message store's folders, the database's ``-wal``
    and ``-shm``, the delivery lock) the service cannot write afterwards, and its
    polls fail on them much later, far from the cause. Nextcloud's ``occ`` refuses
    the same way. Root may run everything when root owns the state.
    """
    if os.geteuid() != 0:
        return
    database = sqlite_path(settings.database.url)
    candidates = [settings.storage.directory]
    if database is not None:
        candidates += [database, database.parent]
    for wanted in candidates:
        # A path not made yet is judged by the directory it would be made in: on
        # PostgreSQL, before the service's first start, root made the store itself.
        path = _nearest_existing(wanted)
        try:
            owner = path.stat().st_uid
        except OSError:
            continue
        if owner != 0:
            user = user_name(owner)
            raise UsageError(
                f"{path} belongs to {user}: run this command as that user "
                f"(sudo -u {user} mailcase ...); as root it would leave files there "
                "that the service cannot write"
            )


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if _writes(args):
        _refuse_root_over_service_files(settings)
    if args.command == "db":
        return _db(args, settings)
    if args.command in ("poll", "run"):
        check_secrets(settings)
        check_ca_files(settings)
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "poll": _poll,
        "run": _run,
        "cases": _cases,
        "customers": _customers,
        "messages": _messages,
        "outbox": _outbox,
        "check": _check,
        "replies": _replies,
        "status": _status,
        "report": _report,
    }
    return handlers[args.command](args, settings)


def _db(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "backup":
        from mailcase.backup import backup_database

        done = backup_database(settings.database.url, args.file)
        folded = f"; {done.folded} notices sent meanwhile marked sent in it" if done.folded else ""
        print(
            f"database {done.source} (revision {done.revision or 'none'}) copied to "
            f"{done.target}: {done.size / 1e6:.1f} MB{folded}"
        )
        print(f"back up storage.directory ({settings.storage.directory}) after it")
        return EXIT_OK
    if args.action == "upgrade":
        current, _ = Store.open(settings.database.url, auto_upgrade=True).revisions()
        print(f"database is at revision {current} (latest)")
        return EXIT_OK
    # `db current` shows an out-of-date schema instead of refusing it, as `run` does;
    # a missing SQLite file or a schema newer than the code is refused all the same.
    current, head = Store.schema_state(settings.database.url)
    state = "up to date" if current == head else f"needs upgrade to {head}"
    print(f"database revision {current or 'none'}: {state}")
    return EXIT_OK


def _poll(args: argparse.Namespace, settings: Settings) -> int:
    from mailcase.outbox import DeliveryAlongside, deliver_outbox
    from mailcase.service import (
        Runtime,
        close_stale_cases,
        poll_mailbox,
        record_mailbox_failure,
    )

    rt = Runtime.open(settings)
    failed: list[MailboxError] = []
    skipped: list[str] = []
    with _progress_bars(args.progress) as bars, DeliveryAlongside(rt.store, settings):
        for name in settings.mailboxes:
            try:
                report = poll_mailbox(rt, name, bars(name) if bars else None)
            except MailboxError as exc:
                failed.append(exc)
                record_mailbox_failure(rt, name, str(exc))
            else:
                if report.skipped:
                    skipped.append(name)
    try:
        # A database failure here (a restart after the mailboxes were read) ends the
        # command in main, one line and exit 3; what the mailboxes gave is said first.
        close_stale_cases(rt)
        deliver_outbox(rt.store, settings)
    finally:
        _say_mailbox_trouble(skipped, failed)
    return EXIT_FAILURE if failed else EXIT_OK


def _say_mailbox_trouble(skipped: list[str], failed: list[MailboxError]) -> None:
    """One line on stderr per mailbox that a poll skipped or could not read."""
    # A mailbox another instance is reading is not a failure of this host (exit 0),
    # but it was not read here: said, so that a cron job's mail or a person sees it.
    for name in skipped:
        print(
            f"mailcase: mailbox {name} skipped: another instance is polling it (lease held)",
            file=sys.stderr,
        )
    for failure in failed:
        print(f"mailcase: {failure}", file=sys.stderr)


@contextmanager
def _progress_bars(wanted: bool) -> Iterator[Callable[[str], Callable[[int, int], None]] | None]:
    """Rich progress bars on stderr, one per mailbox; nothing when not a terminal."""
    if not wanted or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:

        def bar(name: str) -> Callable[[int, int], None]:
            task = progress.add_task(name, total=None)

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return update

        yield bar


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from mailcase.daemon import run_daemon
    from mailcase.service import Runtime

    run_daemon(Runtime.open(settings))
    return EXIT_OK


def _replies(args: argparse.Namespace, settings: Settings) -> int:
    """``replies list``: name, languages and source of each canned reply; ``replies show``:
    one rendered for a sample case in the language asked (the text a customer gets below
    the agent's own), said on stderr when it exists only in the other language."""
    from mailcase.commands import reply_key
    from mailcase.notices import sample_context
    from mailcase.replies import available, render_reply

    override = settings.templates.directory
    replies = available(override)
    if args.action == "list":
        rows: list[dict[str, Any]] = [
            {
                "name": r.name,
                "languages": list(r.languages),
                "source": r.source,
                "sources": dict(r.sources),
            }
            for r in replies.values()
        ]
        if args.json:
            _print_json(rows)
        else:
            _print_table(
                [row | {"languages": ", ".join(row["languages"])} for row in rows],
                ["name", "languages", "source"],
            )
        return EXIT_OK
    name = reply_key(args.name)
    language = args.language or settings.notices.language
    rendered = render_reply(name, language, sample_context(settings, language), override=override)
    if rendered is None:
        known = ", ".join(replies) or "none"
        raise NotFoundError(f"no canned reply named {args.name!r} (replies: {known})")
    if rendered.language != language:
        print(
            f"mailcase: {name} has no {language} text: a case in {language} gets the "
            f"{rendered.language} one",
            file=sys.stderr,
        )
    print(rendered.text)
    return EXIT_OK


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from mailcase.health import CheckResult, config_file_warning, run_checks

    config = config_path(args.config)
    config_warning = config_file_warning(config.absolute())
    results = [
        CheckResult("config", True, config_warning or str(config), warning=bool(config_warning)),
        *run_checks(settings),
    ]
    rows = [
        {"check": r.name, "result": _check_result(r.ok, r.warning), "detail": r.detail}
        for r in results
    ]
    # Details whole: a warning is said only here (a failure on stderr as well).
    _print_table(rows, ["check", "result", "detail"], width=2000)
    failures = [r for r in results if not r.ok]
    for failure in failures:
        print(f"mailcase: {failure.name} failed: {failure.detail}", file=sys.stderr)
    return EXIT_FAILURE if failures else EXIT_OK


def _check_result(ok: bool, warning: bool) -> str:
    """A row's result: a warning (a secret readable by every local user) does not fail
    the check (see health._mode_warning), and is said in the row."""
    if not ok:
        return "FAILED"
    return "ok (warning)" if warning else "ok"


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from mailcase.health import status

    report = status(settings, _open_store(settings, create=False), live=not args.offline)
    if args.json:
        _print_json(report)
        return EXIT_OK
    columns = ["mailbox", "last_success_at", "backlog", "consecutive_failures", "last_error"]
    if any(m.get("backlog_error") for m in report["mailboxes"]):
        # Why the backlog is blank: the mailbox could not be asked just now.
        columns.append("backlog_error")
    _print_table(report["mailboxes"], columns, zone=settings.folio.zone)
    print()
    print("outbox: " + ", ".join(f"{k} {v}" for k, v in report["outbox"].items()))
    print("cases:  " + ", ".join(f"{k} {v}" for k, v in report["cases"].items()))
    if report["quarantined"]:
        print(
            f"quarantined: {report['quarantined']} message(s) wait for a person "
            "(mailcase messages list --disposition quarantined)"
        )
    if report["spam_last_7_days"]:
        print(
            f"spam: {report['spam_last_7_days']} message(s) set aside in the last 7 days "
            "(mailcase messages list --disposition spam; messages release UID --mailbox M)"
        )
    return EXIT_OK


def _report_day(option: str, text: str) -> date:
    """``--from``/``--to``: a date that exists, written YYYY-MM-DD; UsageError otherwise."""
    from mailcase.commands import parse_date

    day = parse_date(text.strip())
    # The calendar's first and last years: a period's midnights in UTC may fall outside.
    if day is None or not 2 <= day.year <= 9998:
        raise UsageError(f"{option} {text!r} is not a date (YYYY-MM-DD)")
    return day


def _report(args: argparse.Namespace, settings: Settings) -> int:
    """The complaint figures of the cases opened from ``--from`` to ``--to`` (both included,
    in ``folio.timezone``); without either, the previous calendar month."""
    from mailcase.report import Period, previous_month, report_json, report_lines
    from mailcase.reporting import read_report

    zone = settings.folio.zone
    now = utcnow()
    period = previous_month(now, zone)
    first = _report_day("--from", args.first) if args.first is not None else None
    last = _report_day("--to", args.last) if args.last is not None else None
    if first is not None or last is not None:
        # One end alone: --from up to today, --to from the first day of its month.
        today = " (today)" if last is None else ""
        last = last or now.astimezone(zone).date()
        first = first or last.replace(day=1)
        if first > last:
            raise UsageError(f"--from {first} is after --to {last}{today}")
        period = Period(first, last, zone)
    store = _open_store(settings, create=False)
    with store.read_session() as session:
        report = read_report(
            session,
            period,
            now=now,
            mailboxes=tuple(settings.mailboxes),
            areas=tuple(settings.areas),
        )
    if args.json:
        _print_json(report_json(report))
    else:
        for line in report_lines(report):
            print(visible(line))
    return EXIT_OK


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _open_store(settings: Settings, *, create: bool) -> Store:
    """The configured database, upgraded when ``database.auto_upgrade`` allows it.

    Which commands may create a missing SQLite database (and its directories):
    those that write to it, ``run``, ``poll``, ``db upgrade``, ``cases
    open/resolve/note/visit/route/pending/outage/close/reopen/remind``, ``messages retry`` and
    ``outbox retry`` (``create=True``). The read-only ones, ``db current``,
    ``check``, ``status``, ``report``, ``cases list/show``, ``messages list`` and
    ``outbox list`` (and ``customers forget``: a missing database holds nobody's
    data), refuse a missing file with a sentence naming its path: run as root
    before the service started, they would leave a database the service user
    cannot open, and after a typo in ``database.url`` an empty one.
    """
    return Store.open(
        settings.database.url, auto_upgrade=settings.database.upgrades_itself, create=create
    )


def case_summary(
    case: Case, merged_into: str | None = None, outage: str | None = None
) -> dict[str, Any]:
    """The ``cases list --json`` object of ``case``; ``merged_into``: the folio that answers
    for a merged case (:func:`mailcase.casework.merged_target`), None for the others;
    ``outage``: the folio of the main case of the outage it is a report of, or None."""
    return {
        "folio": case.folio,
        "status": case.status,
        "customer": case.customer,
        "subject": case.subject,
        "mailbox": case.mailbox,
        "area": case.area,
        "type": case.type,  # null: not classified yet
        "owner": case.owner,  # null: nobody owns it
        "pending_until": _iso(case.pending_until),  # null: not waiting for the customer
        "created_at": _iso(case.created_at),
        "updated_at": _iso(case.updated_at),
        "merged_into": merged_into,
        "outage": outage,  # null: no report of an outage
        "spam": case.spam_at is not None,  # marked spam by an agent (#spam, cases spam)
    }


def case_detail(session: Session, case: Case) -> dict[str, Any]:
    """The ``cases show --json`` object: the case and its messages, oldest first."""
    rows = session.exec(
        select(CaseMessage)
        .where(CaseMessage.case_id == case.id)
        # Recorded order, not Date headers: senders' clocks are not to be trusted.
        .order_by(col(CaseMessage.id))
    ).all()
    ids = [m.id for m in rows]
    attachments: dict[int, list[dict[str, Any]]] = {}
    if ids:
        for att in session.exec(
            select(StoredAttachment)
            .where(col(StoredAttachment.case_message_id).in_(ids))
            .order_by(col(StoredAttachment.id))
        ).all():
            attachments.setdefault(att.case_message_id, []).append(
                {
                    "filename": att.filename,
                    "content_type": att.content_type,
                    "size": att.size,
                    "sha256": att.sha256,
                }
            )
    statuses = dict(
        session.exec(select(Notice.id, Notice.status).where(Notice.case_id == case.id)).all()
    )
    merged_into = merged_target(session, case).folio if case.merged_into_id else None
    detail = case_summary(case, merged_into, _outage_folios(session, [case]).get(case.id))
    detail.update(
        outcome=case.outcome,
        cause=case.cause,
        customer_name=case.customer_name,
        channel=case.channel,
        language=case.language,
        area=case.area,
        visit=(
            {"date": case.visit_date.isoformat(), "time": case.visit_time}
            if case.visit_date
            else None
        ),
        related=related_folios(session, case),
        # The reports of the outage this case is the main case of ([]: none), oldest first.
        outage_reports=[r.folio for r in outage_reports(session, case)],
        resolved_at=_iso(case.resolved_at),
        closed_at=_iso(case.closed_at),
        spam_at=_iso(case.spam_at),  # null: not marked spam
    )
    detail["messages"] = [
        {
            "direction": m.direction,
            "kind": m.kind,
            "from": m.from_addr,
            "to": m.to_addrs,
            "subject": m.subject,
            "date": _iso(m.date),
            "message_id": m.message_id,
            "text": m.text,
            "attachments": attachments.get(m.id or 0, []),
            **({"delivery": statuses.get(m.notice_id)} if m.notice_id else {}),
        }
        for m in rows
    ]
    return detail


def _outage_folios(session: Session, cases: Sequence[Case]) -> dict[int | None, str]:
    """For those of ``cases`` that are reports of an outage: their id → the main case's
    folio (one query for a whole listing)."""
    mains = {c.outage_id for c in cases if c.outage_id is not None}
    if not mains:
        return {}
    folios = dict(session.exec(select(Case.id, Case.folio).where(col(Case.id).in_(mains))).all())
    return {c.id: folios[c.outage_id] for c in cases if c.outage_id in folios}


def _case_attachment(args: argparse.Namespace, settings: Settings) -> int:
    """Write the case's N-th file (1-based, in the order `cases show` lists them) to
    ``--output`` (created owner-only, never over an existing file) or to stdout.

    Agents' notices name the files that did not fit as "kept on the case": this is
    how one gets them back, as a helpdesk's web interface would offer a download.
    """
    from mailcase.blobs import BlobStore

    target: Path | None = Path(args.output) if args.output else None
    if target is None and sys.stdout.isatty():
        raise UsageError("give --output FILE: the attachment is not for a terminal")
    store = _open_store(settings, create=False)
    with store.read_session() as session:
        case = case_by_folio(session, _folio(args.folio, settings))
        if case is None:
            raise NotFoundError(f"no case with folio {args.folio}")
        stored = session.exec(
            select(StoredAttachment)
            .join(CaseMessage, col(CaseMessage.id) == col(StoredAttachment.case_message_id))
            .where(CaseMessage.case_id == case.id)
            .order_by(col(CaseMessage.id), col(StoredAttachment.id))
        ).all()
    if args.number > len(stored):
        raise NotFoundError(f"case {case.folio} has {len(stored)} attachment(s), not {args.number}")
    attachment = stored[args.number - 1]
    data = BlobStore(settings.storage.directory).get(attachment.sha256)
    if target is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    _write_new_file(target, data)
    print(visible(f"{target}: {attachment.filename} ({attachment.size} bytes)"), file=sys.stderr)
    return EXIT_OK


def _write_new_file(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target``, a file this call creates (mode 0600), or leave none.

    UsageError for a directory or an existing file (an existing file is the admin's,
    not ours to replace: O_EXCL); OSError naming the file when it cannot be written.
    A write that fails (a full disk: ENOSPC) removes the part written: a truncated
    file looked like the attachment and made the retry fail as "File exists".
    """
    if target.is_dir():
        raise UsageError(f"--output {target} is a directory: give a file name")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--output {target} exists: mailcase never writes over a file") from None
    except OSError as exc:
        raise OSError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        with suppress(OSError):
            target.unlink()
        raise OSError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _operator() -> str:
    """Who ran the command, for the case's record: the login name, else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


# A command's transaction that PostgreSQL rolled back to end a deadlock, twice.
_COLLIDED = (
    "the command collided with another change to the same cases at the same moment "
    "(a deadlock) and changed nothing: run it again"
)


def _case_change_retried(args: argparse.Namespace, settings: Settings) -> int:
    """:func:`_case_change`, run once more when PostgreSQL rolled its transaction back to
    end a deadlock with another session's (an agent's mail on a report of the outage
    being resolved): nothing was changed, printed nor sent then, and the other session
    has its locks now. A second deadlock is reported as one (:data:`_COLLIDED`)."""
    try:
        return _case_change(args, settings)
    except SQLAlchemyError as exc:
        if not is_deadlock(exc):
            raise
    return _case_change(args, settings)


def _case_change(args: argparse.Namespace, settings: Settings) -> int:
    """cases open/resolve/note/visit/route/type/assign/pending/outage/close/reopen/merge/spam:
    the CLI door to casework."""
    from mailcase import casework, merging, outages, waits
    from mailcase.notices import queue_notice
    from mailcase.store import utcnow

    by = f"cli:{_operator()}"
    # What the options say is checked before the database is opened (or created).
    customer = participant = area = ""
    owner: str | None = None
    visit: tuple[date, str | None] | None = None
    if args.action == "open":
        customer = _customer_address(args.customer)
        if customer == FORGOTTEN:
            raise UsageError(f"--customer {customer} stands for a customer whose data was erased")
        if customer in settings.agents.addresses or customer in settings.own_addresses:
            # As a case an agent opens by mail (triage): the acknowledgement would go to
            # the help desk itself, and its replies would read as an agent's.
            raise UsageError(
                f"--customer {customer} is an agent's or one of our own addresses, not a customer's"
            )
        if len(args.name) > MAX_NAME:  # the column's length (Case.customer_name)
            raise UsageError(
                f"--name is {len(args.name)} characters long: a customer's name has at most "
                f"{MAX_NAME}"
            )
    elif args.action == "participant":
        participant = _mail_address("--add", args.add)
    elif args.action == "visit" and not args.cancel:
        visit = _visit_when(args.date, args.time)
    elif args.action == "route":
        area = area_key(args.area)
        if area not in settings.areas:
            raise UsageError(_unknown_area(args.area, settings))
    elif args.action == "assign" and not args.none:
        owner = _agent_address("--to", args.to, settings)
    store = _open_store(settings, create=True)
    watermark = _last_notice_id(store)  # the notices above it are the ones this command queues
    has_customer, visit_cancelled, changed = True, False, True
    merged_into = ""
    target: Case | None = None
    deadline: datetime | None = None
    days = 0
    outage_main = ""
    resolved_reports: list[str] = []
    report_ids: list[int] = []  # whose notices the command sent too (a resolution's reports)
    # The reports with no customer address, by what their customers were not told.
    phone_reports: dict[tuple[str, ...], list[str]] = {}
    with store.transaction() as session:
        if args.action == "open":
            mailbox = args.mailbox or next(iter(settings.mailboxes))
            if mailbox not in settings.mailboxes:
                raise NotFoundError(f"no mailbox named {mailbox} in the configuration")
            case = casework.open_case(
                settings,
                session,
                customer=customer,
                customer_name=args.name,
                subject=args.subject,
                mailbox=mailbox,
                now=utcnow(),
                channel=args.channel,
                language=args.language,
            )
            casework.record(
                session, case, "customer", args.text, from_addr=customer or by, subject=args.subject
            )
            if args.type:  # before the agents' notice, which shows it
                casework.set_type(session, case, args.type, by=by)
            if customer:
                queue_notice(session, settings, case, "acknowledgement", to=customer)
            casework.notify_agents(session, settings, case, "new", text=args.text)
            folio, case_id = case.folio, case.id
        else:
            if args.action == "merge":
                found, target = _merge_pair(session, settings, args.folio, args.into)
            elif args.action == "outage" and args.of:
                # Both locked in id order, as a merge's: a report joining while its main
                # case is resolved (PostgreSQL) waits, and is then refused (resolved).
                found, target = _merge_pair(session, settings, args.folio, args.of)
            else:
                found = case_by_folio(session, _folio(args.folio, settings), for_update=True)
            if found is None:
                raise NotFoundError(f"no case with folio {args.folio}")
            if is_erased(found):
                # Kept for the statistics only: a resolution, a visit or a relay would
                # go nowhere, and a reopened case would take nobody's mail.
                raise UsageError(
                    f"case {found.folio}: its customer's data was erased, it cannot change"
                )
            folio, case_id = found.folio, found.id
            if found.merged_into_id is not None and args.action != "merge":
                into = merging.merged_target(session, found).folio
                raise casework.CaseworkError(f"case {folio} was merged into {into}: work on {into}")
            has_customer = bool(found.customer)
            now_local = utcnow().astimezone(settings.folio.zone)
            visit_was_ahead = casework.visit_cancellable(found, now_local)
            if args.action == "resolve":
                # Its reports' visits ahead, to say which the resolution cancelled (read
                # before they are locked; the main case, locked, keeps reports from
                # joining or leaving meanwhile).
                visits_ahead = {
                    r.id
                    for r in outages.outage_reports(session, found)
                    if casework.visit_cancellable(r, now_local)
                }
                reports = casework.resolve(
                    session, settings, found, args.outcome, args.cause, by=by
                )
                resolved_reports = [r.folio for r in reports]
                report_ids = [r.id for r in reports if r.id is not None]
                for report in (r for r in reports if not r.customer):
                    cancelled = report.id in visits_ahead and not casework.visit_cancellable(
                        report, now_local
                    )
                    changes = casework.untold(
                        resolved=True, booked=False, visit_cancelled=cancelled
                    )
                    phone_reports.setdefault(tuple(changes), []).append(report.folio)
            elif args.action == "note":
                casework.add_note(session, found, args.text, by=by)
            elif args.action == "visit" and args.cancel:
                casework.cancel_visit(session, settings, found, by=by, now_local=now_local)
            elif args.action == "visit":
                assert visit is not None  # read above, for this action
                casework.schedule_visit(
                    session, settings, found, *visit, by=by, now_local=now_local
                )
            elif args.action == "participant":
                casework.add_participant(session, settings, found, participant, by=by)
            elif args.action == "route":
                casework.route(session, settings, found, area, by=by)
            elif args.action == "type":
                changed = casework.set_type(session, found, args.type, by=by)
            elif args.action == "assign":
                # Nobody becomes the owner by running a command: the CLI has no agent
                # identity, so no auto_assign here, only the owner --to names.
                changed = casework.assign(session, settings, found, owner, by=by)
            elif args.action == "pending" and args.clear:
                changed = casework.clear_pending(session, found, by=by)
            elif args.action == "pending":
                days = args.days or settings.cases.pending_days
                deadline = waits.set_pending(session, settings, found, days, by=by)
            elif args.action == "merge":
                if target is None:
                    raise NotFoundError(f"no case with folio {args.into}")
                if is_erased(target):
                    raise UsageError(
                        f"case {target.folio}: its customer's data was erased, nothing merges "
                        "into it"
                    )
                merging.merge(
                    session, settings, found, target, by=by,
                    tell_customer=not args.no_notice, now_local=now_local,
                )  # fmt: skip
                merged_into, case_id = target.folio, target.id
            elif args.action == "outage" and args.clear:
                changed = outages.leave_outage(session, found, by=by)
            elif args.action == "outage":
                if target is None:
                    raise NotFoundError(f"no case with folio {args.of}")
                if is_erased(target):
                    raise UsageError(
                        f"case {target.folio}: its customer's data was erased, it follows no outage"
                    )
                changed = outages.join_outage(
                    session, settings, found, target, by=by, tell_customer=not args.no_notice
                )
                outage_main = target.folio
            elif args.action == "close":
                changed = casework.close(session, settings, found, by=by)
            elif args.action == "spam" and args.undo:
                changed = casework.unmark_spam(session, found, by=by)
            elif args.action == "spam":
                changed = casework.mark_spam(session, settings, found, by=by)
            else:
                changed = casework.reopen(session, found, by=by)
            visit_cancelled = visit_was_ahead and not casework.visit_cancellable(found, now_local)
    if args.action == "open" and args.json:
        _print_json({"folio": folio})
    elif not changed and args.action == "type":  # that type already: nothing was recorded
        print(f"{folio}: already of type {args.type}")
    elif not changed and args.action == "assign":  # that owner already: nothing was recorded
        print(f"{folio}: already owned by {owner}" if owner else f"{folio}: already unowned")
    elif not changed and args.action == "pending":  # --clear of a case not waiting
        print(f"{folio}: not waiting for the customer")
    elif args.action == "pending" and args.clear:
        print(f"{folio}: no longer waiting for the customer")
    elif args.action == "pending":
        assert deadline is not None
        until = deadline.astimezone(settings.folio.zone).strftime("%Y-%m-%d %H:%M %Z")
        print(f"{folio}: waiting for the customer until {until} ({days} day(s))")
    elif not changed and args.action == "outage":  # as it was: nothing was recorded
        if outage_main:
            print(f"{folio}: already a report of the outage {outage_main}")
        else:
            print(f"{folio}: not a report of an outage")
    elif args.action == "outage":
        if outage_main:
            print(f"{folio}: report of the outage {outage_main}")
        else:
            print(f"{folio}: no longer a report of an outage")
    elif args.action == "spam":
        if args.undo:
            print(f"{folio}: spam mark removed" if changed else f"{folio}: not marked spam")
        else:
            print(f"{folio}: marked spam" if changed else f"{folio}: already marked spam")
    elif not changed:  # closed or open already: nothing was recorded
        print(f"{folio}: already {'closed' if args.action == 'close' else 'open'}")
    elif args.action == "type":
        print(f"{folio}: type set to {args.type}")
    elif args.action == "assign":
        print(f"{folio}: owner set to {owner}" if owner else f"{folio}: owner cleared")
    elif merged_into:
        print(f"{folio}: merged into {merged_into}")
    else:
        print(f"{folio}: {args.action} done")
    if resolved_reports:
        print(
            f"{folio}: resolved with it, the reports of its outage: {', '.join(resolved_reports)}"
        )
    words = {"resolve": "resolution", "visit": "visit", "visit_cancelled": "cancelled visit"}
    for missed, folios in phone_reports.items():
        # Their customers have no mail address: nobody told them the failure was corrected,
        # nor that the technician they wait at home for will not come.
        print(
            f"mailcase: reports {', '.join(folios)} have no customer mail address: their "
            f"customers were not told of the {' and the '.join(words[c] for c in missed)}; "
            "call them",
            file=sys.stderr,
        )
    untold = [
        words[change]
        for change in casework.untold(
            resolved=args.action == "resolve",
            booked=args.action == "visit" and not args.cancel,
            visit_cancelled=visit_cancelled,
        )
    ]
    if untold and not has_customer:
        # A phone case: no notice was queued, and the customer must still be told
        # (a visit cancelled by resolving or closing too: nobody must wait at home).
        print(
            f"mailcase: case {folio} has no customer mail address: the customer was not "
            f"told of the {' and the '.join(untold)}; call them",
            file=sys.stderr,
        )
    case_ids = [case_id, *report_ids] if case_id is not None else None
    _deliver_after_commit(store, settings, after=watermark, case_ids=case_ids)
    return EXIT_OK


def _merge_pair(
    session: Session, settings: Settings, folio: str, into: str
) -> tuple[Case | None, Case | None]:
    """The cases ``folio`` and ``into`` name (None for one that does not exist), both
    locked in one statement, in one order: two crossed merges (A into B and B into A at
    once, PostgreSQL) then queue, and the second is refused as merged already, instead
    of one failing with a deadlock. A case that is no report of an outage first, then
    id order: a main case before its reports, as resolving it locks them (a report
    merged into, or made a report of, its own main case while it is resolved)."""
    names = (_folio(folio, settings), _folio(into, settings))
    locked = {
        case.folio: case
        for case in session.exec(
            select(Case)
            .where(col(Case.folio).in_(names))
            .order_by(col(Case.outage_id).is_not(None), col(Case.id))
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
    }
    return locked.get(names[0]), locked.get(names[1])


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


def _cases(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "attachment":
        return _case_attachment(args, settings)
    if args.action == "remind":
        return _cases_remind(args, settings)
    if args.action not in ("list", "show"):
        return _case_change_retried(args, settings)
    store = _open_store(settings, create=False)
    with store.read_session() as session:
        if args.action == "list":
            query = select(Case).order_by(col(Case.created_at).desc(), col(Case.id).desc())
            if args.status:
                query = query.where(Case.status == args.status)
            if args.customer:
                # Spelt as stored (mailcase.inbound.canonical_address).
                query = query.where(Case.customer == _customer_address(args.customer))
            if args.area:
                if area_key(args.area) not in settings.areas:
                    # Usage (exit 2), as for `cases route`: exit 4 is a folio or
                    # message that does not exist.
                    raise UsageError(_unknown_area(args.area, settings))
                query = query.where(Case.area == area_key(args.area))
            if args.type:
                query = query.where(Case.type == args.type)
            if args.owner:
                owned = _owner_filter(args.owner)
                query = query.where(
                    col(Case.owner).is_(None) if owned is None else Case.owner == owned
                )
            if args.pending and args.unanswered:
                # Disjoint by definition: a case waiting for its customer is not unanswered.
                raise UsageError("--pending and --unanswered list different cases: give one")
            if args.pending:
                query = query.where(
                    Case.status == CaseStatus.OPEN, col(Case.pending_until).is_not(None)
                )
            if args.outage:
                main = case_by_folio(session, _folio(args.outage, settings))
                if main is None:
                    raise NotFoundError(f"no case with folio {args.outage}")
                query = query.where(col(Case.outage_id) == main.id)
                args.outage_id = main.id  # for --unanswered, which filters what it reads
            if args.unanswered:
                found = _unanswered(session, args)
            else:
                found = list(reversed(_limited(session, query, args, "cases")))
            outages = _outage_folios(session, found)
            items = [
                case_summary(
                    c,
                    merged_target(session, c).folio if c.merged_into_id else None,
                    outages.get(c.id),
                )
                for c in found
            ]
            if args.unanswered:
                # Since when the customer waits (their latest message's arrival), the
                # rows' order: what a script sorting or alerting on the wait needs.
                business = settings.escalation.clock == "business"
                calendar = settings.business_calendar() if business else None
                now = utcnow()
                for item, c in zip(items, found, strict=True):
                    item["waiting_since"] = _iso(c.last_customer_at)
                    if calendar is not None and c.last_customer_at is not None:
                        # Open hours waited so far: what the reminder counts.
                        waited = calendar.open_time(c.last_customer_at, now)
                        item["waiting_business_hours"] = round(waited.total_seconds() / 3600, 2)
            if args.json:
                _print_json(items)
            else:
                columns = [
                    "folio",
                    "status",
                    "customer",
                    "mailbox",
                    "area",
                    "owner",
                    # When each closes unanswered: what a desk working the list needs.
                    *(["pending_until"] if args.pending else []),
                    "created_at",
                    "subject",
                ]
                _print_table(items, columns, zone=settings.folio.zone)
            return EXIT_OK
        case = case_by_folio(session, _folio(args.folio, settings))
        if case is None:
            raise NotFoundError(f"no case with folio {args.folio}")
        detail = case_detail(session, case)
    if args.json:
        _print_json(detail)
    else:
        _print_case(detail, settings.folio.zone)
    return EXIT_OK


def _customers(args: argparse.Namespace, settings: Settings) -> int:
    """``customers forget ADDRESS [--yes]``: erase what is kept of a customer's address
    (mailcase.erasure); without ``--yes`` say what would be erased and change nothing.
    ``customers purge --inactive-days N [--yes]``: the same for every customer inactive
    for N days (mailcase.retention)."""
    if args.action == "purge":
        return _purge(args, settings)
    from mailcase.erasure import ErasureRefused, erase

    address = _customer_address(args.address)
    if not address:
        raise UsageError("customers forget needs the customer's mail address")
    store = _open_store(settings, create=False)
    insiders = settings.own_addresses | frozenset(settings.agents.addresses)
    try:
        done = erase(
            store,
            settings.storage.directory,
            address,
            insiders=insiders,
            by=f"cli:{_operator()}",
            dry_run=not args.yes,
        )
    except ErasureRefused as exc:
        raise UsageError(str(exc)) from exc
    finally:
        store.dispose()
    if args.json:
        _print_json(
            {
                "cases": list(done.folios),
                "messages": done.messages,
                "files": done.files,
                "notices": done.notices,
                "erased": done.erased,
            }
        )
    elif not done.anything:
        print("nothing of that address is stored: nothing to erase")
    else:
        counts = f"{done.messages} message(s), {done.files} file(s), {done.notices} notice(s)"
        folios = ", ".join(done.folios) or "none"
        verb = "erased" if done.erased else "would erase"
        print(f"{verb} the customer's data of {len(done.folios)} case(s): {folios} ({counts})")
        if done.participations:
            print(f"{verb} the address as a participant of: {', '.join(done.participations)}")
        if not done.erased:
            print("nothing was changed: run again with --yes to erase")
    if done.files_left:
        print(
            f"mailcase: {len(done.files_left)} file(s) of the erased cases could not be removed "
            f"from {settings.storage.directory} ({done.files_left[0]} ...): the next "
            "customers forget tries them again, or remove them by hand",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    """``customers purge --inactive-days N [--yes]``: the addresses are printed (the
    admin's record of whose data was cancelled), never logged."""
    from mailcase.retention import purge_inactive

    store = _open_store(settings, create=False)
    try:
        done = purge_inactive(
            store,
            settings.storage.directory,
            args.inactive_days,
            insiders=settings.own_addresses | frozenset(settings.agents.addresses),
            by=f"cli:{_operator()}",
            dry_run=not args.yes,
        )
    finally:
        store.dispose()
    who, loose = done.customers, done.loose
    erased = who.erased or (args.yes and bool(loose.messages or loose.notices))
    if args.json:
        _print_json(
            {
                "customers": len(who.customers),
                "addresses": list(who.customers),
                "cases": list(who.folios),
                "messages": who.messages,
                "files": who.files,
                "notices": who.notices,
                "skipped": who.skipped,
                "loose_messages": loose.messages,
                "loose_notices": loose.notices,
                "loose_files": loose.files,
                "erased": erased,
            }
        )
    else:
        verb = "erased" if args.yes else "would erase"
        if who.customers:
            counts = f"{who.messages} message(s), {who.files} file(s), {who.notices} notice(s)"
            print(
                f"{verb} the data of {len(who.customers)} customer(s) inactive for "
                f"{args.inactive_days} days: {len(who.folios)} case(s) ({counts})"
            )
            for address in who.customers:
                print(f"  {address}")
            print(f"cases: {', '.join(who.folios) or 'none'}")
        else:
            print(f"no customer has been inactive for {args.inactive_days} days")
        if loose.messages or loose.notices:
            print(
                f"{verb} {loose.messages} message(s) of no case and {loose.notices} notice(s) "
                f"of no case older than that ({loose.files} file(s))"
            )
        if who.skipped:
            print(
                f"{who.skipped} customer(s) skipped: an open case, a queued notice or recent mail"
            )
        if not args.yes and (who.customers or loose.messages or loose.notices):
            print("nothing was changed: run again with --yes to erase")
    if done.files_left:
        print(
            f"mailcase: {len(done.files_left)} file(s) of the erased data could not be removed "
            f"from {settings.storage.directory} ({done.files_left[0]} ...): the next "
            "customers purge or forget tries them again, or remove them by hand",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _unanswered(session: Session, args: argparse.Namespace) -> list[Case]:
    """``cases list --unanswered``: the cases unanswered now (:mod:`mailcase.reminders`),
    the longest wait first, with the listing's other filters, within its limit (said on
    stderr when it left some out). Reads the open cases only, never the whole history."""
    from mailcase.reminders import unanswered_cases

    customer = _customer_address(args.customer) if args.customer else ""
    area = area_key(args.area) if args.area else ""
    owner = _owner_filter(args.owner) if args.owner else ""
    found = [
        c
        for c in unanswered_cases(session)
        if (not args.status or c.status == args.status)
        and (not customer or c.customer == customer)
        and (not area or c.area == area)
        and (not args.type or c.type == args.type)
        and (not args.owner or c.owner == owner)
        and (not args.outage or c.outage_id == args.outage_id)
    ]
    limit = len(found) if args.all else args.limit or DEFAULT_LIMIT
    if len(found) > limit:
        print(
            f"mailcase: showing the {limit} longest-waiting cases; --limit N or --all for more",
            file=sys.stderr,
        )
    return found[:limit]


def _cases_remind(args: argparse.Namespace, settings: Settings) -> int:
    """``cases remind``: the daemon's reminder check, once; prints the folios reminded
    (nothing when none was, so that cron mails only news)."""
    from mailcase.reminders import remind_unanswered

    store = _open_store(settings, create=True)
    watermark = _last_notice_id(store)
    folios = remind_unanswered(store, settings)
    if args.json:
        _print_json(folios)
    else:
        for folio in folios:
            print(folio)
    if folios:
        _deliver_after_commit(store, settings, after=watermark)
    return EXIT_OK


def ledger_row(entry: LedgerEntry, folio: str | None) -> dict[str, Any]:
    return {
        "mailbox": entry.mailbox,
        "uid": entry.uid,
        "uidvalidity": entry.uidvalidity,
        "message_id": entry.message_id,
        "disposition": entry.disposition,
        "folio": folio,
        "reason": entry.reason,
        "received_at": _iso(entry.received_at),
        "ingested_at": _iso(entry.ingested_at),
    }


def _messages(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "retry":
        return _messages_retry(args, settings)
    if args.action == "dismiss":
        return _messages_dismiss(args, settings)
    if args.action == "release":
        return _messages_release(args, settings)
    if args.action == "show":
        return _message_show(args, settings)
    store = _open_store(settings, create=False)
    with store.read_session() as session:
        query = (
            select(LedgerEntry, Case.folio)
            .join(Case, col(LedgerEntry.case_id) == col(Case.id), isouter=True)
            .order_by(col(LedgerEntry.id).desc())
        )
        if args.disposition:
            query = query.where(LedgerEntry.disposition == args.disposition)
        if args.mailbox:
            # Mailbox names are lower case (config.py); "Contacto" listed nothing, exit 0.
            mailbox = args.mailbox.strip().lower()
            if (
                mailbox not in settings.mailboxes
                and session.exec(
                    select(LedgerEntry.id).where(LedgerEntry.mailbox == mailbox).limit(1)
                ).first()
                is None
            ):
                # Usage (exit 2), as `cases list --area`. A mailbox taken out of the
                # configuration still lists what was fetched from it.
                known = ", ".join(sorted(settings.mailboxes)) or "none configured"
                raise UsageError(
                    f"no mailbox named {args.mailbox!r} in the configuration or the ledger "
                    f"(mailboxes: {known})"
                )
            query = query.where(LedgerEntry.mailbox == mailbox)
        rows = _limited(session, query, args, "messages")
        items = [ledger_row(entry, folio) for entry, folio in rows]
    if args.json:
        _print_json(items)
    else:
        columns = ["mailbox", "uid", "received_at", "disposition", "folio", "message_id", "reason"]
        _print_table(items, columns, zone=settings.folio.zone)
    return EXIT_OK


def _messages_dismiss(args: argparse.Namespace, settings: Settings) -> int:
    """``messages dismiss UID --mailbox M``: a quarantined message set aside for good."""
    from mailcase.service import Runtime, dismiss_message

    if args.mailbox not in settings.mailboxes:
        raise NotFoundError(f"no mailbox named {args.mailbox} in the configuration")
    rt = Runtime.open(settings)
    try:
        dismiss_message(rt, args.mailbox, args.uid, by=f"cli:{_operator()}", why=args.reason)
    finally:
        rt.store.dispose()
    print(f"message {args.uid} of mailbox {args.mailbox}: dismissed")
    return EXIT_OK


def _messages_release(args: argparse.Namespace, settings: Settings) -> int:
    """``messages release UID --mailbox M``: the spam filter was wrong about a message."""
    from mailcase.service import Runtime, release_message

    if args.mailbox not in settings.mailboxes:
        raise NotFoundError(f"no mailbox named {args.mailbox} in the configuration")
    rt = Runtime.open(settings)
    watermark = _last_notice_id(rt.store)
    disposition = release_message(rt, args.mailbox, args.uid, by=f"cli:{_operator()}")
    print(f"message {args.uid} of mailbox {args.mailbox}: {disposition}")
    # Its acknowledgement goes out now, as after `messages retry`.
    _deliver_after_commit(rt.store, settings, after=watermark)
    return EXIT_OK


def _messages_retry(args: argparse.Namespace, settings: Settings) -> int:
    """``messages retry UID --mailbox M``, or ``--all``: every quarantined message, oldest
    first; one that fails again stays quarantined (and is said), the rest go on."""
    from mailcase.service import Runtime, quarantined_messages, retry_message

    if args.mailbox is not None and args.mailbox not in settings.mailboxes:
        raise NotFoundError(f"no mailbox named {args.mailbox} in the configuration")
    if not args.all and args.mailbox is None:
        raise UsageError("messages retry UID needs --mailbox: the mailbox it was fetched from")
    rt = Runtime.open(settings)
    watermark = _last_notice_id(rt.store)
    targets = quarantined_messages(rt, args.mailbox) if args.all else [(args.mailbox, args.uid)]
    failed = 0
    for mailbox, uid in targets:
        try:
            disposition = retry_message(rt, mailbox, uid)
        except MailcaseError as exc:
            if not args.all:
                raise
            failed += 1  # stays quarantined; the others are still tried
            print(f"mailcase: message {uid} of mailbox {mailbox}: {exc}", file=sys.stderr)
            continue
        print(f"message {uid} of mailbox {mailbox}: {disposition}")
    if args.all and not targets:
        print("no quarantined messages")
    # As after a poll: what the messages caused (their acknowledgements) goes out
    # now, not at the next poll; what cannot be sent stays queued.
    _deliver_after_commit(rt.store, settings, after=watermark)
    return EXIT_FAILURE if failed else EXIT_OK


def _message_show(args: argparse.Namespace, settings: Settings) -> int:
    """``messages show UID --mailbox M``: what an admin needs to judge a quarantined
    message without a mail client: who sent it, its subject, and its stored file."""
    from mailcase.blobs import BlobStore, read_header
    from mailcase.inbound import header_summary, origin_of

    store = _open_store(settings, create=False)
    with store.read_session() as session:
        row = session.exec(
            select(LedgerEntry, Case.folio)
            .join(Case, col(LedgerEntry.case_id) == col(Case.id), isouter=True)
            .where(LedgerEntry.mailbox == args.mailbox, LedgerEntry.uid == args.uid)
            .order_by(col(LedgerEntry.id).desc())
        ).first()
        if row is None:
            raise NotFoundError(f"no message {args.uid} of mailbox {args.mailbox} in the ledger")
        entry, folio = row
        item = ledger_row(entry, folio)
    # No stored copy: its customer's data was erased (mailcase.erasure).
    path = (
        BlobStore.path_in(settings.storage.directory, entry.raw_sha256)
        if entry.raw_sha256
        else None
    )
    # Always in --json (null: the stored file was read), so a script need not test for it.
    item["stored"] = None
    head = b""
    try:
        if path is not None:
            head = read_header(path)
        else:
            item["stored"] = "erased"
    except OSError as exc:
        item["stored"] = f"cannot be read: {exc.strerror or exc}"
    headers = header_summary(head) if head else {}
    written = origin_of(head)[1] if head else None
    item |= {
        "from": headers.get("from", ""),
        "to": headers.get("to", ""),
        "subject": headers.get("subject", ""),
        # As `cases show` gives a message's date (ISO 8601, UTC; null when the
        # header is missing or not a date), and the header's own words beside it.
        "date": written.astimezone(UTC).isoformat() if written else None,
        "date_header": headers.get("date", ""),
        "header_message_id": headers.get("message-id", ""),
        "size": entry.size,
        "raw_sha256": entry.raw_sha256 or None,
        "raw_path": str(path) if path is not None else None,
    }
    if args.json:
        _print_json(item)
    else:
        zone = settings.folio.zone
        for key in ("received_at", "ingested_at", "date"):  # as every table shows times
            item[key] = _local(item[key], zone)
        if item["stored"] is None:  # the table says only what went wrong
            del item["stored"]
        width = max(len(key) for key in item)
        for key, value in item.items():
            print(visible(f"{key.ljust(width)}  {'' if value is None else value}"))
    return EXIT_OK


def notice_row(notice: Notice, folio: str | None) -> dict[str, Any]:
    return {
        "id": notice.id,
        "folio": folio,
        "kind": notice.kind,
        "status": notice.status,
        "to": notice.rcpt_to,
        "from": notice.mail_from,
        "message_id": notice.message_id,
        "attempts": notice.attempts,
        "next_attempt_at": _iso(notice.next_attempt_at) if notice.status == "queued" else None,
        "last_error": notice.last_error or None,
        "created_at": _iso(notice.created_at),
        "sent_at": _iso(notice.sent_at),
    }


def _outbox(args: argparse.Namespace, settings: Settings) -> int:
    from mailcase.outbox import fold_sent_log, requeue

    store = _open_store(settings, create=args.action == "retry")
    if args.action == "retry":
        # What a delivery run sent and recorded in the sent log (SQLite) is not to be
        # counted, nor put back, as waiting: it is marked sent first.
        fold_sent_log(store)
    # `outbox list` reads only: no write lock (see Store.read_session).
    with store.transaction() if args.action == "retry" else store.read_session() as session:
        if args.action == "retry":
            if args.all:
                # Not every failure ever: years of bounced acknowledgements would go
                # out again to addresses that refused them (fifth review round).
                # From the start of its last retry window (a notice retried by ID
                # after a long outage failed recently, though made long ago).
                since = utcnow() - timedelta(days=RETRY_ALL_DAYS)
                window = sa.func.coalesce(col(Notice.queued_at), col(Notice.created_at))
                failed = sa.and_(
                    col(Notice.status) == NoticeStatus.FAILED,
                    sa.not_(col(Notice.last_error).startswith("bounced")),
                )
                ids = session.exec(
                    select(Notice.id).where(
                        sa.or_(
                            col(Notice.status) == NoticeStatus.QUEUED,
                            sa.and_(failed, window >= since),
                        )
                    )
                ).all()
                older = session.exec(
                    select(sa.func.count()).select_from(Notice).where(failed, window < since)
                ).one()
                if older:
                    print(
                        f"mailcase: {older} failed notice(s) older than {RETRY_ALL_DAYS} days "
                        "left out: `mailcase outbox retry ID` for each one to send",
                        file=sys.stderr,
                    )
            else:
                if session.get(Notice, args.id) is None:
                    raise NotFoundError(f"no notice with id {args.id}")
                ids = [args.id]
            count = requeue(session, [i for i in ids if i is not None])
            print(f"{count} notice(s) queued for delivery")
            return EXIT_OK
        query = (
            select(Notice, Case.folio)
            .join(Case, col(Notice.case_id) == col(Case.id), isouter=True)
            # Not the rendered message (attachments included): a listing needs none.
            .options(defer(Notice.raw))  # type: ignore[arg-type]
            .order_by(col(Notice.id).desc())
        )
        if args.status:
            status = NoticeStatus.QUEUED if args.status == "pending" else args.status
            query = query.where(Notice.status == status)
        rows = _limited(session, query, args, "notices")
        items = [notice_row(n, folio) for n, folio in rows]
    if args.json:
        _print_json(items)
    else:
        columns = [
            "id",
            "status",
            "kind",
            "folio",
            "to",
            "attempts",
            "next_attempt_at",
            "last_error",
        ]
        _print_table(items, columns, zone=settings.folio.zone)
    return EXIT_OK


def _print_json(value: Any) -> None:
    # print(), not json.dump: with stdout closed (`>&-`, sys.stdout is None) it prints nothing.
    print(json.dumps(value, ensure_ascii=False, indent=2))


T = TypeVar("T")


DEFAULT_LIMIT = 100  # rows a listing shows unless --limit N or --all says otherwise
RETRY_ALL_DAYS = 7  # `outbox retry --all` leaves failures older than this to `retry ID`


def _listing_limits(parser: argparse.ArgumentParser, rows: str, which: str) -> None:
    """``--limit N`` / ``--all`` for a listing: without either, the {which} DEFAULT_LIMIT.

    A listing read the whole table into memory before printing its first line:
    `outbox list` took 37 s and 1.7 GB at 200,000 cases (fifth review round).
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--limit",
        type=_limit,
        metavar="N",
        help=f"only the {which} N {rows} (default {DEFAULT_LIMIT})",
    )
    group.add_argument("--all", action="store_true", help=f"every one of the {rows}")


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


MAX_LIMIT = 10**9  # `--limit`: more rows than any listing prints, far below SQLite's 2**63
MAX_ROW_ID = 2**63 - 1  # the largest integer SQLite and PostgreSQL's BIGINT hold


def _positive(text: str) -> int:
    """argparse's type for a count: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _limit(text: str) -> int:
    """argparse's type for ``--limit``: a whole number from 1 to :data:`MAX_LIMIT`.

    A number the database cannot hold (``--limit 9223372036854775807``) ended the
    command with an OverflowError traceback."""
    value = _positive(text)
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_LIMIT}")
    return value


def _row_id(text: str, largest: int = MAX_ROW_ID) -> int:
    """argparse's type for a message's UID: a whole number from 1 to :data:`MAX_ROW_ID`,
    the largest the database holds (an IMAP UID is at most 2**32 - 1, RFC 3501); with
    ``largest``, any whole number from 1 to it (``--inactive-days``).
    Larger ended the command with an OverflowError traceback; a number in range that
    names nothing is the command's "no message"/"no notice", exit 4."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= largest:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {largest}")
    return value


MAX_NOTICE_ID = 2**31 - 1  # notices.id is an INTEGER: PostgreSQL refused more ("out of range")


def _notice_id(text: str) -> int:
    """argparse's type for a notice's id: as :func:`_row_id`, at most :data:`MAX_NOTICE_ID`."""
    return _row_id(text, MAX_NOTICE_ID)


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


# Lines of each message's text that ``cases show`` prints (``--json`` gives all).
SHOWN_LINES = 40


def _is_time(key: str) -> bool:
    """Whether a listing's or a case's ``key`` holds a time (shown in local time)."""
    return key.endswith("_at") or key == "pending_until"


def _print_case(detail: dict[str, Any], zone: ZoneInfo) -> None:
    keys = (
        "folio",
        "status",
        "merged_into",
        "outage",
        "outcome",
        "cause",
        "area",
        "type",
        "owner",
        "pending_until",
        "visit",
        "related",
        "outage_reports",
        "customer",
        "name",  # customer_name: all a phone case may have of its customer
        "mailbox",
        "channel",
        "language",
        "subject",
        "created_at",
        "resolved_at",
        "closed_at",
        "spam_at",
    )
    for key in keys:
        value = detail.get("customer_name" if key == "name" else key) or None
        if _is_time(key):
            value = _local(value, zone)
        elif key == "visit" and value:
            value = " ".join(filter(None, (value["date"], value["time"])))
        elif key in ("related", "outage_reports"):
            value = ", ".join(value or ()) or None
        print(visible(f"{key + ':':12} {value if value is not None else '-'}"))
    number = 0
    for m in detail["messages"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        print(
            visible(
                f"\n{arrow} {_local(m['date'], zone) or '-'}  {m['kind']}  {m['from']} → {m['to']}"
            )
        )
        print(visible(f"   {m['subject']}"))
        lines = (m["text"] or "").splitlines()
        for line in lines[:SHOWN_LINES]:
            print(visible(f"   | {line}"))
        if len(lines) > SHOWN_LINES:
            # Said, not silent: a reader must not take the cut for the end of the message.
            print(
                f"   | [… {len(lines) - SHOWN_LINES} more lines: "
                f"mailcase cases show {detail['folio']} --json has the whole text]"
            )
        for att in m["attachments"]:
            number += 1  # as `mailcase cases attachment FOLIO N` takes it
            kind, size = att["content_type"], att["size"]
            print(visible(f"   [attachment {number}] {att['filename']} ({kind}, {size} bytes)"))


if __name__ == "__main__":
    raise SystemExit(main())
