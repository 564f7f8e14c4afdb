"""``mailcase check`` and ``mailcase status``: is everything reachable, and how is it going.

``run_checks`` touches every peer the daemon needs (database, each mailbox,
the SMTP server) and sends nothing; each check is one row with a one-line
detail that never contains a secret. ``status`` reads what the daemon
recorded (last successful poll, errors, outbox) and, unless told not to, asks
each mailbox how many messages wait above the checkpoint.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, func, select

from mailcase.config import MailboxSettings, Settings, check_secrets
from mailcase.errors import ConfigError, DatabaseError, DeliveryError, MailboxError
from mailcase.imap import ImapMailbox
from mailcase.models import Case, Checkpoint, Disposition, LedgerEntry, Notice
from mailcase.notices import sample_context
from mailcase.render import compile_error, environment, shipped_templates
from mailcase.replies import check_replies, is_reply_template
from mailcase.smtp import SmtpConnection
from mailcase.store import Store, utcnow


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of ``mailcase check``. A ``warning`` is ok (the exit status stays 0) but
    worth a person's look: printed as WARNING, and on stderr."""

    name: str
    ok: bool
    detail: str
    warning: bool = False


def _guard(name: str, check: Callable[[], str]) -> CheckResult:
    """``check``'s detail, or its failure's; the row already names the check, the detail never."""
    try:
        return CheckResult(name, True, check())
    except (MailboxError, DeliveryError, DatabaseError, ConfigError) as exc:
        # A mailbox's errors start with its name ("mailbox info: login refused"),
        # which the row and `mailcase: mailbox info failed: ...` already say.
        return CheckResult(name, False, str(exc).removeprefix(f"{name}: "))
    except (OSError, SQLAlchemyError) as exc:
        return CheckResult(name, False, f"{type(exc).__name__}: {exc}")


def check_database(settings: Settings) -> str:
    """The schema revision; never creates or upgrades the database (`db upgrade`'s or the
    daemon's job). A missing SQLite file and a schema newer than the code fail the check."""
    current, head = Store.schema_state(settings.database.url)
    if current == head:
        return f"schema at revision {current} (latest)"
    if settings.database.upgrades_itself:
        return f"schema at revision {current or 'none'}; upgrades itself to {head} at start"
    raise DatabaseError(
        f"schema at revision {current or 'none'} but this mailcase needs {head}: "
        "run `mailcase db upgrade`"
    )


def check_secret_files(settings: Settings) -> str:
    """Every secret file and credential is readable now (as ``run`` and ``poll`` require)."""
    check_secrets(settings)
    return "every secret file and credential is readable"


# Keys whose value in the config file is a secret (the file is then as secret as it).
_INLINE_SECRET_KEYS = frozenset({"password", "client_secret", "refresh_token", "signing_secret"})


def config_file_warning(config: Path) -> str | None:
    """A sentence when the config file may be written by every local user (``o+w``: they
    could point mailcase at their own servers), or read by every one while it holds a
    secret inline (a password, client secret, refresh token, signing secret, or the
    database's password in ``database.url``); else None. See :func:`_mode_warning`."""
    return _mode_warning("config file", config, readable_matters=_holds_inline_secret(config))


def secret_file_warnings(settings: Settings) -> list[str]:
    """A sentence per ``password_file``, ``client_secret_file``, ``refresh_token_file`` and
    ``agents.signing_secret_file`` that every local user may read or write. systemd
    credentials are systemd's to guard."""
    found = (_mode_warning(key, path) for key, path in _secret_files(settings))
    return [warning for warning in found if warning is not None]


