"""`mailcase customers forget`: a customer's right of cancellation (LFPDPPP), against the
real Dovecot and SMTP sink, on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import json
import sqlite3
import sys
import threading
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import (
    AGENT,
    CONTACTO,
    INFO,
    NOTIFY,
    Cli,
    installation_at,
    json_events,
    mail,
    write_config,
)
from servers import Dovecot, SmtpSink
from sqlmodel import SQLModel

from mailcase import erasure, service
from mailcase.classify import is_automatic_address
from mailcase.cli import main
from mailcase.erasure import FORGOTTEN, Erasure, erase
from mailcase.store import Store

pytestmark = pytest.mark.integration

JUAN = "juan.quintanilla@example.com"
NAME = "Juan Quintanilla"
PHRASE = "el perico azul de Tlalpan"  # only in Juan's mail
ROSA = "rosa.quintanilla@example.com"  # in Juan's Cc: a participant of his case
ANA = "ana.ruiz@example.com"
SHARED = b"%PDF-1.4 contrato tipo " + bytes(range(256)) * 20  # sent by both Juan and Ana
PRIVATE = b"\xff\xd8\xff\xe0 foto de Juan " + bytes(range(255, -1, -1)) * 20


@dataclass
class Desk:
    cli: Cli
    imap: Dovecot
    sink: SmtpSink
    dir: Path
    url: str

    def deliver(self, raw: bytes) -> None:
        self.imap.append("contacto", raw)
        self.cli.poll()

    def folio_of(self, customer: str) -> str:
        [case] = self.cli.json("cases", "list", "--customer", customer)
        return str(case["folio"])

    def ok(self, *args: str) -> str:
        code, out, err = self.cli(*args)
        assert code == 0, err
        return out

    def to(self, rcpt: str) -> list[EmailMessage]:
        return [m.message for m in self.sink.messages if rcpt in m.rcpt_tos]


@pytest.fixture
def desk(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Desk:
    config = write_config(tmp_path, mailboxes, sink, notify=True, db_url=db_url)
    return Desk(Cli(config, capsys), mailboxes, sink, tmp_path, db_url)


def _history(desk: Desk) -> tuple[str, str]:
    """Juan's case (resolved and closed, a follow-up, files, a participant) and Ana's open
    one, where Juan is a participant; their folios."""
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject="Sin internet en Quintanilla 12",
            body=f"Hola, soy {NAME}; desde ayer no hay internet y {PHRASE} no deja de gritar.",
            headers={"Cc": ROSA},
            attachments=[
                ("contrato.pdf", "application/pdf", SHARED),
                ("foto.jpg", "image/jpeg", PRIVATE),
            ],
        )
    )
    juan = desk.folio_of(JUAN)
    desk.deliver(
        mail(
            sender=f"Ana Ruiz <{ANA}>",
            subject="Cobro doble",
            body="Me cobraron dos veces este mes.",
            attachments=[("contrato.pdf", "application/pdf", SHARED)],
        )
    )
    ana = desk.folio_of(ANA)
    desk.ok("cases", "participant", ana, "--add", JUAN)
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject=f"Re: [Folio {juan}] Sin internet",
            body=f"Sigo igual, {PHRASE} sigue ahí. Mi teléfono es 55 1234 5678.",
        )
    )
    # An auto-reply naming the folio: kept on the case as a "system" message.
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject=f"Respuesta automática: [Folio {juan}] Sin internet",
            body=f"{NAME} está de vacaciones con {PHRASE}.",
            headers={"Auto-Submitted": "auto-replied"},
        )
    )
    desk.ok(
        "cases", "resolve", juan, "--outcome", "valid", "--cause", f"Se cambió el módem de {NAME}"
    )
    desk.ok("cases", "close", juan)
    return juan, ana


def _texts(data: bytes) -> str:
    """``data`` as text, and, when it is a message, its headers and parts decoded (a name
    in RFC 2047, a body in quoted-printable or base64 are found too)."""
    found = [data.decode("latin-1"), data.decode("utf-8", "replace")]
    if b":" in data[:200]:
        message = email.message_from_bytes(data, policy=policy.default)
        for part in message.walk():
            found.extend(str(v) for v in part.values())
            if not part.is_multipart():
                content = part.get_payload(decode=True) or b""
                found.append(content.decode("utf-8", "replace"))
    return "\n".join(found)


def _everything(desk: Desk, *, sent_log: bool = False) -> str:
    """Every text and binary column of every table and every file of the message store
    (with ``sent_log``, SQLite delivery's record too: it changes as notices go), as text."""
    parts = []
    store = Store.open(desk.url, auto_upgrade=False)
    try:
        with store.engine.connect() as conn:
            for table in SQLModel.metadata.tables.values():
                for row in conn.execute(sa.select(table)):
                    for value in row:
                        if isinstance(value, bytes):
                            parts.append(_texts(value))
                        elif isinstance(value, str):
                            parts.append(value)
    finally:
        store.dispose()
    for path in sorted((desk.dir / "store").rglob("*")):
        if path.is_file():
            parts.append(_texts(path.read_bytes()))
    log = desk.dir / "mailcase.db-sent"
    if sent_log and log.exists():
        parts.append(log.read_bytes().decode("latin-1"))
    return "\n".join(parts).lower()


def _blob_files(desk: Desk) -> set[str]:
    return {
        p.name for p in (desk.dir / "store").rglob("*") if p.is_file() and p.parent.name != "spool"
    }


def _forget(desk: Desk, *extra: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = desk.cli("customers", "forget", JUAN, "--json", *extra)
    return code, (json.loads(out) if out else {}), err


def test_forgetting_leaves_nothing_of_the_customer(desk: Desk) -> None:
    juan, _ = _history(desk)
    before = _everything(desk)
    for secret in (JUAN, NAME.lower(), PHRASE.lower(), ROSA):
        assert secret in before  # the search finds them where they are
    code, result, err = _forget(desk, "--yes")
    assert code == 0, err
    assert result["cases"] == [juan]
    assert result["erased"] is True
    assert result["messages"] >= 5 and result["notices"] >= 3 and result["files"] >= 3

    after = _everything(desk, sent_log=True)
    for secret in (JUAN, NAME.lower(), PHRASE.lower(), ROSA, "55 1234 5678", "quintanilla"):
        assert secret not in after, secret

    # Kept for the statistics: folio, status, outcome, channel, dates; marked erased.
    shown = desk.cli.json("cases", "show", juan)
    assert shown["customer"] == FORGOTTEN
    assert (shown["status"], shown["outcome"], shown["channel"]) == ("closed", "valid", "mail")
    assert shown["created_at"] and shown["resolved_at"] and shown["closed_at"]
    assert "erased on" in shown["messages"][-1]["text"]
    kinds = [m["kind"] for m in shown["messages"]]
    assert kinds.count("customer") == 2 and kinds.count("system") >= 3
    assert "case closed" in [m["text"] for m in shown["messages"]]
    code, out, _ = desk.cli("cases", "show", juan)
    assert code == 0 and "erased on" in out
    # The audit line names folios and counts, never the address.
    [event] = [e for e in json_events(err) if e.get("event") == "customer_forgotten"]
    assert event["folios"] == [juan] and event["cases"] == 1
    assert JUAN not in err and "quintanilla" not in err.lower()


def test_other_customers_and_a_shared_file_are_untouched(desk: Desk) -> None:
    _, ana = _history(desk)
    before = desk.cli.json("cases", "show", ana)
    files = _blob_files(desk)
    code, result, err = _forget(desk, "--yes")
    assert code == 0, err

    after = desk.cli.json("cases", "show", ana)
    # Juan no longer takes part in Ana's case; the note adding him no longer names him.
    assert JUAN not in json.dumps(after)
    assert [m["kind"] for m in after["messages"]] == [m["kind"] for m in before["messages"]]
    assert after["customer"] == ANA and after["subject"] == "Cobro doble"
    assert after["messages"][0]["text"] == before["messages"][0]["text"]
    [pdf] = after["messages"][0]["attachments"]
    left = _blob_files(desk)
    assert pdf["sha256"] in left  # the file both sent stays for Ana
    assert len(files) - len(left) == result["files"]
    code, _, err = desk.cli("cases", "attachment", ana, "1", "--output", str(desk.dir / "c.pdf"))
    assert code == 0, err
    assert (desk.dir / "c.pdf").read_bytes() == SHARED


def test_an_open_case_is_refused_and_nothing_changes(desk: Desk) -> None:
    juan, _ = _history(desk)
    desk.ok("cases", "reopen", juan)
    before = _everything(desk)
    files = _blob_files(desk)
    code, _, err = desk.cli("customers", "forget", JUAN, "--yes")
    assert code == 2
    assert juan in err and "close them first" in err
    assert err.strip().count("\n") == 0
    assert _everything(desk) == before and _blob_files(desk) == files


def test_a_queued_notice_is_refused_until_the_outbox_sends_it(desk: Desk) -> None:
    juan, _ = _history(desk)
    desk.sink.stop()  # the reopen and a resolution cannot be sent
    try:
        desk.ok("cases", "reopen", juan)
        desk.cli("cases", "resolve", juan, "--outcome", "invalid", "--cause", "No hubo falla")
        code, _, err = desk.cli("customers", "forget", JUAN, "--yes")
        assert code == 2
        assert juan in err and "outbox" in err
    finally:
        desk.sink.start()
    desk.ok("outbox", "retry", "--all")  # due now
    desk.ok("poll")  # and sent
    assert not desk.cli.json("outbox", "list", "--status", "pending")
    code, result, err = _forget(desk, "--yes")
    assert code == 0, err
    assert result["erased"] is True


def test_a_dry_run_says_what_and_changes_nothing(desk: Desk) -> None:
    juan, _ = _history(desk)
    before = _everything(desk)
    files = _blob_files(desk)
    code, result, err = _forget(desk)
    assert code == 0, err
    assert result["cases"] == [juan] and result["erased"] is False
    assert result["messages"] >= 5 and result["files"] >= 3
    code, out, _ = desk.cli("customers", "forget", f"{NAME} <{JUAN.upper()}>")
    assert code == 0
    assert juan in out and "--yes" in out
    assert _everything(desk) == before and _blob_files(desk) == files
    # The same counts once done.
    code, done, err = _forget(desk, "--yes")
    assert {k: v for k, v in done.items() if k != "erased"} == {
        k: v for k, v in result.items() if k != "erased"
    }


def test_new_mail_after_forgetting_opens_a_new_case(desk: Desk) -> None:
    juan, _ = _history(desk)
    code, _, err = _forget(desk, "--yes")
    assert code == 0, err
    sent = len(desk.to(JUAN))
    shown_before = desk.cli.json("cases", "show", juan)["messages"]
    # A reply quoting the old folio and threading on an old notice: a stranger's mail.
    old_ack = desk.to(JUAN)[0]  # the acknowledgement of the erased case
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject=f"Re: [Folio {juan}] Sin internet",
            body="Otra vez sin servicio.",
            headers={"In-Reply-To": old_ack["Message-ID"], "References": old_ack["Message-ID"]},
        )
    )
    [new] = desk.cli.json("cases", "list", "--customer", JUAN)
    assert new["folio"] != juan and new["status"] == "open"
    shown = desk.cli.json("cases", "show", new["folio"])
    assert shown["related"] == []  # nothing ties it to the erased case
    [ack] = desk.to(JUAN)[sent:]
    assert new["folio"] in ack["Subject"]
    old = desk.cli.json("cases", "show", juan)
    assert old["status"] == "closed" and len(old["messages"]) == len(shown_before)
    assert "Otra vez" not in json.dumps(old, ensure_ascii=False)


