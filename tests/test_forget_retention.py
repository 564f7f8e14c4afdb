"""Retention by age: `mailcase customers purge --inactive-days N` and ``[retention]
inactive_days`` in the daemon, against the real Dovecot and SMTP sink, on SQLite and
PostgreSQL (the daemon on SQLite)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from helpers import Cli, json_events, mail, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import col, select
from test_config import ISSUE_CONFIG, load_error
from test_forget import (
    ANA,
    JUAN,
    NAME,
    PHRASE,
    Desk,
    _blob_files,
    _everything,
    _rows,
    _unparseable,
)
from test_ops_fixes import offline_config

from mailcase import daemon, erasure
from mailcase.cli import main
from mailcase.config import load_settings
from mailcase.erasure import FORGOTTEN, _Addresses
from mailcase.models import Case, LedgerEntry, Notice
from mailcase.retention import purge_inactive
from mailcase.service import Runtime
from mailcase.store import Store

PEDRO = "pedro.lopez@example.com"
DAYS = 365


# --- pure -----------------------------------------------------------------------------------


def test_the_set_survey_finds_whole_addresses_only() -> None:
    wanted = _Addresses(["juan@example.com", "ana@example.com", "luis@xn--telefona-i2a.mx"])
    assert wanted.found_in(["maria.juan@example.com, juan@example.com.mx"]) == set()
    assert wanted.found_in(["Escriba a ANA@Example.com."]) == {"ana@example.com"}
    assert wanted.found_in(["juan@example.com y luis@telefonía.mx"]) == {
        "juan@example.com",
        "luis@xn--telefona-i2a.mx",
    }
    assert _Addresses([]).found_in(["juan@example.com"]) == set()


def test_inactive_days_is_off_by_default_and_refuses_a_negative(tmp_path: Path) -> None:
    example = load_settings(Path(__file__).resolve().parents[1] / "config/mailcase.example.toml")
    assert example.retention.inactive_days == 0
    message = load_error(tmp_path, ISSUE_CONFIG + "\n[retention]\ninactive_days = -1\n")
    assert "retention.inactive_days" in message


# --- against the servers --------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path, db_url)


def _closed_case(desk: Desk, sender: str, body: str, *, close: bool = True) -> str:
    desk.deliver(mail(sender=sender, subject="Sin internet", body=body))
    address = sender.rpartition("<")[2].rstrip(">")
    [case] = desk.cli.json("cases", "list", "--customer", address)
    folio = str(case["folio"])
    if close:
        desk.ok("cases", "resolve", folio, "--outcome", "valid", "--cause", "Se reinició el módem")
        desk.ok("cases", "close", folio)
    return folio


def _age(desk: Desk, days: int, folios: list[str] | None = None, *, loose: bool = False) -> None:
    """Put everything of the cases ``folios`` (every case when None) ``days`` back: the
    case's dates, its ledger rows and notices; with ``loose``, the mail of no case too."""
    then = datetime.now(UTC) - timedelta(days=days)
    store = Store.open(desk.url, auto_upgrade=False)
    try:
        with store.transaction() as session:
            query = select(Case.id)
            if folios is not None:
                query = query.where(col(Case.folio).in_(folios))
            ids = [i for i in session.exec(query).all() if i is not None]
            session.execute(
                sa.update(Case)
                .where(col(Case.id).in_(ids))
                .values(created_at=then, updated_at=then, last_customer_at=then)
            )
            for stamp in ("resolved_at", "closed_at"):
                column = getattr(Case, stamp)
                session.execute(
                    sa.update(Case)
                    .where(col(Case.id).in_(ids), column.is_not(None))
                    .values({stamp: then})
                )
            session.execute(
                sa.update(LedgerEntry)
                .where(col(LedgerEntry.case_id).in_(ids))
                .values(ingested_at=then)
            )
            session.execute(
                sa.update(Notice).where(col(Notice.case_id).in_(ids)).values(created_at=then)
            )
            if loose:
                session.execute(
                    sa.update(LedgerEntry)
                    .where(col(LedgerEntry.case_id).is_(None))
                    .values(ingested_at=then)
                )
                session.execute(
                    sa.update(Notice).where(col(Notice.case_id).is_(None)).values(created_at=then)
                )
    finally:
        store.dispose()


