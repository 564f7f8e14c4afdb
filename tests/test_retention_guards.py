"""Retention by age, what it must leave alone: someone else's live case, the agents and
mailcase's own addresses; and what it says (a dry run's counts). Rows written straight
to the database (no servers needed beyond PostgreSQL), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import installation_at
from sqlmodel import Session, col, select

from mailcase import erasure, retention
from mailcase.blobs import BlobStore
from mailcase.erasure import ErasureRefused, erase
from mailcase.models import (
    Case,
    CaseMessage,
    CaseStatus,
    Disposition,
    LedgerEntry,
    Notice,
    Participant,
)
from mailcase.retention import Purge, purge_inactive
from mailcase.store import Store

DAYS = 365
NOW = datetime.now(UTC)
PEDRO, ANA = "pedro@example.com", "ana@example.com"
AGENT, OWN = "luisa@plr.mx", "contacto@plr.mx"
INSIDERS = frozenset({AGENT, OWN, "soporte@plr.mx"})
_serial = count(1)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.open(db_url, auto_upgrade=True)
    yield opened
    opened.dispose()


def _case(
    session: Session,
    customer: str,
    *,
    days: int,
    status: CaseStatus = CaseStatus.CLOSED,
    merged_into: int | None = None,
) -> int:
    then = NOW - timedelta(days=days)
    case = Case(
        folio=f"PLR-2026-{next(_serial):06d}",
        status=status,
        customer=customer,
        customer_name=f"Nombre de {customer}",
        subject=f"asunto de {customer}",
        mailbox="soporte",
        created_at=then,
        updated_at=then,
        closed_at=then if status == CaseStatus.CLOSED else None,
        last_customer_at=then,
        merged_into_id=merged_into,
    )
    session.add(case)
    session.flush()
    assert case.id is not None
    return case.id


def _message(
    session: Session,
    case_id: int,
    sender: str,
    text: str,
    *,
    days: int,
    kind: str = "customer",
    to: str = "",
    sha: str = "",
    stored: bool = True,  # False: no stored file named (counted by the erasure otherwise)
) -> int:
    n = next(_serial)
    if kind == "notice":  # ours, sent: never fetched
        message = CaseMessage(
            case_id=case_id, direction="out", kind=kind, from_addr=sender, to_addrs=to,
            subject="s", date=NOW - timedelta(days=days), text=text,
        )  # fmt: skip
        session.add(message)
        session.flush()
        assert message.id is not None
        return message.id
    # As ingestion writes them: the ledger row and the recorded message name the same
    # stored file, and the message has no ledger_id (ingest never sets it).
    sha = sha or (f"{n:064x}" if stored else "")
    entry = LedgerEntry(
        mailbox="soporte",
        uidvalidity=1,
        uid=n,
        message_id=f"<m{n}@example.com>",
        dedup_key=f"k{n}",
        disposition=Disposition.NEW_CASE,
        case_id=case_id,
        raw_sha256=sha,
        ingested_at=NOW - timedelta(days=days),
    )
    session.add(entry)
    session.flush()
    message = CaseMessage(
        case_id=case_id,
        direction="in",
        kind=kind,
        from_addr=sender,
        to_addrs=to,
        subject="s",
        date=NOW - timedelta(days=days),
        text=text,
        raw_sha256=sha or None,
    )
    session.add(message)
    session.flush()
    assert message.id is not None
    return message.id


def _purge(store: Store, tmp_path: Path, *, dry_run: bool) -> Purge:
    (tmp_path / "blobs").mkdir(exist_ok=True)
    return purge_inactive(
        store, tmp_path / "blobs", DAYS, insiders=INSIDERS, by="test", dry_run=dry_run
    )


def _texts(store: Store, case_id: int) -> list[tuple[str, str, str]]:
    with store.read_session() as session:
        return [
            (m.from_addr, m.to_addrs, m.text)
            for m in session.exec(
                select(CaseMessage)
                .where(CaseMessage.case_id == case_id)
                .order_by(col(CaseMessage.id))
            ).all()
        ]


def test_a_participant_of_another_customers_open_case_is_kept(store: Store, tmp_path: Path) -> None:
    with store.transaction() as session:
        old = _case(session, PEDRO, days=DAYS + 30)
        _message(session, old, PEDRO, "mi caso viejo", days=DAYS + 30)
        # Ana copied him yesterday (he may write on her case): he is not gone.
        open_ = _case(session, ANA, days=1, status=CaseStatus.OPEN)
        _message(session, open_, ANA, f"copio a mi esposo {PEDRO}", days=1, to=PEDRO)
        session.add(Participant(case_id=open_, address=PEDRO))
    before = _texts(store, open_)
    for dry_run in (True, False):
        assert _purge(store, tmp_path, dry_run=dry_run).customers.customers == ()
    assert _texts(store, open_) == before
    with store.read_session() as session:
        assert session.exec(select(Participant.address)).all() == [PEDRO]
    # Once her case is closed he is purged as anyone else (and leaves her history).
    with store.transaction() as session:
        case = session.get(Case, open_)
        assert case is not None
        case.status = CaseStatus.CLOSED
        session.add(case)
    assert _purge(store, tmp_path, dry_run=False).customers.customers == (PEDRO,)
    assert PEDRO not in str(_texts(store, open_))


def test_one_who_wrote_on_another_customers_open_case_is_kept(store: Store, tmp_path: Path) -> None:
    with store.transaction() as session:
        old = _case(session, PEDRO, days=DAYS + 30)
        _message(session, old, PEDRO, "mi caso viejo", days=DAYS + 30)
        # He wrote on Ana's case long ago; it is still open (no participant row).
        open_ = _case(session, ANA, days=DAYS + 20, status=CaseStatus.OPEN)
        _message(session, open_, PEDRO, "Yo tampoco tengo servicio, calle Roble 12", days=DAYS + 20)
    assert _purge(store, tmp_path, dry_run=False).customers.customers == ()
    assert _texts(store, open_)[0][0] == PEDRO


def test_a_case_merged_into_a_live_case_keeps_its_customer(store: Store, tmp_path: Path) -> None:
    with store.transaction() as session:
        # Ana's case is still open, and Pedro's report was merged into another of his
        # that was merged into hers (an old merge, before merges kept to one customer):
        # a chain of two, and none of his messages on her case.
        live = _case(session, ANA, days=DAYS + 40, status=CaseStatus.OPEN)
        middle = _case(session, PEDRO, days=DAYS + 40, merged_into=live)
        first = _case(session, PEDRO, days=DAYS + 40, merged_into=middle)
        _message(session, first, PEDRO, "Sin servicio, modem ZTE serie 12345", days=DAYS + 40)
    assert _purge(store, tmp_path, dry_run=False).customers.customers == ()
    assert _texts(store, first)[0][0] == PEDRO
    with store.transaction() as session:
        case = session.get(Case, live)
        assert case is not None
        case.status = CaseStatus.CLOSED
        session.add(case)
    # Closed (and as old): his reports go with hers (merged into it, they are hers too),
    # and nothing is left to count for him.
    assert _purge(store, tmp_path, dry_run=False).customers.customers == (ANA,)
    assert _texts(store, first)[0][0] == ""


def test_an_agents_address_is_never_a_customer_to_purge(store: Store, tmp_path: Path) -> None:
    with store.transaction() as session:
        # The admin's first test mail, before the address was in agents.addresses.
        test = _case(session, AGENT, days=DAYS + 100)
        _message(session, test, AGENT, "prueba", days=DAYS + 100)
        ana_old = _case(session, ANA, days=DAYS + 30)
        _message(session, ana_old, ANA, "Me cobraron dos veces en octubre", days=DAYS + 30)
        answer = "Procede la aclaración: bonificamos $349 en su próxima factura."
        _message(session, ana_old, AGENT, answer, days=DAYS + 30, kind="agent")
        _case(session, ANA, days=0, status=CaseStatus.OPEN)  # Ana is active
    for dry_run in (True, False):
        assert _purge(store, tmp_path, dry_run=dry_run).customers.customers == ()
    assert _texts(store, ana_old)[1] == (AGENT, "", answer)
    assert _texts(store, test)[0][2] == "prueba"
    # customers forget refuses it, naming why, and changes nothing.
    with pytest.raises(ErasureRefused, match="agent's or one of mailcase's own"):
        erase(store, tmp_path / "blobs", AGENT, insiders=INSIDERS, by="t", dry_run=False)
    assert _texts(store, test)[0][2] == "prueba"


def test_our_own_mailbox_is_never_a_customer_to_purge(store: Store, tmp_path: Path) -> None:
    with store.transaction() as session:
        loop = _case(session, OWN, days=DAYS + 30)  # mail from our own mailbox
        _message(session, loop, OWN, "prueba de envio", days=DAYS + 30)
        ana = _case(session, ANA, days=1)  # closed yesterday
        _message(session, ana, ANA, "Sin internet desde ayer", days=1, to=OWN)
        _message(session, ana, OWN, "Recibimos su reporte.", days=1, kind="notice")
    before = _texts(store, ana)
    for dry_run in (True, False):
        assert _purge(store, tmp_path, dry_run=dry_run).customers.customers == ()
    assert _texts(store, ana) == before
    assert _texts(store, loop)[0][2] == "prueba de envio"


def test_a_customers_erasure_leaves_the_desks_rows_that_carry_their_address(
    store: Store, tmp_path: Path
) -> None:
    # An address that was an agent's once (no longer in agents.addresses): forgetting
    # it as a customer takes its own mail elsewhere, never an answer it wrote as agent.
    with store.transaction() as session:
        own = _case(session, PEDRO, days=DAYS + 30)
        _message(session, own, PEDRO, "mi caso", days=DAYS + 30)
        other = _case(session, ANA, days=DAYS + 30)
        mine = "Yo tampoco tengo servicio, calle Roble 12, modem ZTE"
        _message(session, other, PEDRO, mine, days=DAYS + 30)
        answer = "Procede la aclaración: bonificamos $349 en su próxima factura."
        _message(session, other, PEDRO, answer, days=DAYS + 30, kind="agent")
    (tmp_path / "blobs").mkdir()
    done = erase(store, tmp_path / "blobs", PEDRO, insiders=frozenset(), by="t", dry_run=False)
    assert done.erased
    texts = [text for _, _, text in _texts(store, other)]
    assert mine not in texts and answer in texts


def test_their_own_resolved_case_keeps_nobody(store: Store, tmp_path: Path) -> None:
    # Resolved long ago and never closed: their own words on it are no other's case.
    with store.transaction() as session:
        resolved = _case(session, PEDRO, days=DAYS + 30, status=CaseStatus.RESOLVED)
        _message(session, resolved, PEDRO, "mi caso viejo", days=DAYS + 30)
    assert _purge(store, tmp_path, dry_run=False).customers.customers == (PEDRO,)


# --- migration 0013 -----------------------------------------------------------------------


def _notice(session: Session, case_id: int, kind: str, to: str, *, days: int) -> None:
    then = NOW - timedelta(days=days)
    session.add(
        Notice(
            case_id=case_id, kind=kind, status="sent", mail_from=OWN, rcpt_to=to,
            message_id=f"<n{next(_serial)}@plr.mx>", raw=b"x", next_attempt_at=then,
            created_at=then,
        )
    )  # fmt: skip


@pytest.mark.parametrize("desk_kind", ["note", "agent"])
def test_the_desks_mail_on_an_old_case_is_no_activity_of_the_customer(
    store: Store, tmp_path: Path, desk_kind: str
) -> None:
    with store.transaction() as session:
        old = _case(session, PEDRO, days=DAYS + 30)
        _message(session, old, PEDRO, "mi caso viejo", days=DAYS + 30)
        # Yesterday an agent classified it by mail (#tipo queja), as `cases type` does
        # from the command line, and another was told of an owner (#asignar).
        _message(session, old, AGENT, "#tipo queja", days=1, kind=desk_kind)
        _notice(session, old, "assigned", "soporte@plr.mx", days=1)
        _notice(session, old, "agent_notification", "soporte@plr.mx", days=1)
    assert _purge(store, tmp_path, dry_run=True).customers.customers == (PEDRO,)
    # A notice to him yesterday is the conversation going on: it keeps him.
    with store.transaction() as session:
        _notice(session, old, "relay", PEDRO, days=1)
    assert _purge(store, tmp_path, dry_run=True).customers.customers == ()


def test_his_recent_mail_on_another_customers_closed_case_keeps_him(
    store: Store, tmp_path: Path
) -> None:
    with store.transaction() as session:
        old = _case(session, PEDRO, days=DAYS + 30)
        _message(session, old, PEDRO, "mi caso viejo", days=DAYS + 30)
        # Ana's case, closed long ago; he wrote on it yesterday (fetched then).
        hers = _case(session, ANA, days=DAYS + 30)
        _message(session, hers, PEDRO, "¿ya quedó lo de mi vecina?", days=1)
    assert PEDRO not in _purge(store, tmp_path, dry_run=True).customers.customers


def test_his_own_recent_mail_on_an_old_case_keeps_him(store: Store, tmp_path: Path) -> None:
    with store.transaction() as session:
        old = _case(session, PEDRO, days=DAYS + 30)
        _message(session, old, PEDRO, "mi caso viejo", days=DAYS + 30)
        _message(session, old, PEDRO, "sigo sin servicio", days=1)  # fetched yesterday
    assert _purge(store, tmp_path, dry_run=True).customers.customers == ()


def test_migration_0013_indexes_the_erasures_lookups(db_url: str) -> None:
    # As 0012's test: an installation with a case and a message upgrades in place. The
    # files' hashes stay unindexed: random keys cost every ingest on SQLite (0013 says).
    from alembic import command

    from mailcase.store import SCHEMA_HEAD, alembic_config

    installation_at(db_url, "0012")
    store = Store.open(db_url, auto_upgrade=True)
    try:
        assert store.revisions() == (SCHEMA_HEAD, SCHEMA_HEAD) and SCHEMA_HEAD >= "0013"
        with store.reading() as conn:
            indexes = {
                table: {i["name"] for i in sa.inspect(conn).get_indexes(table)}
                for table in ("ledger", "case_messages", "attachments", "cases", "participants")
            }
            texts = conn.execute(sa.text("SELECT text FROM case_messages")).scalars().all()
    finally:
        store.dispose()
    assert "ix_cases_merged_into_id" in indexes["cases"]
    assert "ix_participants_address" in indexes["participants"]
    assert not any("sha256" in name for t in ("ledger", "case_messages", "attachments")
                   for name in indexes[t])  # fmt: skip
    assert texts == ["hola"]
    command.downgrade(alembic_config(db_url), "0012")
    command.upgrade(alembic_config(db_url), "head")


def test_a_dry_run_counts_their_old_mail_of_no_case_once(store: Store, tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    blobs = BlobStore(tmp_path / "blobs")
    away = blobs.put(
        f"From: {PEDRO}\r\nTo: soporte@plr.mx\r\nSubject: fuera de oficina\r\n\r\n"
        "Estoy de vacaciones\r\n".encode()
    )
    with store.transaction() as session:
        old = _case(session, PEDRO, days=DAYS + 30)
        _message(session, old, PEDRO, "mi caso viejo", days=DAYS + 30, stored=False)
        session.add(
            LedgerEntry(
                mailbox="soporte",
                uidvalidity=1,
                uid=9999,
                dedup_key="away",
                disposition=Disposition.AUTO_REPLY,
                raw_sha256=away,
                ingested_at=NOW - timedelta(days=DAYS + 30),
            )
        )

    def total(done: Purge) -> tuple[int, int]:
        return (
            done.customers.messages + done.loose.messages,
            done.customers.files + done.loose.files,
        )

    dry = _purge(store, tmp_path, dry_run=True)
    assert (dry.loose.messages, dry.loose.files) == (0, 0)
    assert total(dry) == total(_purge(store, tmp_path, dry_run=False)) == (2, 1)


def test_a_customer_another_purge_erased_meanwhile_is_not_counted_again(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two instances on PostgreSQL purging at once: the second finds, under its lock,
    # the customer the first erased after both had scanned. It must not say it erased
    # them (nor rewrite anything): its scan's mentions no longer name them.
    with store.transaction() as session:
        old = _case(session, PEDRO, days=DAYS + 30)
        _message(session, old, PEDRO, "mi caso viejo", days=DAYS + 30)
        ana = _case(session, ANA, days=DAYS + 30)
        _message(session, ana, ANA, f"copio a {PEDRO}", days=DAYS + 30, to=PEDRO)
    real_utcnow = erasure.utcnow
    other: list[Purge] = []

    def first_batch_starts() -> datetime:
        if not other:  # the other instance, between this one's scan and its batch
            monkeypatch.setattr(erasure, "utcnow", real_utcnow)
            other.append(_purge(store, tmp_path, dry_run=False))
        return real_utcnow()

    monkeypatch.setattr(erasure, "utcnow", first_batch_starts)
    done = _purge(store, tmp_path, dry_run=False)
    assert other[0].customers.customers == (ANA, PEDRO)
    assert done.customers.customers == () and not done.customers.erased


def test_a_stop_ends_the_choice_and_the_first_scan_there(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon stopping during a large first purge: systemd waits two minutes, and
    # the choice and the first scan (every message's text, per chunk of addresses)
    # took four. Each gives up at its next look at the stop; nothing is erased.
    customers = [f"cliente{n}@example.com" for n in range(3)]
    with store.transaction() as session:
        for address in customers:
            case = _case(session, address, days=DAYS + 30)
            _message(session, case, address, "mi caso viejo", days=DAYS + 30)
    stop = threading.Event()
    real_inactive = retention._inactive
    chosen: list[str] = []

    def stop_arrives(session: Session, address: str, *args: Any) -> bool:
        chosen.append(address)
        stop.set()
        return real_inactive(session, address, *args)

    monkeypatch.setattr(retention, "_inactive", stop_arrives)
    done = purge_inactive(
        store, tmp_path, DAYS, insiders=INSIDERS, by="t", dry_run=False, stop=stop
    )
    assert chosen == customers[:1] and done.customers.customers == ()
    monkeypatch.setattr(retention, "_inactive", real_inactive)

    # During the scan: after the mail of no case, before the messages' texts.
    stop.clear()
    real_loose = erasure._loose_ledger

    def stop_in_scan(*args: Any) -> Any:
        stop.set()
        return real_loose(*args)

    monkeypatch.setattr(erasure, "_loose_ledger", stop_in_scan)
    monkeypatch.setattr(erasure, "SCAN_CHUNK", 1)
    texts_read: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM case_messages" in statement and "LIKE" in statement.upper():
            texts_read.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        done = purge_inactive(
            store, tmp_path, DAYS, insiders=INSIDERS, by="t", dry_run=False, stop=stop
        )
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert done.customers.customers == () and texts_read == []
    with store.read_session() as session:
        assert sorted(session.exec(select(Case.customer)).all()) == customers