def test_mail_from_the_placeholder_is_never_answered(desk: Desk) -> None:
    assert is_automatic_address(FORGOTTEN) and is_automatic_address("x@foo.invalid")
    assert not is_automatic_address("x@invalid.example.com")
    juan, _ = _history(desk)
    code, _, err = _forget(desk, "--yes")
    assert code == 0, err
    desk.deliver(
        mail(sender=FORGOTTEN, subject=f"Re: [Folio {juan}] hola", body="¿Qué datos tienen?")
    )
    assert not desk.to(FORGOTTEN)
    old = desk.cli.json("cases", "show", juan)
    assert "¿Qué datos tienen?" not in json.dumps(old, ensure_ascii=False)


def test_an_erased_case_cannot_change(desk: Desk) -> None:
    juan, _ = _history(desk)
    code, _, err = _forget(desk, "--yes")
    assert code == 0, err
    code, _, err = desk.cli("cases", "reopen", juan)
    assert code == 2 and "erased" in err
    code, _, err = desk.cli(
        "cases",
        "open",
        "--customer",
        FORGOTTEN,
        "--channel",
        "phone",
        "--subject",
        "x",
        "--text",
        "y",
    )
    assert code == 2


def test_nothing_stored_is_said_and_a_second_run_changes_nothing(desk: Desk) -> None:
    _history(desk)
    assert _forget(desk, "--yes")[0] == 0
    code, result, err = _forget(desk, "--yes")
    assert code == 0, err
    assert result == {"cases": [], "messages": 0, "files": 0, "notices": 0, "erased": False}
    code, out, _ = desk.cli("customers", "forget", "nadie@example.com")
    assert code == 0 and "nothing to erase" in out
    code, _, err = desk.cli("customers", "forget", "no es correo")
    assert code == 2


