"""PostgreSQL settings a DBA may set on the database (or the cluster it was created on):
idle_in_transaction_session_timeout, statement_timeout and a held lock, a read-only
database, a non-UTF-8 encoding, a non-ISO DateStyle. Each must cost at most a poll's
back-off, never a repeated acknowledgement, a quarantined message or a crash loop."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import structlog
from helpers import Cli, mail, offline_runtime, pause_after_triage, write_config
from servers import Dovecot, Postgres, SmtpSink

from mailcase.config import load_settings
from mailcase.daemon import Daemon
from mailcase.outbox import log_run_failure
from mailcase.service import Runtime
from mailcase.store import is_unavailable, make_engine


def _set_on_database(postgres: Postgres, url: str, setting: str) -> None:
    """ALTER DATABASE ... SET ``setting``: what a DBA does; new sessions get it."""
    with postgres.connect() as conn:
        conn.execute(f"ALTER DATABASE {sa.make_url(url).database} SET {setting}")


def _wrapped(orig: Exception) -> sa.exc.DBAPIError:
    """``orig`` as SQLAlchemy raises it from a statement (OperationalError, InternalError…)."""
    return sa.exc.DBAPIError.instance(
        "UPDATE cases SET state = %(state)s", {}, orig, psycopg.Error, hide_parameters=True
    )


# What the server's settings and other sessions raise, whatever the message.
_NOT_THE_MESSAGE = [
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"),
]


@pytest.mark.parametrize("orig", _NOT_THE_MESSAGE, ids=lambda e: type(e).__name__)
def test_timeouts_locks_and_a_read_only_database_are_the_database_not_the_message(
    orig: Exception,
) -> None:
    exc = _wrapped(orig)
    assert is_unavailable(exc)
    with structlog.testing.capture_logs() as logs:
        try:
            raise exc
        except Exception as caught:
            log_run_failure(caught)
    assert [(e["event"], e["log_level"]) for e in logs] == [("outbox_run_failed", "warning")]


def test_closing_stale_cases_behind_a_statement_timeout_is_one_line(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, pg_url: str, monkeypatch: Any
) -> None:
    rt = Runtime.open(load_settings(write_config(tmp_path, mailboxes, sink, db_url=pg_url)))

    def canceled(_rt: Runtime) -> None:
        raise _wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout"))

    monkeypatch.setattr("mailcase.daemon.close_stale_cases", canceled)
    try:
        with structlog.testing.capture_logs() as logs:
            Daemon(rt).close_stale()
    finally:
        rt.store.dispose()
    assert [(e["event"], e["log_level"]) for e in logs] == [("close_stale_failed", "warning")]
    assert "exc_info" not in logs[0]


def test_a_slow_smtp_server_outlasting_idle_in_transaction_timeout_gets_one_ack(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    postgres: Postgres,
    pg_url: str,
    capsys: Any,
) -> None:
    # The claim's row lock is held while the server answers DATA: the server killed
    # the session after the mail was accepted, and every run sent it again.
    _set_on_database(postgres, pg_url, "idle_in_transaction_session_timeout = '1s'")
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=pg_url), capsys)
    mailboxes.append("contacto", mail(sender="juan@example.com", subject="Sin internet"))
    sink.hang(2, count=10)  # a server scanning DATA (an antivirus milter)
    cli.poll()
    cli.poll()  # a second run must find nothing due
    assert Counter(m.rcpt_tos[0] for m in sink.messages)["juan@example.com"] == 1
    assert [n["status"] for n in cli.json("outbox", "list")] == ["sent"]


def test_a_statement_timeout_behind_a_held_lock_does_not_quarantine(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    postgres: Postgres,
    pg_url: str,
    capsys: Any,
) -> None:
    _set_on_database(postgres, pg_url, "statement_timeout = '1s'")
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=pg_url), capsys)
    mailboxes.append("contacto", mail(sender="juan@example.com", subject="Sin internet"))
    locker = postgres.connect(sa.make_url(pg_url).database or "")
    try:
        locker.autocommit = False
        locker.execute("SET statement_timeout = 0")
        locker.execute("LOCK TABLE cases IN SHARE MODE")  # what CREATE INDEX ON cases holds
        released = threading.Timer(3, locker.commit)
        released.start()
        code, _, err = cli("poll")
        released.join()
    finally:
        locker.close()
    assert code != 0 and "statement timeout" in err and "Traceback" not in err
    cli.poll()  # the lock is gone: the same message is read again
    ledger = cli.json("messages", "list")
    assert [r["disposition"] for r in ledger] == ["new_case"]


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_a_database_that_does_not_store_utf8_is_refused_with_a_sentence(
    encoding: str,
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    postgres: Postgres,
    capsys: Any,
) -> None:
    name = f"round6_{encoding.lower()}"
    postgres.drop_database(name)
    with postgres.connect() as conn:
        conn.execute(
            f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=postgres.url(name)), capsys)
        for command in (("db", "upgrade"), ("poll",)):
            code, _, err = cli(*command)
            # Exit 2: systemd does not restart it for ever (RestartPreventExitStatus=2 5).
            assert code == 2, err
            assert name in err and "ENCODING 'UTF8' TEMPLATE template0" in err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        postgres.drop_database(name)


@pytest.mark.parametrize("datestyle", ["SQL, DMY", "German"])
def test_a_non_iso_datestyle_on_the_database_does_not_break_polls(
    datestyle: str,
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    postgres: Postgres,
    pg_url: str,
    capsys: Any,
) -> None:
    _set_on_database(postgres, pg_url, f"DateStyle = '{datestyle}'")
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=pg_url), capsys)
    mailboxes.append("contacto", mail(sender="juan@example.com", subject="Sin internet"))
    cli.poll()
    assert len(cli.json("cases", "list")) == 1 and len(sink.messages) == 1


def test_the_admins_libpq_options_are_kept_beside_ours(postgres: Postgres, pg_url: str) -> None:
    _set_on_database(postgres, pg_url, "DateStyle = 'German'")
    url = sa.make_url(pg_url).update_query_dict({"options": "-c application_name=from_url"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            shown = [conn.exec_driver_sql(f"SHOW {name}").scalar() for name in
                     ("application_name", "DateStyle", "client_encoding")]  # fmt: skip
    finally:
        engine.dispose()
    assert shown[0] == "from_url" and shown[1].startswith("ISO") and shown[2] == "UTF8"


def test_a_service_files_options_are_kept(
    tmp_path: Path, postgres: Postgres, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our DateStyle went in libpq's options, which then hid those of a service file
    # (pg_service.conf): its search_path was lost.
    url = sa.make_url(pg_url)
    service = tmp_path / "pg_service.conf"
    service.write_text(
        f"[mc]\nhost={url.host}\nport={url.port}\nuser={url.username}\ndbname={url.database}\n"
        "options=-c search_path=mc,public\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(service))
    engine = make_engine("postgresql+psycopg:///?service=mc")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW search_path").scalar() == "mc,public"
            assert conn.exec_driver_sql("SHOW DateStyle").scalar() == "ISO, MDY"
    finally:
        engine.dispose()


def test_a_message_the_database_times_out_on_for_a_day_is_quarantined(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    postgres: Postgres,
    pg_url: str,
    capsys: Any,
) -> None:
    # A timeout is the database's for a while, not for ever: a message whose own
    # processing always outlasts statement_timeout (here a DBA's slow audit trigger)
    # held every later message of its mailbox back, poll after poll.
    from datetime import timedelta

    from mailcase.models import KeyValue
    from mailcase.refusals import TIMES as REFUSED_TIMES
    from mailcase.store import Store, utcnow

    _set_on_database(postgres, pg_url, "statement_timeout = '1s'")
    database = sa.make_url(pg_url).database or ""
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=pg_url), capsys)
    cli.poll()  # the schema (the trigger goes on its table)
    with postgres.connect(database) as conn:
        conn.execute(
            "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.text LIKE '%LENTO%' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER audit BEFORE INSERT ON case_messages"
            " FOR EACH ROW EXECUTE FUNCTION audit()"
        )
        conn.commit()
    mailboxes.append("contacto", mail(sender="a@example.com", subject="uno", body="LENTO"))
    mailboxes.append("contacto", mail(sender="b@example.com", subject="dos", body="Sin internet"))
    for _ in range(2):  # within the day: the poll fails and reads it again
        code, _, err = cli("poll")
        assert code == 3 and "statement timeout" in err
        assert cli.json("messages", "list") == []
    store = Store.open(pg_url, auto_upgrade=False)
    try:
        with store.transaction() as session:
            [refusal] = [
                kv for kv in session.exec(sa.select(KeyValue)).scalars()
                if kv.key.startswith("refused:")
            ]  # fmt: skip
            validity, uid, _since, _times = refusal.value.split(" ")
            day_ago = (utcnow() - timedelta(hours=25)).isoformat()
            refusal.value = f"{validity} {uid} {day_ago} {REFUSED_TIMES}"
            session.add(refusal)
    finally:
        store.dispose()
    code, _, err = cli("poll")
    assert code == 0, err
    rows = {r["uid"]: r["disposition"] for r in cli.json("messages", "list")}
    assert rows == {int(uid): "quarantined", int(uid) + 1: "new_case"}


@pytest.mark.parametrize("action", ["close", "resolve"])
def test_a_reply_triaged_before_a_close_commits_is_decided_again(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    # Triage read the case open; an agent's close or resolve committed before the reply
    # locked it; the reply was filed as an update on a case that says the matter is
    # finished (races review). Decided again, it goes as it would after the change.
    from sqlmodel import select

    from mailcase import casework, service
    from mailcase.imap import FetchedMessage
    from mailcase.models import Case
    from mailcase.store import case_by_folio, utcnow

    rt = offline_runtime(tmp_path, pg_url, notify=True)
    first = FetchedMessage(1, mail(sender="cliente@example.com", subject="Sin internet"), utcnow())
    assert service.ingest_message(rt, "contacto", 1, first) == "new_case"
    with rt.store.read_session() as session:
        folio = session.exec(select(Case.folio)).one()
    in_triage, go_on = pause_after_triage(monkeypatch)
    reply = mail(sender="cliente@example.com", subject=f"Re: [Folio {folio}] Sin internet")
    out: list[str] = []
    worker = threading.Thread(
        target=lambda: out.append(
            service.ingest_message(rt, "contacto", 1, FetchedMessage(2, reply, utcnow()))
        )
    )
    worker.start()
    try:
        assert in_triage.wait(20)
        with rt.store.transaction() as session:  # what `mailcase cases close/resolve` does
            found = case_by_folio(session, folio, for_update=True)
            assert found is not None
            if action == "close":
                casework.close(session, rt.settings, found, by="cli:ana")
            else:
                casework.resolve(session, rt.settings, found, "valid", "Módem nuevo.", by="cli:ana")
    finally:
        go_on.set()
        worker.join(20)
    with rt.store.read_session() as session:
        cases = {c.folio: c.status for c in session.exec(select(Case).order_by(Case.id))}
    rt.store.dispose()
    if action == "resolve":  # within cases.reopen_days: the reply reopens it
        assert (out, cases) == (["follow_up"], {folio: "open"})
    else:  # closed unresolved: a new case, linked to it
        assert out == ["new_case"] and cases[folio] == "closed" and len(cases) == 2


def test_a_notice_id_beyond_the_column_is_a_usage_error(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, pg_url: str, capsys: Any
) -> None:
    # notices.id is an INTEGER: PostgreSQL answered "integer out of range", exit 1.
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=pg_url), capsys)
    cli.poll()
    with pytest.raises(SystemExit) as exited:  # argparse's usage error
        cli("outbox", "retry", "3000000000")
    assert exited.value.code == 2
    assert "is not a whole number from 1 to 2147483647" in capsys.readouterr().err
    assert cli("outbox", "retry", "2147483647")[0] == 4  # in range, names nothing
