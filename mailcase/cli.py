"""The command line: the parser, the entry point and exit codes, and the small commands.

The command groups' handlers live in :mod:`mailcase.cli_cases`,
:mod:`mailcase.cli_mail` and :mod:`mailcase.cli_customers`, and what they share
with this module in :mod:`mailcase.cli_common`; these modules are the only ones
that print, and this one the only one that exits.

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
import io
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy.exc import SQLAlchemyError

from mailcase import __version__
from mailcase.cli_cases import _cases
from mailcase.cli_common import (
    DEFAULT_LIMIT,
    UsageError,
    _open_store,
    _print_json,
    _print_table,
    visible,
)
from mailcase.cli_customers import _customers
from mailcase.cli_mail import RETRY_ALL_DAYS, _messages, _outbox
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
from mailcase.logs import configure
from mailcase.models import CaseStatus, Disposition, NoticeStatus
from mailcase.store import (
    Store,
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
        print(
            f"back up storage.directory ({settings.storage.directory}) after it, with no "
            "erasure in between (customers forget or purge, the daemon's purge)"
        )
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


# A command's transaction that PostgreSQL rolled back to end a deadlock, twice.
_COLLIDED = (
    "the command collided with another change to the same cases at the same moment "
    "(a deadlock) and changed nothing: run it again"
)


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


if __name__ == "__main__":
    raise SystemExit(main())