def test_ledger_rows_keep_no_message_of_theirs(desk: Desk) -> None:
    juan, _ = _history(desk)
    assert _forget(desk, "--yes")[0] == 0
    rows = [r for r in desk.cli.json("messages", "list") if r["folio"] == juan]
    assert len(rows) == 3  # the report, the follow-up, the auto-reply
    assert all(r["message_id"] is None and r["reason"].startswith("erased") for r in rows)
    code, out, err = desk.cli(
        "messages", "show", str(rows[0]["uid"]), "--mailbox", "contacto", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["stored"] == "erased"


def _unparseable(sender: str, subject: str) -> bytes:
    """A message nested deeper than Python's recursion limit: quarantined on arrival."""
    depth = sys.getrecursionlimit() + 100
    head = f"From: {sender}\r\nTo: contacto@internet-plarey.com.mx\r\nSubject: {subject}\r\n"
    parts = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    return head.encode() + parts


def test_their_mail_outside_any_case_is_erased_too(desk: Desk) -> None:
    # A quarantined message (the agents were told, naming sender and subject) and a
    # bulk one: no case holds them, only the ledger, the store and the notice.
    desk.deliver(_unparseable(f"{NAME} <{JUAN}>", PHRASE))
    desk.deliver(mail(sender=f"{NAME} <{JUAN}>", body=PHRASE, headers={"Precedence": "bulk"}))
    assert [r["disposition"] for r in desk.cli.json("messages", "list")] == [
        "quarantined",
        "bulk",
    ]
    assert any(JUAN in m.get_content() for m in desk.to(NOTIFY))
    files = _blob_files(desk)
    code, result, err = _forget(desk)
    assert (code, result["cases"], result["messages"], result["notices"]) == (0, [], 2, 1), err
    assert result["files"] == 2 and result["erased"] is False
    code, result, err = _forget(desk, "--yes")
    assert code == 0 and result["erased"] is True, err
    after = _everything(desk, sent_log=True)
    for secret in (JUAN, NAME.lower(), PHRASE.lower()):
        assert secret not in after, secret
    assert len(files - _blob_files(desk)) == 2
    # Set aside for good: without its stored copy it could only be fetched again.
    assert [r["disposition"] for r in desk.cli.json("messages", "list")] == [
        "dismissed",
        "bulk",
    ]


def test_a_reply_met_while_its_case_is_erased_joins_nothing(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another process erases the case between triage's read and the case's lock
    # (PostgreSQL: reads take no lock): the reply must not land on the erased case.
    config = write_config(tmp_path, mailboxes, sink, notify=True, db_url=pg_url)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path, pg_url)
    juan, _ = _history(desk)
    real_facts = service._facts
    real_remove = erasure._remove_files
    erased: list[Erasure] = []
    committed = threading.Event()

    def remove_after_commit(*args: Any) -> list[str]:
        committed.set()  # its files wait for the ingest transaction's lock (shared)
        return real_remove(*args)

    def erase_elsewhere() -> None:
        other = Store.open(pg_url, auto_upgrade=False)
        try:
            erased.append(
                erase(other, tmp_path / "store", JUAN, insiders=frozenset(), by="t", dry_run=False)
            )
        finally:
            other.dispose()

    eraser = threading.Thread(target=erase_elsewhere)

    def facts_then_erase(rt: Any, session: Any, mail: Any, earlier: Any) -> Any:
        found = real_facts(rt, session, mail, earlier)
        if mail.sender == JUAN and not eraser.is_alive() and not erased:
            eraser.start()
            assert committed.wait(30)  # the erasure committed
        return found

    monkeypatch.setattr(erasure, "_remove_files", remove_after_commit)
    monkeypatch.setattr(service, "_facts", facts_then_erase)
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject=f"Re: [Folio {juan}] Sin internet",
            body="Hola otra vez",
        )
    )
    eraser.join(30)
    assert erased and erased[0].folios == (juan,)
    # Decided again once the erasure is seen: the mail of a stranger, a new case.
    assert desk.cli.json("messages", "list")[-1]["disposition"] == "new_case"
    old = desk.cli.json("cases", "show", juan)
    assert old["status"] == "closed" and "Hola otra vez" not in json.dumps(old)
    [new] = desk.cli.json("cases", "list", "--customer", JUAN)
    assert new["folio"] != juan
    assert desk.cli.json("cases", "show", new["folio"])["related"] == []


