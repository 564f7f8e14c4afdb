"""Commands an admin runs: a schema newer than the code, a missing SQLite database, filter
values, and the notice a case change could not send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import (
    Cli,
    cli_with_smtp_down,
    mail,
    point_smtp_at_a_closed_port,
    run_process,
    write_config,
)
from servers import Dovecot, SmtpSink

from mailcase.errors import EXIT_CONFIG, EXIT_DATABASE, EXIT_SCHEMA, DatabaseError
from mailcase.store import SCHEMA_HEAD, Store

pytestmark = pytest.mark.integration

NEWER = "0099"  # a revision of a later mailcase: not among this one's migrations


def _set_revision(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _revision(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    return str(revision)


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("mailcase: ")]


# --- a schema newer than the code -------------------------------------------------------------


def _assert_refused(cli: Cli, code: int, sentence: str, commands: list[list[str]]) -> None:
    """Each of ``commands`` exits ``code`` with ``sentence`` alone; ``check`` fails its
    database row with it."""
    for command in commands:
        got, out, err = cli(*command)
        assert (got, _error_lines(err)) == (code, [f"mailcase: {sentence}"]), command
        assert out == "", command
    got, out, err = cli("check")
    assert got == 1
    [row] = [line for line in out.splitlines() if line.startswith("database")]
    assert "FAILED" in row and sentence in row
    assert f"mailcase: database failed: {sentence}" in _error_lines(err)


def test_every_command_refuses_a_schema_newer_than_the_code_and_leaves_it(
    tmp_path: Path, db_url: str, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A release rolled back, or another host of a shared PostgreSQL upgraded first.
    config = write_config(tmp_path, mailboxes, sink, db_url=db_url)
    cli = Cli(config, capsys)
    assert cli("db", "upgrade")[0] == 0
    _set_revision(db_url, NEWER)
    sentence = (
        f"the database schema is at revision {NEWER}, newer than this mailcase ({SCHEMA_HEAD}):"
        " install the mailcase that upgraded it"
    )
    _assert_refused(
        cli,
        EXIT_SCHEMA,
        sentence,
        [
            ["poll"],
            ["db", "upgrade"],
            ["db", "current"],
            ["status", "--offline"],
            ["cases", "list"],
            ["messages", "list"],
            ["outbox", "list"],
        ],
    )
    # The daemon as systemd runs it: the same sentence and exit code, not a traceback.
    daemon = run_process(config, "run")
    assert daemon.returncode == EXIT_SCHEMA
    assert _error_lines(daemon.stderr) == [f"mailcase: {sentence}"]
    assert _revision(db_url) == NEWER  # never handed to alembic


def test_an_upgrade_finds_the_schema_moved_past_the_code_since_it_opened(db_url: str) -> None:
    # Another host upgrades between this one's open and its upgrade (which reads the
    # revision again under the upgrade lock).
    with Store.open(db_url, auto_upgrade=True) as store:
        _set_revision(db_url, NEWER)
        with pytest.raises(DatabaseError, match=f"revision {NEWER}, newer than this mailcase"):
            store.upgrade()
    assert _revision(db_url) == NEWER


# --- read-only commands and a missing SQLite database -------------------------------------------


def test_read_only_commands_refuse_a_missing_sqlite_database_and_create_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # Run by root before the service ever started, they would create a database the
    # service user cannot open; after a typo in database.url, an empty one.
    state = tmp_path / "state"
    database = state / "lib" / "mailcase.db"
    config = write_config(tmp_path, mailboxes, sink, db_url=f"sqlite:///{database}")
    cli = Cli(config, capsys)
    sentence = f"no database at {database}: run `mailcase db upgrade` or start the service first"
    _assert_refused(
        cli,
        EXIT_DATABASE,
        sentence,
        [
            ["db", "current"],
            ["status", "--offline"],
            ["cases", "list"],
            ["cases", "show", "PLR-2026-000001"],
            ["messages", "list"],
            ["outbox", "list"],
        ],
    )
    assert not state.exists()  # no file, no directory
    code, _, err = cli("db", "upgrade")
    assert code == 0, err
    assert database.is_file()
    assert cli("cases", "list") == (0, "(none)\n", "")


def test_a_command_that_writes_still_creates_the_sqlite_database(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    database = tmp_path / "nuevo" / "mailcase.db"
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=f"sqlite:///{database}"), capsys)
    code, _, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "Llamada", "--text", "Sin servicio."
    )
    assert code == 0, err
    assert database.is_file() and len(cli.json("cases", "list")) == 1


# --- filter values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "value"),
    [
        (["messages", "list", "--disposition"], "quarantine"),
        (["cases", "list", "--status"], "abierto"),
        (["outbox", "list", "--status"], "pendiente"),
    ],
)
def test_an_unknown_filter_value_is_a_usage_error(
    tmp_path: Path, capsys: Any, command: list[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        Cli(tmp_path / "unused.toml", capsys)(*command, value)
    assert exited.value.code == EXIT_CONFIG
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"mailcase: argument {command[-1]}: invalid choice: '{value}'")


def test_pending_still_lists_the_queued_notices(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = cli_with_smtp_down(tmp_path, mailboxes, sink, capsys)
    mailboxes.append("contacto", mail())
    assert cli("poll")[0] == 0
    assert [n["status"] for n in cli.json("outbox", "list", "--status", "pending")] == ["queued"]
    assert cli.json("outbox", "list", "--status", "sent") == []


# --- a case change whose notice could not be sent ---------------------------------------------


def test_a_resolve_whose_notice_is_not_sent_says_so_and_succeeds(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    cli = Cli(config, capsys)
    mailboxes.append("contacto", mail())
    cli.poll()  # the acknowledgement is sent
    [case] = cli.json("cases", "list")
    point_smtp_at_a_closed_port(config, sink)
    code, out, err = cli(
        "cases", "resolve", case["folio"], "--outcome", "valid", "--cause", "Se cambió el módem."
    )
    assert code == 0  # the resolution is committed: running it again would be wrong
    assert out == f"{case['folio']}: resolve done\n"
    [line] = _error_lines(err)
    assert line.startswith(
        "mailcase: the notice to juan.perez@example.com is queued, not sent yet: "
    )
    assert "Connection refused" in line, line
    assert cli.json("cases", "show", case["folio"])["status"] == "resolved"
    assert len(sink.messages) == 1


def test_a_refused_notice_of_a_phone_case_says_so(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    sink.fail_next(550, "no such user")
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--customer", "juan@example.com",
        "--subject", "Llamada", "--text", "Sin servicio.", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("{")  # --json output stays JSON: the line goes to stderr
    [line] = _error_lines(err)
    assert line.startswith("mailcase: the notice to juan@example.com could not be sent: ")
    assert "550" in line and "no such user" in line, line


def test_a_case_change_whose_notices_are_sent_prints_one_line(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    code, out, err = cli(
        "cases", "open", "--channel", "phone", "--customer", "juan@example.com",
        "--subject", "Llamada", "--text", "Sin servicio.",
    )  # fmt: skip
    assert code == 0 and _error_lines(err) == [] and len(out.splitlines()) == 1
    assert len(sink.messages) == 1