def _purge(desk: Desk, *extra: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = desk.cli("customers", "purge", "--inactive-days", str(DAYS), "--json", *extra)
    return code, (json.loads(out) if out else {}), err


def _customer(desk: Desk, folio: str) -> str:
    """The case's customer, read straight from the database (from any thread)."""
    engine = sa.create_engine(desk.url)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text("select customer from cases where folio = :f"), {"f": folio}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_an_inactive_customer_is_erased_and_a_recent_or_open_one_is_not(desk: Desk) -> None:
    juan = _closed_case(desk, f"{NAME} <{JUAN}>", f"Hola, {PHRASE} otra vez.")
    ana = _closed_case(desk, f"Ana Ruiz <{ANA}>", "Me cobraron dos veces.")
    pedro = _closed_case(desk, f"Pedro López <{PEDRO}>", "Sin señal.", close=False)
    _age(desk, DAYS + 1, [juan, pedro])  # Ana's case was closed today; Pedro's is open
    _age(desk, DAYS - 1, [ana])
    code, result, err = _purge(desk, "--yes")
    assert code == 0, err
    assert result["customers"] == 1 and result["addresses"] == [JUAN]
    assert result["cases"] == [juan] and result["erased"] is True
    assert result["messages"] >= 1 and result["notices"] >= 1
    after = _everything(desk)
    for secret in (JUAN, NAME.lower(), PHRASE.lower()):
        assert secret not in after, secret
    assert _customer(desk, juan) == FORGOTTEN
    assert (_customer(desk, ana), _customer(desk, pedro)) == (ANA, PEDRO)
    # One audit line: counts and folios, never an address.
    [event] = [e for e in json_events(err) if e.get("event") == "customers_purged"]
    assert event["customers"] == 1 and event["folios"] == [juan]
    assert "@" not in json.dumps(event)
    assert "customer_forgotten" not in err
    # A second run finds nobody.
    code, again, err = _purge(desk, "--yes")
    assert code == 0, err
    assert (again["customers"], again["erased"]) == (0, False)


def test_a_dry_run_lists_them_and_changes_nothing(desk: Desk) -> None:
    juan = _closed_case(desk, f"{NAME} <{JUAN}>", PHRASE)
    _age(desk, DAYS + 1)
    before, files = _everything(desk), _blob_files(desk)
    code, result, err = _purge(desk)
    assert code == 0, err
    assert (result["customers"], result["cases"], result["erased"]) == (1, [juan], False)
    code, out, err = desk.cli("customers", "purge", "--inactive-days", str(DAYS))
    assert code == 0, err
    assert JUAN in out and juan in out and "--yes" in out  # the admin's ARCO record
    assert "customers_purged" not in err
    assert _everything(desk) == before and _blob_files(desk) == files
    code, done, err = _purge(desk, "--yes")
    assert code == 0, err
    assert {k: v for k, v in done.items() if k != "erased"} == {
        k: v for k, v in result.items() if k != "erased"
    }


def test_a_customer_with_a_queued_notice_is_skipped_until_it_is_sent(desk: Desk) -> None:
    juan = _closed_case(desk, f"{NAME} <{JUAN}>", PHRASE)
    ana = _closed_case(desk, f"Ana Ruiz <{ANA}>", "Me cobraron dos veces.")
    desk.sink.stop()  # the reopen and the resolution cannot be sent
    try:
        desk.ok("cases", "reopen", juan)
        desk.cli("cases", "resolve", juan, "--outcome", "invalid", "--cause", "No hubo falla")
        _age(desk, DAYS + 1)
        code, result, err = _purge(desk, "--yes")
        assert code == 0, err  # skipped, never an error
        assert result["addresses"] == [ANA] and result["cases"] == [ana]
        assert result["skipped"] == 1
        assert _customer(desk, juan) == JUAN
    finally:
        desk.sink.start()
    desk.ok("outbox", "retry", "--all")
    desk.ok("poll")
    assert not desk.cli.json("outbox", "list", "--status", "pending")
    _age(desk, DAYS + 1)
    code, result, err = _purge(desk, "--yes")
    assert code == 0, err
    assert result["addresses"] == [JUAN]


def test_mail_since_the_choice_keeps_the_customer(desk: Desk, monkeypatch: Any) -> None:
    # Chosen as inactive, then his mail arrived before his batch's transaction: the
    # batch reads his activity again under its lock, and leaves him.
    juan = _closed_case(desk, f"{NAME} <{JUAN}>", PHRASE)
    _age(desk, DAYS + 1)
    real = erasure._scan

    def scan_then_mail_arrives(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("since") is None:  # the first scan, after the choice
            store = Store.open(desk.url, auto_upgrade=False)
            try:
                with store.transaction() as session:
                    session.execute(
                        sa.update(Case)
                        .where(col(Case.folio) == juan)
                        .values(last_customer_at=datetime.now(UTC))
                    )
            finally:
                store.dispose()
        return real(*args, **kwargs)

    monkeypatch.setattr(erasure, "_scan", scan_then_mail_arrives)
    code, result, err = _purge(desk, "--yes")
    assert code == 0, err
    assert (result["customers"], result["skipped"]) == (0, 1)
    assert _customer(desk, juan) == JUAN


def test_many_customers_one_scan_whole_addresses_and_whole_batches(
    desk: Desk, monkeypatch: Any
) -> None:
    short = "juan@example.com"
    maria = "maria.juan@example.com"
    juan = _closed_case(desk, f"Juan <{short}>", "hola")
    ana = _closed_case(desk, f"Ana Ruiz <{ANA}>", "Me cobraron dos veces.")

    def bulk(sender: str) -> None:
        desk.deliver(
            mail(sender=sender, subject="Boletín", body="oferta", headers={"Precedence": "bulk"})
        )

    # Their mail kept outside any case (bulk), old; then María's, who is active.
    bulk(short)
    bulk(ANA)
    _age(desk, DAYS + 1, [juan, ana], loose=True)
    bulk(maria)
    mine = _closed_case(
        desk, f"María Juan <{maria}>", f"Copio a juan@example.com.mx y a {short}.", close=False
    )
    files = _blob_files(desk)
    reads: list[Path] = []
    real_read_header = erasure.read_header

    def counted(path: Path) -> bytes:
        reads.append(path)
        return real_read_header(path)

    monkeypatch.setattr(erasure, "read_header", counted)
    monkeypatch.setattr(erasure, "BATCH", 1)  # one customer per transaction
    monkeypatch.setattr(erasure, "SQLITE_BATCH", 1)
    erased: list[str] = []
    real_erase_rows = erasure._erase_rows

    def dies_on_the_second(session: Any, address: str, *args: Any, **kwargs: Any) -> None:
        if erased:
            raise RuntimeError("killed")
        erased.append(address)
        real_erase_rows(session, address, *args, **kwargs)

    monkeypatch.setattr(erasure, "_erase_rows", dies_on_the_second)
    with pytest.raises(RuntimeError, match="killed"):  # the process dies there
        desk.cli("customers", "purge", "--inactive-days", str(DAYS), "--yes")
    # The three loose messages' headers were read once for the two addresses, not once
    # per address (and again only for rows added since, none here).
    assert len(reads) == 3
    # The first batch stands whole; the second is untouched.
    assert erased == [ANA]
    assert _customer(desk, ana) == FORGOTTEN and _customer(desk, juan) == short
    monkeypatch.setattr(erasure, "_erase_rows", real_erase_rows)
    code, result, err = _purge(desk, "--yes")
    assert code == 0, err
    assert result["addresses"] == [short]
    assert _customer(desk, juan) == FORGOTTEN
    assert desk.cli.json("cases", "list", "--customer", short) == []
    shown = desk.cli.json("cases", "show", mine)
    assert shown["customer"] == maria
    assert shown["messages"][0]["text"] == f"Copio a juan@example.com.mx y a {FORGOTTEN}."
    # María's bulk mail keeps its copy; Juan's and Ana's lost theirs.
    left = _blob_files(desk)
    assert len(files - left) >= 2
    everything = _everything(desk)
    assert maria in everything and ANA not in everything


def test_old_mail_of_no_case_is_erased_but_a_quarantined_one_waits(desk: Desk) -> None:
    stranger = "boletines@tienda.example.com"
    desk.deliver(
        mail(sender=stranger, subject="Boletín", body=PHRASE, headers={"Precedence": "bulk"})
    )
    desk.deliver(_unparseable("Luis <luis@example.com>", "Factura"))  # quarantined
    _age(desk, DAYS + 1, loose=True)
    files = _blob_files(desk)
    code, dry, err = _purge(desk)
    assert code == 0, err
    assert (dry["loose_messages"], dry["loose_files"]) == (1, 1)
    assert _blob_files(desk) == files
    code, result, err = _purge(desk, "--yes")
    assert code == 0, err
    assert (result["customers"], result["loose_messages"], result["erased"]) == (0, 1, True)
    assert result["loose_notices"] >= 1  # the agents told of the quarantined one
    assert len(files - _blob_files(desk)) == 1
    # (The quarantined message's copy cannot be parsed: read the rows, not every text.)
    rows = _rows(desk, "select disposition, raw_sha256, reason from ledger order by id")
    [(bulk, sha, reason), (waiting, kept, _)] = rows
    assert (bulk, sha, reason) == ("bulk", "", erasure.LOOSE_REASON)
    assert waiting == "quarantined" and kept and kept in _blob_files(desk)
    notices = _rows(desk, "select raw from notices where case_id is null")
    assert notices and all(len(bytes(raw)) == 0 for (raw,) in notices)
    [quarantined] = desk.cli.json("messages", "list", "--disposition", "quarantined")
    assert quarantined["disposition"] == "quarantined"
    [event] = [e for e in json_events(err) if e.get("event") == "customers_purged"]
    assert event["loose_messages"] == 1 and "@" not in json.dumps(event)


# --- the daemon -----------------------------------------------------------------------------


@pytest.mark.parametrize("days", [DAYS, 0])
def test_the_daemon_purges_after_its_first_polls_and_daily(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, days: int
) -> None:
    extra = f"[retention]\ninactive_days = {days}\n"
    config = write_config(tmp_path, mailboxes, sink, notify=True, extra=extra)
    config.write_text(config.read_text().replace("[poll]\n", "[poll]\nidle = false\n", 1))
    url = f"sqlite:///{tmp_path}/mailcase.db"
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path, url)
    juan = _closed_case(desk, f"{NAME} <{JUAN}>", PHRASE)
    _age(desk, DAYS + 1)
    rt = Runtime.open(load_settings(config))
    the_daemon = daemon.Daemon(rt)
    seen: dict[str, Any] = {}

    def watch() -> None:
        try:
            deadline = time.monotonic() + 30
            while not the_daemon.ready and time.monotonic() < deadline:
                time.sleep(0.05)
            job = the_daemon.scheduler.get_job(daemon.PURGE_JOB)
            seen["interval"] = job.trigger.interval if job is not None else None
            if job is not None:
                while _customer(desk, juan) != FORGOTTEN and time.monotonic() < deadline:
                    time.sleep(0.1)
            else:
                time.sleep(1)
        finally:
            rt.stop.set()

    driver = threading.Thread(target=watch, daemon=True)
    driver.start()
    try:
        with structlog.testing.capture_logs() as logs:
            the_daemon.run()
    finally:
        driver.join(30)
        rt.store.dispose()
    purged = [e for e in logs if e["event"] == "customers_purged"]
    if days:
        assert seen["interval"] == timedelta(days=1)
        assert _customer(desk, juan) == FORGOTTEN
        [event] = purged
        assert event["folios"] == [juan] and event["customers"] == 1
        assert "@" not in json.dumps(event, default=str)
    else:
        assert seen["interval"] is None and purged == []
        assert _customer(desk, juan) == JUAN


def test_a_retention_shorter_than_reopening_is_said_at_start(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    extra = "[retention]\ninactive_days = 7\n"
    config = write_config(tmp_path, mailboxes, sink, extra=extra)
    config.write_text(config.read_text().replace("[poll]\n", "[poll]\nidle = false\n", 1))
    rt = Runtime.open(load_settings(config))
    the_daemon = daemon.Daemon(rt)
    threading.Timer(1.0, rt.stop.set).start()
    try:
        with structlog.testing.capture_logs() as logs:
            the_daemon.run()
    finally:
        rt.store.dispose()
    [warning] = [e for e in logs if e["event"] == "retention_shorter_than_reopen"]
    assert (warning["inactive_days"], warning["reopen_days"]) == (7, 30)


@pytest.mark.parametrize("days", ["0", "-3", "tres"])
def test_the_days_must_be_a_positive_number(tmp_path: Path, capsys: Any, days: str) -> None:
    config = offline_config(tmp_path)
    with pytest.raises(SystemExit) as exited:  # argparse's usage error, before anything
        main(["--config", str(config), "customers", "purge", "--inactive-days", days])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "--inactive-days" in err and "from 1 to" in err
    assert "Traceback" not in err


def test_a_stopping_daemon_waits_for_the_batch_in_hand_only(desk: Desk, monkeypatch: Any) -> None:
    juan = _closed_case(desk, f"{NAME} <{JUAN}>", PHRASE)
    ana = _closed_case(desk, f"Ana Ruiz <{ANA}>", "Me cobraron dos veces.")
    _age(desk, DAYS + 1)
    stop = threading.Event()
    real_erase_rows = erasure._erase_rows

    def stop_arrives(*args: Any, **kwargs: Any) -> None:
        real_erase_rows(*args, **kwargs)
        stop.set()  # SIGTERM, during the first batch

    monkeypatch.setattr(erasure, "_erase_rows", stop_arrives)
    monkeypatch.setattr(erasure, "BATCH", 1)
    monkeypatch.setattr(erasure, "SQLITE_BATCH", 1)
    settings = load_settings(desk.cli.config)
    store = Store.open(desk.url, auto_upgrade=False)
    try:
        done = purge_inactive(
            store,
            settings.storage.directory,
            DAYS,
            insiders=settings.own_addresses,
            by="mailcase",
            dry_run=False,
            stop=stop,
        )
    finally:
        store.dispose()
    assert done.customers.customers == (ANA,)
    assert (_customer(desk, ana), _customer(desk, juan)) == (FORGOTTEN, JUAN)


def test_an_agents_mail_on_an_old_closed_case_restarts_no_clock(desk: Desk) -> None:
    # Through a real poll: an agent classifies an old closed case by mail (#tipo), as
    # `cases type` would. The follow-up moved the case's updated_at, and its recorded
    # message names no ledger row: neither is the customer's activity.
    from helpers import AGENT, NOTIFY

    juan = _closed_case(desk, f"{NAME} <{JUAN}>", PHRASE)
    _age(desk, DAYS + 30)
    [notice] = [m for m in desk.to(NOTIFY) if juan in str(m["Subject"])][:1]
    desk.deliver(
        mail(
            sender=f"Ana Técnica <{AGENT}>",
            to=str(notice["Reply-To"]),
            subject=f"Re: {notice['Subject']}",
            body="#tipo consulta",
            headers={"In-Reply-To": notice["Message-ID"].strip()},
        )
    )
    assert desk.cli.json("cases", "show", juan)["type"] == "question"  # it ran, today
    code, result, err = _purge(desk)
    assert code == 0, err
    assert result["addresses"] == [JUAN]