def test_an_agents_reply_to_an_old_notice_does_not_reach_the_erased_case(desk: Desk) -> None:
    juan, _ = _history(desk)
    notice = desk.to(NOTIFY)[0]  # the agents' notice of Juan's new case (a signed id)
    assert _forget(desk, "--yes")[0] == 0
    desk.deliver(
        mail(
            sender=AGENT,
            to=str(notice["From"]),
            subject=f"Re: {notice['Subject']}",
            body="#reabrir\nLo reviso de nuevo.",
            headers={"In-Reply-To": notice["Message-ID"], "References": notice["Message-ID"]},
        )
    )
    assert desk.cli.json("messages", "list")[-1]["disposition"] == "no_case"
    old = desk.cli.json("cases", "show", juan)
    assert old["status"] == "closed" and "Lo reviso" not in json.dumps(old, ensure_ascii=False)


def test_only_the_whole_address_is_erased_not_one_that_contains_it(desk: Desk) -> None:
    # juan@example.com is written inside maria.juan@example.com and juan@example.com.mx:
    # other people, whose case, mail and notices stay as they are.
    short = "juan@example.com"
    desk.deliver(mail(sender=f"Juan <{short}>", subject="Sin internet", body="hola"))
    [juan] = desk.cli.json("cases", "list", "--customer", short)
    desk.ok("cases", "resolve", juan["folio"], "--outcome", "valid", "--cause", "ok")
    desk.ok("cases", "close", juan["folio"])
    maria = "maria.juan@example.com"
    desk.deliver(
        mail(
            sender=f"María Juan <{maria}>",
            subject="Cobro doble",
            body=f"Me cobraron dos veces. Copio a juan@example.com.mx y a {short}.",
            headers={"Cc": "juan@example.com.mx"},
        )
    )
    desk.deliver(_unparseable(f"María Juan <{maria}>", "Factura"))  # the agents are told
    folio = desk.folio_of(maria)
    before = desk.cli.json("cases", "show", folio)
    notices_before = desk.cli.json("outbox", "list")
    code, out, err = desk.cli("customers", "forget", short, "--yes", "--json")
    assert code == 0, err
    after = desk.cli.json("cases", "show", folio)
    assert after["customer"] == maria
    # Her mail loses Juan's address (written whole) and nothing else.
    assert after["messages"][0]["text"] == (
        f"Me cobraron dos veces. Copio a juan@example.com.mx y a {FORGOTTEN}."
    )
    for was, now in zip(before["messages"], after["messages"], strict=True):
        # The agents' notification quotes her mail: the same one change there.
        was["text"] = was["text"].replace(f"y a {short}.", f"y a {FORGOTTEN}.")
        assert was == now
    assert "juan@example.com.mx" in after["messages"][0]["to"]
    # The agents' notice of her quarantined message keeps its bytes.
    assert json.loads(out)["notices"] == len(
        [n for n in notices_before if n["folio"] == juan["folio"]]
    )
    assert any(maria in m.get_content() for m in desk.to(NOTIFY))
    store = Store.open(desk.url, auto_upgrade=False)
    try:
        with store.engine.connect() as conn:
            raws = conn.execute(sa.text("select raw from notices where case_id is null")).all()
    finally:
        store.dispose()
    assert raws and all(len(bytes(r)) > 0 for (r,) in raws)


def test_their_mail_on_another_customers_case_is_erased_too(desk: Desk) -> None:
    _, ana = _history(desk)
    receipt = b"\xff\xd8\xff\xe0 recibo de Juan " + bytes(range(128)) * 30
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject=f"Re: [Folio {ana}] Cobro doble",
            body=f"Soy el esposo de Ana, {PHRASE}; mi teléfono es 55 8765 4321.",
            message_id="<perico-ana@example.com>",
            attachments=[("recibo.jpg", "image/jpeg", receipt)],
        )
    )
    # A notice of her case that went to him (as a participant), sent long ago.
    _sql(
        desk,
        "insert into notices (case_id, kind, status, mail_from, rcpt_to, message_id, raw,"
        " attempts, next_attempt_at, last_error, created_at) select id, 'reply', 'sent',"
        " 'contacto@internet-plarey.com.mx', :to, '<r@x>', :raw, 1, created_at, '', created_at"
        " from cases where folio = :folio",
        to=JUAN,
        raw=f"To: {JUAN}\r\nSubject: hola\r\n\r\nHola\r\n".encode(),
        folio=ana,
    )
    shown = desk.cli.json("cases", "show", ana)
    assert any(PHRASE in m["text"] for m in shown["messages"])  # and the agents were told
    assert any(PHRASE in str(m.get_body(("plain",))) for m in desk.to(NOTIFY))
    files = _blob_files(desk)
    code, result, err = _forget(desk, "--yes")
    assert code == 0, err
    after = _everything(desk, sent_log=True)
    for secret in (JUAN, NAME.lower(), PHRASE.lower(), "8765 4321", "perico-ana", "recibo"):
        assert secret not in after, secret
    # Ana's case keeps its history's shape and her own mail and file.
    now = desk.cli.json("cases", "show", ana)
    assert [m["kind"] for m in now["messages"]] == [m["kind"] for m in shown["messages"]]
    assert now["messages"][0] == shown["messages"][0]
    assert [m["attachments"] for m in now["messages"]].count([]) == len(now["messages"]) - 1
    assert len(files) - len(_blob_files(desk)) == result["files"]


