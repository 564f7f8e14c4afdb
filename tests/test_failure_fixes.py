"""Failures met by commands and reported in one sentence: a database that fails after it was
opened, an SQLite write lock held by someone else, a database file of another user, a typo
in a libpq connection option, secret files readable by every local user, values longer
than their columns, and durations that overflow."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import AGENT, CONTACTO, NOTIFY, Cli, mail, write_config
from servers import Dovecot, Postgres, SmtpSink

import mailcase.cli_cases as cli_cases
from mailcase import casework, service
from mailcase.commands import CommandKind, parse_commands
from mailcase.config import load_settings
from mailcase.errors import ConfigError
from mailcase.health import config_file_warning, secret_file_warnings
from mailcase.inbound import MAX_ADDRESS
from mailcase.store import Store, failure_text

FAKE_SERVERS: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
FAKE_SINK: Any = types.SimpleNamespace(port=3)


def _offline_cli(tmp_path: Path, capsys: Any, db_url: str | None = None) -> Cli:
    """A Cli whose servers are never contacted (the commands here need the database only)."""
    return Cli(write_config(tmp_path, FAKE_SERVERS, FAKE_SINK, db_url=db_url), capsys)


def _open_phone_case(cli: Cli, *extra: str) -> str:
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "Sin internet", "--text", "llamó",
        "--json", *extra,
    )  # fmt: skip
    assert code == 0, err
    return str(json.loads(out)["folio"])


# 1. A database failure after the store was opened: one line, exit 3 (or 1), no traceback.


def test_a_case_command_meets_a_restarted_postgresql(
    tmp_path: Path, pg_url: str, postgres: Postgres, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _offline_cli(tmp_path, capsys, pg_url)
    folio = _open_phone_case(cli)
    real_open = cli_cases._open_store

    def open_then_restart(*args: Any, **kwargs: Any) -> Store:
        store = real_open(*args, **kwargs)
        postgres.stop()  # a fast shutdown ends every session, as an upgrade does
        postgres.start()
        return store

    monkeypatch.setattr(cli_cases, "_open_store", open_then_restart)
    code, _, err = cli("cases", "resolve", folio, "--outcome", "valid", "--cause", "módem")
    assert code == 3, err
    assert err.startswith("mailcase: database unavailable: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "SELECT" not in err


def test_poll_meets_a_stopped_postgresql_after_the_mailboxes(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    pg_url: str,
    postgres: Postgres,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=pg_url), capsys)
    mailboxes.append("contacto", mail())
    real_poll = service.poll_mailbox
    polled: list[str] = []

    def poll_then_stop(rt: Any, name: str, *args: Any) -> Any:
        report = real_poll(rt, name, *args)
        polled.append(name)
        if len(polled) == 2:  # after the last mailbox: the closing and delivery steps
            postgres.stop()
        return report

    monkeypatch.setattr(service, "poll_mailbox", poll_then_stop)
    try:
        code, _, err = cli("poll")
    finally:
        postgres.start()
    assert code == 3, err
    assert "mailcase: database unavailable: " in err and "Traceback" not in err


def _failing_note(orig: Exception) -> Any:
    def add_note(*args: Any, **kwargs: Any) -> None:
        raise sa.exc.DBAPIError.instance(
            "UPDATE cases SET x=?", {}, orig, sqlite3.Error, hide_parameters=True
        )

    return add_note


def test_a_database_error_is_one_line_and_its_traceback_only_with_debug(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _offline_cli(tmp_path, capsys)
    folio = _open_phone_case(cli)
    monkeypatch.setattr(
        casework, "add_note", _failing_note(sqlite3.OperationalError("disk I/O error"))
    )
    code, _, err = cli("cases", "note", folio, "--text", "nota")
    assert code == 3, err
    assert err == f"mailcase: database unavailable: disk I/O error ({tmp_path}/mailcase.db)\n"
    code, _, err = cli("--debug", "cases", "note", folio, "--text", "nota")
    assert code == 3 and "Traceback" in err
    # Not the database being unavailable (a bug, a constraint): exit 1, one line.
    monkeypatch.setattr(casework, "add_note", _failing_note(sqlite3.IntegrityError("NOT NULL")))
    code, _, err = cli("cases", "note", folio, "--text", "nota")
    assert (code, err) == (1, "mailcase: database error: NOT NULL\n")


# 2. Read-only commands take no write lock: an admin's sqlite3 shell may hold it.


def test_read_only_commands_go_on_while_another_process_holds_the_write_lock(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    mailboxes.append("contacto", mail())
    cli.poll()
    folio = cli.json("cases", "list")[0]["folio"]
    uid = str(cli.json("messages", "list")[0]["uid"])
    readers = [
        ("cases", "list"),
        ("cases", "show", folio),
        ("messages", "list"),
        ("messages", "show", uid, "--mailbox", "contacto"),
        ("outbox", "list"),
        ("status", "--offline"),
        ("db", "current"),
        ("check",),
    ]
    lock = sqlite3.connect(tmp_path / "mailcase.db", isolation_level=None, timeout=1)
    lock.execute("BEGIN IMMEDIATE")
    lock.execute("UPDATE cases SET subject = subject")
    try:
        for args in readers:
            done: list[tuple[int, str, str]] = []
            worker = threading.Thread(target=lambda a=args, d=done: d.append(cli(*a)))
            worker.start()
            worker.join(10)  # SQLite's busy timeout is 30 s: a writer's wait fails this
            assert done, f"mailcase {' '.join(args)} waited for the write lock"
            code, out, err = done[0]
            assert code == 0, (args, err)
        assert "database          ok" in out  # `check`: the database row
    finally:
        lock.execute("ROLLBACK")
        lock.close()


# 3. An SQLite file this user cannot open or write: the file, its owner and what to do.


def test_failure_text_names_the_file_its_owner_and_the_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mailcase.db"
    database.touch()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == database and mode == os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    exc = sa.exc.OperationalError(
        "INSERT", {}, sqlite3.OperationalError("attempt to write a readonly database")
    )
    text = failure_text(f"sqlite:///{database}", exc)
    assert text.startswith(f"attempt to write a readonly database ({database}); {database} ")
    assert "is not writable by this user" in text
    assert "sudo -u mailcase" in text and f"chown mailcase: {database}" in text


AS_ANOTHER_USER = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search,-fowner",
    "--bounding-set=-dac_override,-dac_read_search,-fowner",
    "--",
]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to make a file that this process's user cannot open",
)
def test_a_database_file_of_another_user_is_named_with_the_remedy(
    tmp_path: Path, capsys: Any
) -> None:
    cli = _offline_cli(tmp_path, capsys)
    _open_phone_case(cli)  # creates the database, as `sudo mailcase ...` does
    database = tmp_path / "mailcase.db"
    for path in tmp_path.glob("mailcase.db*"):
        os.chown(path, 65534, -1)  # nobody's now: the service user is not its owner
    database.chmod(0o600)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*AS_ANOTHER_USER, sys.executable, "-m", "mailcase", "--config", str(cli.config)]
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=60, check=False
        )

    done = run("status", "--offline")
    assert done.returncode == 3, done.stderr
    assert f"{database} (owned by nobody) is not readable or writable by this user" in done.stderr
    assert "sudo -u mailcase" in done.stderr and "Traceback" not in done.stderr
    database.chmod(0o644)  # readable, not writable: reading works
    assert run("cases", "list").returncode == 0
    # Writing as root (without its capabilities, here) over the service's files is
    # refused before it starts (tests/test_root_guard.py); a user who is not root
    # gets failure_text's "not writable" (the unit test above).
    done = run("cases", "open", "--channel", "phone", "--subject", "x", "--text", "y")
    assert done.returncode == 2, done.stderr
    assert f"{database} belongs to nobody" in done.stderr


# 4. A typo in a libpq connection option: a configuration error (exit 2), no password.


@pytest.mark.parametrize("option", ["sslmode=verify-ful", "port=99999", "gssencmode=S3cretPw"])
def test_a_connection_option_libpq_refuses_is_a_config_error(
    tmp_path: Path, capsys: Any, option: str
) -> None:
    url = f"postgresql+psycopg://mailcase:S3cretPw@127.0.0.1:1/mailcase?{option}"
    code, _, err = _offline_cli(tmp_path, capsys, url)("db", "current")
    assert code == 2, err
    assert "database.url has a connection option the driver refuses" in err
    assert "S3cretPw" not in err


def test_a_missing_postgresql_socket_stays_a_database_error(tmp_path: Path, capsys: Any) -> None:
    # libpq says "connection is bad" for this too: the server's, not the URL's.
    url = "postgresql+psycopg://mailcase:S3cretPw@/mailcase?host=/nonexistent"
    code, _, err = _offline_cli(tmp_path, capsys, url)("db", "current")
    assert code == 3, err


# 5. `mailcase check` warns of secrets that every local user can read.


def test_check_warns_of_secret_files_readable_by_every_local_user(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink)  # mailbox passwords written inline
    key = tmp_path / "signing.key"
    key.write_text("0123456789abcdef-signing\n")
    text = config.read_text().replace(
        "[agents]\n", '[agents]\nsigning_secret_file = "signing.key"\n'
    )
    config.write_text(text)
    config.chmod(0o644)
    key.chmod(0o604)
    cli = Cli(config, capsys)
    assert cli("db", "upgrade")[0] == 0
    code, out, err = cli("check")
    assert code == 0, err  # a warning, not a failure (health._mode_warning)
    rows = {line.split("  ")[0]: line for line in out.splitlines()[1:]}
    assert rows["config"].split()[1:3] == ["ok", "(warning)"]
    assert f"config file {config} is readable by every local user (mode 0644)" in rows["config"]
    assert rows["secrets"].split()[1:3] == ["ok", "(warning)"]
    assert (
        f"agents.signing_secret_file {key} is readable by every local user (mode 0604): "
        f"chmod 0640 {key}, owned by root, group mailcase"
    ) in rows["secrets"]
    config.chmod(0o640)
    key.chmod(0o600)
    code, out, err = cli("check")
    assert code == 0 and "warning" not in out, out + err


def test_a_config_without_secrets_may_be_read_by_all_but_not_written(tmp_path: Path) -> None:
    config = tmp_path / "mailcase.toml"
    password = tmp_path / "imap.pw"
    password.write_text("x\n")
    config.write_text(
        '[mailboxes.contacto]\naddress = "c@example.mx"\nhost = "127.0.0.1"\n'
        'security = "none"\npassword_file = "imap.pw"\n[smtp]\nhost = "127.0.0.1"\n'
        'security = "none"\n'
    )
    config.chmod(0o644)
    password.chmod(0o640)
    settings = load_settings(config)
    assert config_file_warning(config) is None and secret_file_warnings(settings) == []
    config.chmod(0o646)
    password.chmod(0o642)
    assert config_file_warning(config) == (
        f"config file {config} is writable by every local user (mode 0646): "
        f"chmod 0640 {config}, owned by root, group mailcase"
    )
    assert secret_file_warnings(settings) == [
        f"mailboxes.contacto.password_file {password} is writable by every local user "
        f"(mode 0642): chmod 0640 {password}, owned by root, group mailcase",
    ]


def test_a_database_password_in_the_config_file_is_a_secret(tmp_path: Path) -> None:
    config = tmp_path / "mailcase.toml"
    config.write_text('[database]\nurl = "postgresql+psycopg://mc:S3cret@db/mailcase"\n')
    config.chmod(0o604)
    assert "is readable by every local user (mode 0604)" in (config_file_warning(config) or "")


# 6. Values longer than their columns (PostgreSQL enforces them): refused in a sentence.


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--name", "Juan " + "Pérez " * 40), "--name is 245 characters long"),
        (("--customer", "a" * 330 + "@example.com"), "--customer is 342 characters long"),
    ],
    ids=["name", "customer"],
)
def test_cases_open_refuses_values_longer_than_their_columns(
    tmp_path: Path, pg_url: str, capsys: Any, args: tuple[str, str], words: str
) -> None:
    cli = _offline_cli(tmp_path, capsys, pg_url)
    code, _, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "s", "--text", "t", *args
    )
    assert code == 2, err
    assert words in err and err.count("\n") == 1


def test_cases_participant_refuses_an_address_longer_than_rfc_5321_allows(
    tmp_path: Path, pg_url: str, capsys: Any
) -> None:
    cli = _offline_cli(tmp_path, capsys, pg_url)
    folio = _open_phone_case(cli)
    longest = "b" * (MAX_ADDRESS - len("@example.com")) + "@example.com"
    code, _, err = cli("cases", "participant", folio, "--add", longest)
    assert code == 0, err
    code, _, err = cli("cases", "participant", folio, "--add", "b" + longest)
    assert code == 2 and "--add is 255 characters long" in err, err


def test_the_participant_command_refuses_an_address_longer_than_rfc_5321_allows() -> None:
    longest = "c" * (MAX_ADDRESS - len("@example.com")) + "@example.com"
    found = parse_commands(f"#participante {longest}").commands
    assert found[0].kind == CommandKind.PARTICIPANT and found[0].address == longest
    parsed = parse_commands(f"#participante c{longest}")
    assert not parsed.commands
    assert [p.problem for p in parsed.problems] == ["bad_address"]


def test_an_agents_long_participant_address_does_not_quarantine_the_reply(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, pg_url: str, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True, db_url=pg_url), capsys)
    mailboxes.append("contacto", mail(subject="Sin internet", body="No tengo internet."))
    cli.poll()
    notification = [m.message for m in sink.messages if m.rcpt_tos == [NOTIFY]][-1]
    mailboxes.append(
        "contacto",
        mail(
            sender=f"Ana Técnica <{AGENT}>",
            to=CONTACTO,
            subject=f"Re: {notification['Subject']}",
            body="#participante " + "c" * 330 + "@example.com\nsu hermano",
            headers={"In-Reply-To": notification["Message-ID"].strip()},
        ),
    )
    cli.poll()
    assert cli.json("messages", "list")[-1]["disposition"] != "quarantined"


# 7. Durations: no inf, nan, or value that overflows a timedelta.


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("MAILCASE_NOTICES__MAX_AGE_HOURS", "inf", "notices.max_age_hours"),
        ("MAILCASE_NOTICES__MAX_AGE_HOURS", "nan", "notices.max_age_hours"),
        ("MAILCASE_NOTICES__MAX_AGE_HOURS", "1e300", "notices.max_age_hours"),
        ("MAILCASE_SMTP__RETRY_FOR_HOURS", "inf", "smtp.retry_for_hours"),
        ("MAILCASE_SMTP__RETRY_FOR_HOURS", "87601", "smtp.retry_for_hours"),
        ("MAILCASE_SMTP__TIMEOUT_SECONDS", "inf", "smtp.timeout_seconds"),
        ("MAILCASE_MAILBOXES__INFO__TIMEOUT_SECONDS", "1e300", "mailboxes.info.timeout_seconds"),
        ("MAILCASE_CASES__REOPEN_DAYS", "1000000000", "cases.reopen_days"),
        ("MAILCASE_CASES__CLOSE_AFTER_DAYS", "3651", "cases.close_after_days"),
        ("MAILCASE_POLL__INTERVAL_SECONDS", "100000000000000", "poll.interval_seconds"),
    ],
)  # fmt: skip
def test_a_duration_that_overflows_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, key: str
) -> None:
    config = write_config(tmp_path, FAKE_SERVERS, FAKE_SINK)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^bad value for {key}: .* in environment variable"):
        load_settings(config)


def test_the_longest_durations_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, FAKE_SERVERS, FAKE_SINK)
    monkeypatch.setenv("MAILCASE_NOTICES__MAX_AGE_HOURS", "87600")
    monkeypatch.setenv("MAILCASE_SMTP__RETRY_FOR_HOURS", "87600")
    monkeypatch.setenv("MAILCASE_CASES__REOPEN_DAYS", "3650")
    settings = load_settings(config)
    assert settings.notices.max_age_hours == settings.smtp.retry_for_hours == 87_600
    assert settings.cases.reopen_days == 3650