def _mode_warning(what: str, path: Path, *, readable_matters: bool = True) -> str | None:
    """Why ``path`` is open to every local user, with the remedy; None when it is not.

    A warning, not a failure, by choice: fetchmail and msmtp refuse such a file
    and OpenSSH such a key, but ``run`` and ``poll`` start with them (an upgrade
    must not stop a working service), and ``check`` says what ``run`` would do:
    its row stays "ok", marked "(warning)", and the exit status 0. A file that
    cannot be looked at is the ``secrets`` row's failure, not a warning here.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    readable = readable_matters and bool(mode & stat.S_IROTH)
    writable = bool(mode & stat.S_IWOTH)
    if not (readable or writable):
        return None
    how = " and ".join(word for word, on in (("readable", readable), ("writable", writable)) if on)
    return (
        f"{what} {path} is {how} by every local user (mode {mode:04o}): "
        f"chmod 0640 {path}, owned by root, group mailcase"
    )


def _secret_files(settings: Settings) -> Iterator[tuple[str, Path]]:
    """(the key, its file) for every configured secret file."""
    sections: list[tuple[str, Any]] = [(f"mailboxes.{n}", m) for n, m in settings.mailboxes.items()]
    sections += [("smtp", settings.smtp), ("agents", settings.agents)]
    keys = ("password_file", "client_secret_file", "refresh_token_file", "signing_secret_file")
    for prefix, section in sections:
        for key in keys:
            path = getattr(section, key, None)
            if path is not None:
                yield f"{prefix}.{key}", path


def _holds_inline_secret(config: Path) -> bool:
    """Whether the config file itself holds a secret (not one from the environment)."""
    try:
        with config.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    database = data.get("database")
    url = database.get("url") if isinstance(database, dict) else None
    if isinstance(url, str):
        try:
            if sa.make_url(url).password:
                return True
        except (SQLAlchemyError, ValueError):
            pass  # make_engine says what is wrong with it
    return _has_secret_key(data)


def _has_secret_key(table: dict[str, Any]) -> bool:
    for key, value in table.items():
        if key in _INLINE_SECRET_KEYS and value:
            return True
        if isinstance(value, dict) and _has_secret_key(value):
            return True
    return False


def check_storage(settings: Settings) -> str:
    """``storage.directory`` is a writable directory, or can be created at start.

    Creates nothing (``run`` does): it looks for the directory, else its nearest
    existing parent, as ``run`` would find them.
    """
    directory = settings.storage.directory
    key = f"storage.directory {directory}"
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"{key} is not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"{key} is not writable by this user")
        return f"{directory} is a writable directory"
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} cannot be created: {parent} is not writable by this user")
    return f"{directory} does not exist yet; it is created at start"


def check_templates(settings: Settings) -> str:
    """``templates.directory``, when set, is a directory whose every template compiles and
    overrides one of mailcase's; and each notice's text template compiles.

    A syntax error in an override would fail every poll that needs it (the
    message is not quarantined: :class:`~mailcase.errors.TemplateError`), and
    a misspelt file name is never used; both are said here, naming the file.
    """
    directory = settings.templates.directory
    shipped = shipped_templates()
    known = {p.relative_to(shipped).as_posix() for p in shipped.rglob("*.j2")}
    env = environment(directory)
    overrides: list[str] = []
    if directory is not None:
        key = f"templates.directory {directory}"
        if not directory.is_dir():
            raise ConfigError(f"{key} is not a directory")
        overrides = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.j2"))
        # An admin's own canned replies (replies/<language>/NAME.txt.j2) are new files, not
        # overrides; the "replies" row renders them.
        unknown = [n for n in overrides if n not in known and not is_reply_template(n)]
        if unknown:
            raise ConfigError(
                f"{key} holds {', '.join(unknown)}, which mailcase never uses "
                "(the names are <language>/<kind>.txt.j2 or .html.j2, as shipped, and "
                "replies/<language>/NAME.txt.j2, NAME in lower-case letters, digits and -)"
            )
    for name in [*overrides, *sorted(known)]:
        if is_reply_template(name):
            continue  # the "replies" row's: one row per broken file
        problem = compile_error(env, name)
        if problem is not None:
            raise ConfigError(problem)
    if not overrides:
        return "the shipped templates"
    return f"{len(overrides)} of {directory} override the shipped ones, and compile"


def check_canned_replies(settings: Settings) -> str:
    """Every canned reply (``mailcase replies list``) renders in each of its languages for
    two sample cases (:func:`~mailcase.notices.sample_context`): a customer's by mail, and
    one taken by phone with neither a name nor an address. An override that does not
    compile, uses a name a case does not have, or fails on a case's data (a name's first
    word when there is no name) fails every ``#respuesta`` naming it, or some of them."""
    names = check_replies(
        settings.templates.directory,
        lambda language: (
            sample_context(settings, language),
            sample_context(settings, language, phone=True),
        ),
    )
    if not names:
        return "no canned replies"
    return f"{len(names)} canned replies render: {', '.join(names)}"