class _Killed(BaseException):
    """The process dies (SIGKILL, a power cut) right after the erasure's commit."""


def test_files_a_crash_left_are_removed_by_the_next_run(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history(desk)
    files = _blob_files(desk)

    def killed(store: Any, blobs: Any, shas: Any) -> list[str]:
        raise _Killed

    monkeypatch.setattr(erasure, "_remove_files", killed)
    store = Store.open(desk.url, auto_upgrade=False)
    try:
        with pytest.raises(_Killed):
            erase(store, desk.dir / "store", JUAN, insiders=frozenset(), by="t", dry_run=False)
    finally:
        store.dispose()
    monkeypatch.undo()
    assert _blob_files(desk) == files  # committed, and not one file removed
    # Another customer sends the same photo again meanwhile: hers now, it stays.
    desk.deliver(
        mail(
            sender=f"Ana Ruiz <{ANA}>",
            subject="La foto",
            body="Adjunto la foto.",
            attachments=[("foto.jpg", "image/jpeg", PRIVATE)],
        )
    )
    code, _, err = desk.cli("customers", "forget", "nadie@example.com", "--yes", "--json")
    assert code == 0, err
    after = _everything(desk)
    for secret in (JUAN, NAME.lower(), PHRASE.lower()):
        assert secret not in after, secret
    left = _blob_files(desk)
    assert len(files - left) >= 2
    [hers] = [
        c for c in desk.cli.json("cases", "list", "--customer", ANA) if c["subject"] == "La foto"
    ]
    [photo] = [
        a
        for m in desk.cli.json("cases", "show", hers["folio"])["messages"]
        for a in m["attachments"]
    ]
    assert photo["sha256"] in left
    assert "erasure:pending" not in after  # done, the record went


def test_loose_mail_from_a_unicode_domain_in_8bit_headers_is_found(desk: Desk) -> None:
    # RFC 6532: the From is UTF-8 as it is, the domain not in its xn-- form; the
    # agents' notice of the quarantined one names it in Unicode, quoted-printable.
    idn = "juan@telefonía.mx"
    desk.deliver(_unparseable(f"{NAME} <{idn}>", PHRASE))
    desk.deliver(
        (
            f"From: {NAME} <{idn}>\r\nTo: contacto@internet-plarey.com.mx\r\n"
            f"Subject: {PHRASE}\r\nMessage-ID: <idn-bulk@example.com>\r\nPrecedence: bulk\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{PHRASE} 55 1234 5678\r\n"
        ).encode()
    )
    assert [r["disposition"] for r in desk.cli.json("messages", "list")] == [
        "quarantined",
        "bulk",
    ]
    files = _blob_files(desk)
    code, out, err = desk.cli("customers", "forget", idn, "--yes", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["messages"], result["notices"], result["files"]) == (2, 1, 2)
    after = _everything(desk, sent_log=True)
    for secret in (PHRASE.lower(), "telefonía", "xn--telefona-i2a", "55 1234 5678"):
        assert secret not in after, secret
    assert len(files - _blob_files(desk)) == 2


def _sql(desk: Desk, statement: str, **params: Any) -> None:
    engine = sa.create_engine(desk.url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def test_failed_notices_of_an_erased_case_are_never_sent_again(desk: Desk) -> None:
    desk.deliver(mail(sender=f"{NAME} <{JUAN}>", subject="Sin internet", body=PHRASE))
    juan = desk.folio_of(JUAN)
    ack = desk.to(JUAN)[0]
    # His mailbox was full: the acknowledgement bounced (a DSN, through poll).
    desk.deliver(
        (
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
            "To: contacto@internet-plarey.com.mx\r\nSubject: Delivery Status Notification\r\n"
            "Message-ID: <dsn1@mx.example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nA report.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; {JUAN}\r\n"
            "Action: failed\r\nStatus: 5.2.2\r\n\r\n"
            "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: contacto@internet-plarey.com.mx\r\nTo: {JUAN}\r\n"
            f"Message-ID: {ack['Message-ID']}\r\n\r\n--B--\r\n"
        ).encode()
    )
    # The agents' server refused their notification (552: too big).
    _sql(
        desk,
        "update notices set status='failed', last_error='552 5.3.4 too big'"
        " where kind='agent_notification'",
    )
    desk.ok("cases", "resolve", juan, "--outcome", "valid", "--cause", "ok")
    desk.ok("cases", "close", juan)
    desk.ok("poll")
    failed = {n["kind"] for n in desk.cli.json("outbox", "list", "--status", "failed")}
    assert {"acknowledgement", "agent_notification"} <= failed
    assert _forget(desk, "--yes")[0] == 0
    assert not desk.cli.json("outbox", "list", "--status", "failed")
    erased = [n for n in desk.cli.json("outbox", "list") if n["last_error"] == "erased"]
    assert {n["kind"] for n in erased} >= {"acknowledgement", "agent_notification"}
    assert all(n["status"] == "suppressed" for n in erased)
    sent = len(desk.sink.messages)
    assert "0 notice(s)" in desk.ok("outbox", "retry", "--all")
    for notice in erased:  # by id neither
        assert "0 notice(s)" in desk.ok("outbox", "retry", str(notice["id"]))
    # A notice with no bytes that is queued all the same is never sent empty.
    _sql(
        desk,
        "update notices set status='queued', next_attempt_at='2000-01-01' where id=:id",
        id=erased[0]["id"],
    )
    desk.ok("poll")
    assert len(desk.sink.messages) == sent
    [again] = [n for n in desk.cli.json("outbox", "list") if n["id"] == erased[0]["id"]]
    assert (again["status"], again["last_error"]) == ("suppressed", "erased")


def test_the_scan_leaves_sqlite_free_for_the_daemon_and_sees_what_it_wrote(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SQLite has one writer: the scan of every stored header (21-68 s at 300,000 rows)
    # held it, and the daemon's writes failed "database is locked" meanwhile.
    url = f"sqlite:///{tmp_path}/mailcase.db"
    desk = Desk(
        Cli(write_config(tmp_path, mailboxes, sink, notify=True, db_url=url), capsys),
        mailboxes,
        sink,
        tmp_path,
        url,
    )
    desk.deliver(mail(sender=f"{NAME} <{JUAN}>", body=PHRASE, headers={"Precedence": "bulk"}))
    daemon: list[str] = []
    real_read_header = erasure.read_header

    def read_header_while_the_daemon_writes(path: Path) -> bytes:
        if not daemon:
            conn = sqlite3.connect(tmp_path / "mailcase.db", timeout=0.5, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                # The agents told of another message of his, meanwhile.
                conn.execute(
                    "insert into notices (case_id, kind, status, mail_from, rcpt_to, message_id,"
                    " raw, attempts, next_attempt_at, last_error, created_at) values (null,"
                    " 'quarantined', 'sent', 'a@b.mx', 'c@b.mx', '<n@b.mx>', ?, 1,"
                    " '2026-01-01', '', '2026-01-01')",
                    (f"Subject: aviso\r\n\r\nDe: {NAME} <{JUAN}>\r\n".encode(),),
                )
                conn.execute("COMMIT")
                daemon.append("written")
            except sqlite3.OperationalError as exc:
                daemon.append(str(exc))
            finally:
                conn.close()
        return real_read_header(path)

    monkeypatch.setattr(erasure, "read_header", read_header_while_the_daemon_writes)
    code, result, err = _forget(desk, "--yes")
    assert code == 0, err
    assert daemon == ["written"]
    assert result["notices"] == 1  # the one written meanwhile
    after = _everything(desk)
    for secret in (JUAN, NAME.lower(), PHRASE.lower()):
        assert secret not in after, secret


def test_loose_mail_written_to_them_and_bounces_naming_them_are_erased(desk: Desk) -> None:
    contacto = "contacto@internet-plarey.com.mx"
    # A bounce of a message to him (plain, X-Failed-Recipients), a delivery report
    # naming him only in its text (RFC 3464), a newsletter with him in Cc.
    desk.deliver(
        (
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
            f"To: {contacto}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            "Message-ID: <bounce-77@mx.example.com>\r\nAuto-Submitted: auto-replied\r\n"
            f"X-Failed-Recipients: {JUAN}\r\n\r\n"
            f"Delivery to the following recipient failed permanently:\r\n\r\n     {JUAN}\r\n"
        ).encode()
    )
    desk.deliver(
        (
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
            f"To: {contacto}\r\nSubject: Delivery Status Notification\r\n"
            "Message-ID: <dsn-78@mx.example.com>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nA report.\r\n"
            "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.example.com\r\n\r\nFinal-Recipient: rfc822; {JUAN}\r\n"
            "Action: failed\r\nStatus: 5.1.1\r\n\r\n--B--\r\n"
        ).encode()
    )
    desk.deliver(
        mail(
            sender="Boletín <news@promo.example>",
            body=f"Hola {NAME}",
            headers={"Precedence": "bulk", "Cc": JUAN},
        )
    )
    # Mail of another Juan's is not his.
    desk.deliver(
        mail(
            sender="Otro <otro@promo.example>",
            body="x",
            headers={"Precedence": "bulk", "Cc": f"maria.{JUAN}"},
        )
    )
    rows = desk.cli.json("messages", "list")
    assert [r["folio"] for r in rows] == [None] * 4
    code, result, err = _forget(desk, "--yes")
    assert code == 0, err
    assert result["messages"] == 3
    after = _everything(desk)
    for secret in (JUAN, NAME.lower()):
        assert secret not in after.replace(f"maria.{JUAN}", ""), secret
    assert f"maria.{JUAN}" in after


def test_sqlites_log_keeps_no_copy_while_the_daemon_runs(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # The write-ahead log keeps pages as they were until they are overwritten; the
    # daemon's open connection keeps SQLite from removing it.
    url = f"sqlite:///{tmp_path}/mailcase.db"
    config = write_config(tmp_path, mailboxes, sink, notify=True, db_url=url)
    desk = Desk(Cli(config, capsys), mailboxes, sink, tmp_path, url)
    desk.ok("poll")
    daemon = sqlite3.connect(tmp_path / "mailcase.db")  # `mailcase run` keeps one open
    try:
        daemon.execute("select count(*) from cases").fetchall()
        desk.deliver(mail(sender=f"{NAME} <{JUAN}>", subject="Sin internet", body=PHRASE))
        juan = desk.folio_of(JUAN)
        desk.ok("cases", "resolve", juan, "--outcome", "valid", "--cause", "ok")
        desk.ok("cases", "close", juan)
        assert _forget(desk, "--yes")[0] == 0
        for i in range(3):  # life goes on
            desk.deliver(mail(sender=f"c{i}@example.com", subject=f"Falla {i}", body="x"))
            daemon.execute("select count(*) from cases").fetchall()
        log = tmp_path / "mailcase.db-wal"
        data = log.read_bytes().lower() if log.exists() else b""
        for secret in (JUAN, NAME.lower(), PHRASE.lower()):
            assert secret.encode() not in data, secret
    finally:
        daemon.close()


def test_an_address_only_written_in_another_customers_mail_is_replaced(desk: Desk) -> None:
    desk.deliver(
        mail(sender=f"Ana Ruiz <{ANA}>", subject="Cobro doble", body=f"Mi esposo es {JUAN}.")
    )
    ana = desk.folio_of(ANA)
    code, result, err = _forget(desk)
    assert code == 0 and result["erased"] is False, err
    assert JUAN in desk.cli.json("cases", "show", ana)["messages"][0]["text"]
    code, result, err = _forget(desk, "--yes")
    assert code == 0 and result["erased"] is True, err
    shown = desk.cli.json("cases", "show", ana)
    assert shown["messages"][0]["text"] == f"Mi esposo es {FORGOTTEN}."
    assert shown["customer"] == ANA


# -- the erasure's reach, reviewed: what is the other customers' -------------------------


def _rows(desk: Desk, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(desk.url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(statement), params)]
    finally:
        engine.dispose()


def test_another_customers_mail_that_copies_them_is_hers_to_keep(desk: Desk) -> None:
    # Ana's quarantined mail copied Juan: it was dismissed and its copy deleted (her
    # report lost for good), and her case's failed notice to the agents, which named
    # him, was emptied and never to be retried. Both are hers.
    _, ana = _history(desk)
    depth = sys.getrecursionlimit() + 100
    desk.deliver(
        (
            f"From: Ana Ruiz <{ANA}>\r\nTo: contacto@internet-plarey.com.mx\r\nCc: {JUAN}\r\n"
            "Subject: Factura de noviembre\r\nMessage-ID: <ana-q@example.com>\r\n"
        ).encode()
        + b"".join(
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
            for i in range(depth)
        )
    )
    _sql(
        desk,
        "update notices set status = 'failed', last_error = '550 mailbox full'"
        " where case_id = (select id from cases where folio = :folio) and rcpt_to = :to",
        folio=ana,
        to=NOTIFY,
    )
    quarantined = "select disposition, raw_sha256, reason from ledger where case_id is null"
    notices = (
        "select n.status, length(n.raw), n.last_error from notices n"
        " join cases c on c.id = n.case_id where c.folio = :folio and n.rcpt_to = :to"
    )
    before = (_rows(desk, quarantined), _rows(desk, notices, folio=ana, to=NOTIFY))
    assert before[0][0][0] == "quarantined"

    code, _, err = _forget(desk, "--yes")

    assert code == 0, err
    assert (_rows(desk, quarantined), _rows(desk, notices, folio=ana, to=NOTIFY)) == before
    assert before[0][0][1] in _blob_files(desk)  # her stored copy, to retry


def test_a_file_the_daemon_takes_meanwhile_is_not_removed(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store is content-addressed and writes a file once: Ana's mail with the same
    # receipt, ingested between the erasure's commit and its unlink, referred to the
    # file the erasure then removed ("No such file or directory" for her attachment).
    receipt = b"%PDF-1.4 recibo CFE " + bytes(range(256)) * 30
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject="Sin internet",
            attachments=[("recibo.pdf", "application/pdf", receipt)],
        )
    )
    juan = desk.folio_of(JUAN)
    desk.ok("cases", "resolve", juan, "--outcome", "valid", "--cause", "Listo.")
    desk.ok("cases", "close", juan)
    real = erasure._remove_files

    def daemon_polls_meanwhile(*args: Any) -> list[str]:
        desk.imap.append(
            "contacto",
            mail(
                sender=f"Ana Ruiz <{ANA}>",
                subject="Recibo",
                attachments=[("recibo.pdf", "application/pdf", receipt)],
            ),
        )
        assert main(["--config", str(desk.cli.config), "poll"]) == 0
        return real(*args)

    monkeypatch.setattr(erasure, "_remove_files", daemon_polls_meanwhile)
    code, _, err = _forget(desk, "--yes")
    assert code == 0, err
    monkeypatch.setattr(erasure, "_remove_files", real)

    target = desk.dir / "ana.pdf"
    assert desk.cli("cases", "attachment", desk.folio_of(ANA), "1", "--output", str(target))[0] == 0
    assert target.read_bytes() == receipt


# -- the erasure's reach, reviewed again: notices and copies of their mail elsewhere ------


def test_the_agents_notice_of_their_wordless_mail_on_another_case_loses_its_bytes(
    desk: Desk,
) -> None:
    # Juan wrote on Ana's case with no words of his own, only a photo: the agents' notice
    # ("Escribió: juan…", the photo attached) quoted nothing the erasure could recognise,
    # and kept his address and the photo's bytes.
    _, ana = _history(desk)
    photo = b"\xff\xd8\xff\xe0 foto del poste caido " + bytes(range(64)) * 30
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject=f"Re: [Folio {ana}] Cobro doble",
            body="",
            attachments=[("poste.jpg", "image/jpeg", photo)],
        )
    )
    about = (
        "select n.id, n.raw from notices n join cases c on c.id = n.case_id"
        " where c.folio = :folio and n.kind = 'agent_notification' order by n.id"
    )
    before = _rows(desk, about, folio=ana)
    assert b"poste.jpg" in bytes(before[-1][1]) and JUAN.encode() in bytes(before[-1][1])

    code, _, err = _forget(desk, "--yes")

    assert code == 0, err
    after = dict(_rows(desk, about, folio=ana))
    assert bytes(after[before[-1][0]]) == b""
    assert bytes(after[before[0][0]]) == bytes(before[0][1])  # Ana's own report's notice
    everything = _everything(desk)
    for secret in (JUAN, "foto del poste caido", "poste.jpg"):
        assert secret not in everything, secret


def test_a_notice_from_before_notices_named_their_message_is_still_found_by_its_quote(
    desk: Desk,
) -> None:
    # Notices written before migration 0016 name no message: the erasure still takes the
    # ones quoting the person's words.
    _, ana = _history(desk)
    desk.deliver(
        mail(
            sender=f"{NAME} <{JUAN}>",
            subject=f"Re: [Folio {ana}] Cobro doble",
            body=f"Soy el esposo de Ana, {PHRASE}; mi teléfono es 55 8765 4321.",
        )
    )
    _sql(desk, "update notices set about_message_id = null")
    code, _, err = _forget(desk, "--yes")
    assert code == 0, err
    after = _everything(desk)
    for secret in (JUAN, PHRASE.lower(), "8765 4321"):
        assert secret not in after, secret


def _delivered_to(box: str, raw: bytes) -> bytes:
    """``raw`` as the receiving server delivered it to ``box``: a trace field on top, so
    that each mailbox's copy has bytes (and a stored file) of its own."""
    return f"Delivered-To: {box}\r\n".encode() + raw


def test_the_copy_of_their_mail_in_a_second_mailbox_is_erased_too(desk: Desk) -> None:
    # Juan answered Ana's case to contacto@ and info@: the second copy is the case's
    # "duplicate" ledger row, with bytes of its own. It kept his Message-ID and its stored
    # file (the whole message, his attachment in it) after he was forgotten.
    _, ana = _history(desk)
    receipt = b"\xff\xd8\xff\xe0 recibo copiado de Juan " + bytes(range(128)) * 30
    shared_id = "<copia-en-dos-buzones@example.com>"
    for sender, body in ((f"{NAME} <{JUAN}>", "Adjunto el recibo."), (f"Ana <{ANA}>", "Ya pagué.")):
        # Ana's own mail reuses his Message-ID (a device sending every message under one
        # id): its rows are hers, and stay.
        raw = mail(
            sender=sender,
            to=f"{CONTACTO}, {INFO}",
            subject=f"Re: [Folio {ana}] Cobro doble",
            body=body,
            message_id=shared_id,
            attachments=[("recibo.jpg", "image/jpeg", receipt)] if ANA not in sender else [],
        )
        desk.imap.append("contacto", _delivered_to(CONTACTO, raw))
        desk.imap.append("info", _delivered_to(INFO, raw))
        desk.cli.poll()
    rows = (
        "select l.id, l.disposition, l.message_id, l.raw_sha256 from ledger l"
        " join cases c on c.id = l.case_id where c.folio = :folio order by l.id"
    )
    before = [r for r in _rows(desk, rows, folio=ana) if r[2] == shared_id]
    assert [r[1] for r in before] == ["follow_up", "duplicate", "follow_up", "duplicate"]
    juans, anas = before[:2], before[2:]
    assert len({r[3] for r in before}) == 4
    assert {r[3] for r in before} <= _blob_files(desk)

    code, _, err = _forget(desk, "--yes")

    assert code == 0, err
    after = {r[0]: r for r in _rows(desk, rows, folio=ana)}
    for row_id, *_ in juans:
        assert (after[row_id][2], after[row_id][3]) == (None, "")
    assert [after[r[0]] for r in anas] == anas
    files = _blob_files(desk)
    assert not {r[3] for r in juans} & files
    assert {r[3] for r in anas} <= files
    assert "recibo copiado de juan" not in _everything(desk)


def test_migration_0016_upgrades_a_database_with_notices(db_url: str) -> None:
    # In place on both backends: a notice its case's message refers to (notice_id), as
    # every installation has, names no message after the upgrade.
    from alembic import command

    from mailcase.store import SCHEMA_HEAD, alembic_config

    installation_at(db_url, "0015")
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO notices (case_id, kind, status, mail_from, rcpt_to, message_id,"
                    " raw, attempts, next_attempt_at, last_error, created_at) SELECT id,"
                    " 'agent_notification', 'sent', 'contacto@x', 'soporte@x', '<n@x>', :raw, 1,"
                    " created_at, '', created_at FROM cases"
                ),
                {"raw": b"Subject: hola\r\n\r\nhola\r\n"},
            )
            conn.execute(sa.text("UPDATE case_messages SET notice_id = (SELECT id FROM notices)"))
        store = Store.open(db_url, auto_upgrade=True)
        try:
            assert store.revisions() == (SCHEMA_HEAD, SCHEMA_HEAD)
        finally:
            store.dispose()
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT kind, about_message_id FROM notices")).all()
        assert [tuple(r) for r in rows] == [("agent_notification", None)]
    finally:
        engine.dispose()
    command.downgrade(alembic_config(db_url), "0015")
    command.upgrade(alembic_config(db_url), "head")
