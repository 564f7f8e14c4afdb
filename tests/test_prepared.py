"""Prepared statements on the driver's cursor, on SQLite and a real PostgreSQL: a row is
stored as SQLAlchemy's own execute stores it, errors are SQLAlchemy's, misuse is refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from mailcase.models import Case, LedgerEntry, Notice, NoticeStatus
from mailcase.prepared import Prepared
from mailcase.store import Store, insert_row, insert_values, run, table

pytestmark = pytest.mark.integration

NOTICES = table(Notice)
CASES = table(Case)
WHEN = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-6)))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url, auto_upgrade=True) as opened:
        yield opened


def _notice(message_id: str) -> dict[str, object]:
    return {
        "case_id": None,
        "kind": "acknowledgement",
        "status": NoticeStatus.QUEUED,
        "mail_from": "contacto@example.mx",
        "rcpt_to": "cliente@example.com",
        "message_id": message_id,
        "raw": b"\x00\xffraw bytes",
        "attempts": 0,
        "queued_at": WHEN,
        "next_attempt_at": WHEN,
        "last_error": "",
        "created_at": WHEN,
        "sent_at": None,
    }


def test_a_prepared_insert_stores_what_execute_stores(store: Store) -> None:
    statement = sa.insert(NOTICES).returning(NOTICES.c.id)
    with store.writing() as conn:
        plain = conn.execute(statement, _notice("<plain@x>")).scalar_one()
        prepared = Prepared(statement).execute(conn, _notice("<prepared@x>")).scalar_one()
    assert prepared == plain + 1
    columns = [c for c in NOTICES.c if c.name not in ("id", "message_id")]
    with store.reading() as conn:
        rows = conn.execute(
            sa.select(*columns).where(NOTICES.c.id.in_([plain, prepared])).order_by(NOTICES.c.id)
        ).all()
    # Every column as SQLAlchemy reads it back, datetimes (its own text format on
    # SQLite) and bytes included.
    assert rows[0] == rows[1]
    assert rows[1].raw == b"\x00\xffraw bytes"


def test_results_row_count_and_literal_values(store: Store) -> None:
    with store.writing() as conn:
        ids = [
            Prepared(sa.insert(NOTICES).returning(NOTICES.c.id))
            .execute(conn, _notice(f"<{i}@x>"))
            .scalar_one()
            for i in range(3)
        ]
        # The status is a literal of the statement, LIMIT a literal SQLAlchemy binds.
        queued = Prepared(
            sa.select(NOTICES.c.id)
            .where(NOTICES.c.status == NoticeStatus.QUEUED, NOTICES.c.id > sa.bindparam("after"))
            .order_by(NOTICES.c.id)
            .limit(2)
        )
        assert queued.execute(conn, {"after": ids[0]}).scalars().all() == ids[1:]
        assert queued.execute(conn, {"after": ids[-1]}).first() is None
        update = Prepared(
            sa.update(NOTICES)
            .where(NOTICES.c.id <= sa.bindparam("upto"))
            .values(status=sa.bindparam("new"))
        )
        assert update.execute(conn, {"upto": ids[1], "new": NoticeStatus.SENT}).rowcount == 2
        count = Prepared(
            sa.select(sa.func.count()).select_from(NOTICES).where(NOTICES.c.status == "sent")
        )
        assert count.execute(conn, {}).scalar_one() == 2


def test_driver_errors_come_back_as_sqlalchemy_errors(store: Store) -> None:
    statement = Prepared(sa.insert(NOTICES).returning(NOTICES.c.id))
    with pytest.raises(sa.exc.IntegrityError), store.writing() as conn:
        row = _notice("<x@x>") | {"case_id": 999_999}  # no such case: a foreign key
        statement.execute(conn, row)
    with store.reading() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(NOTICES)).scalar_one() == 0


@pytest.mark.parametrize(
    ("statement", "params", "problem"),
    [
        (sa.select(NOTICES.c.id).where(NOTICES.c.id.in_(sa.bindparam("ids", expanding=True))),
         {"ids": [1]}, "expanding"),
        (sa.select(NOTICES.c.created_at), {}, "converting"),
        # Case.subject has a Python-side default: an INSERT must name every column.
        (sa.insert(CASES), {"folio": "X", "customer": "a@b", "mailbox": "m"}, "defaults"),
    ],
)  # fmt: skip
def test_what_it_cannot_run_is_refused_at_first_use(
    store: Store, statement: sa.ClauseElement, params: dict[str, object], problem: str
) -> None:
    with store.reading() as conn, pytest.raises(TypeError, match=problem):
        Prepared(statement).execute(conn, params)


def test_insert_values_fills_the_model_defaults_and_names_what_is_missing(store: Store) -> None:
    with store.transaction() as session:
        assert isinstance(session, Session)
        case = insert_row(
            session,
            Case,
            folio="PLR-2031-1",
            customer="a@b",
            mailbox="m",
            created_at=WHEN,
            updated_at=WHEN,
        )
        ledger_id = insert_values(
            session,
            LedgerEntry,
            mailbox="m",
            uidvalidity=2**32 - 1,  # unsigned 32-bit: a BIGINT column
            uid=7,
            dedup_key="k",
            disposition="new_case",
            case_id=case.id,
            raw_sha256="0" * 64,
            ingested_at=WHEN,
        )
        with pytest.raises(TypeError, match="LedgerEntry needs dedup_key, disposition"):
            insert_values(session, LedgerEntry, mailbox="m", uidvalidity=1, uid=8)
    with store.transaction() as session:
        entry = session.get(LedgerEntry, ledger_id)
        assert entry is not None
        assert (entry.reason, entry.size, entry.message_id) == ("", 0, None)
        assert (entry.uidvalidity, entry.case_id) == (2**32 - 1, case.id)
        found = run(session, Prepared(sa.select(CASES.c.folio)), {}).scalar_one()
        assert found == "PLR-2031-1"


def test_insert_row_returns_the_row_as_loaded_and_detached(store: Store) -> None:
    """The object insert_row builds is the one a query would load, and session.add of it
    after a change saves the change (an UPDATE, not a second INSERT)."""
    with store.transaction() as session:
        case = insert_row(
            session, Case, folio="PLR-2031-7", customer="a@b", mailbox="m",
            created_at=WHEN, updated_at=WHEN,
        )  # fmt: skip
    assert sa.inspect(case).detached and case.id is not None
    with store.transaction() as session:
        loaded = session.get(Case, case.id)
        assert loaded is not None
        assert loaded.model_dump() == case.model_dump()
        assert loaded.model_fields_set == case.model_fields_set
    with store.transaction() as session:
        case.area = "soporte"
        session.add(case)
    with store.transaction() as session:
        cases = session.exec(select(Case)).all()
        assert [(c.id, c.area) for c in cases] == [(case.id, "soporte")]


def test_a_session_used_for_two_transactions_runs_on_its_current_connection(
    store: Store,
) -> None:
    """run() keeps the session's connection for its transaction only: after a commit the
    connection went back to the pool, and the next statement must not use it."""
    count = Prepared(sa.select(sa.func.count()).select_from(NOTICES))
    with Session(store.engine) as session:
        assert run(session, count).scalar_one() == 0
        first = session.connection()
        session.commit()
        run(session, Prepared(sa.insert(NOTICES).returning(NOTICES.c.id)), _notice("<a@x>"))
        assert session.connection() is not first
        assert run(session, count).scalar_one() == 1
        session.commit()
    with store.reading() as conn:
        assert conn.execute(count.statement).scalar_one() == 1  # type: ignore[call-overload]