def check_mailbox(name: str, settings: MailboxSettings) -> str:
    with ImapMailbox(name, settings) as box:
        idle = "IDLE supported" if box.has_capability("IDLE") else "no IDLE (polling only)"
        count = box.message_count
    return f"logged in as {settings.login}, folder {settings.folder} ({count} messages), {idle}"


def check_smtp(settings: Settings) -> str:
    smtp = settings.smtp
    with SmtpConnection(smtp):
        pass
    how = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[smtp.security]
    auth = f", authenticated as {smtp.username}" if smtp.username else ""
    return f"EHLO to {smtp.host}:{smtp.effective_port} ok, {how}{auth}; nothing sent"


def run_checks(settings: Settings) -> list[CheckResult]:
    """Every check, in a stable order: secrets, database, storage, templates, canned
    replies, each mailbox, SMTP. The secrets row warns of secret files every local user may read."""
    results = [
        _secrets_row(settings),
        _guard("database", lambda: check_database(settings)),
        _guard("storage", lambda: check_storage(settings)),
        _guard("templates", lambda: check_templates(settings)),
        _guard("replies", lambda: check_canned_replies(settings)),
    ]
    for name, box in settings.mailboxes.items():
        results.append(_guard(f"mailbox {name}", partial(check_mailbox, name, box)))
    results.append(_guard("smtp", lambda: check_smtp(settings)))
    return results


def _secrets_row(settings: Settings) -> CheckResult:
    """The ``secrets`` row: readable secrets, with a warning per file open to all users."""
    row = _guard("secrets", lambda: check_secret_files(settings))
    warnings = secret_file_warnings(settings) if row.ok else []
    if not warnings:
        return row
    return CheckResult(row.name, True, "; ".join(warnings), warning=True)  # all readable


SPAM_WINDOW = timedelta(days=7)


def status(settings: Settings, store: Store, *, live: bool = True) -> dict[str, Any]:
    """Per mailbox: last successful poll, errors, backlog; outbox and case counts, how
    many messages are quarantined, and how many were set aside as spam in 7 days.
    Reads only: no write lock (:meth:`Store.read_session`)."""
    with store.read_session() as session:
        checkpoints = {c.mailbox: c for c in session.exec(select(Checkpoint)).all()}
        outbox = dict(
            session.exec(select(Notice.status, func.count()).group_by(col(Notice.status))).all()
        )
        cases = dict(
            session.exec(select(Case.status, func.count()).group_by(col(Case.status))).all()
        )
        quarantined = session.exec(
            select(func.count()).where(LedgerEntry.disposition == Disposition.QUARANTINED)
        ).one()
        spam = session.exec(
            select(func.count()).where(
                LedgerEntry.disposition == Disposition.SPAM,
                col(LedgerEntry.ingested_at) >= utcnow() - SPAM_WINDOW,
            )
        ).one()
    mailboxes = []
    for name, box in settings.mailboxes.items():
        cp = checkpoints.get(name)
        entry: dict[str, Any] = {
            "mailbox": name,
            "address": box.address,
            "last_success_at": cp.last_poll_at.isoformat() if cp and cp.last_poll_at else None,
            "last_error": (cp.last_error or None) if cp else None,
            "last_error_at": cp.last_error_at.isoformat() if cp and cp.last_error_at else None,
            "consecutive_failures": cp.failures if cp else 0,
            "backlog": None,
            # Always there (null when the mailbox answered, or was not asked), so a
            # script reading --json need not test for the key.
            "backlog_error": None,
        }
        if live:
            try:
                with ImapMailbox(name, box) as imap:
                    same = cp is not None and cp.uidvalidity == imap.uidvalidity
                    entry["backlog"] = len(imap.uids_after(cp.last_uid if same and cp else 0))
            # ConfigError: a ca_file or password file that cannot be read; the table
            # shows it, as it does an unreachable server.
            except (MailboxError, ConfigError) as exc:
                entry["backlog_error"] = str(exc)
        mailboxes.append(entry)
    return {
        "mailboxes": mailboxes,
        "outbox": {s: int(outbox.get(s, 0)) for s in ("queued", "sent", "failed", "suppressed")},
        "cases": {s: int(cases.get(s, 0)) for s in ("open", "resolved", "closed")},
        # Kept, not lost, but waiting for a person: `messages list --disposition quarantined`.
        "quarantined": int(quarantined),
        # What the spam filter's verdict set aside lately, for a person to look over
        # for mistakes now and then (`messages release` undoes one).
        "spam_last_7_days": int(spam),
    }
