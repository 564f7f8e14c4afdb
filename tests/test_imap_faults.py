"""IMAP faults, injected for real: each mailbox fails alone, with one clear line, nothing lost.

Every fault here is made on the real server or network (a closed port, a changed password, a
deleted folder, Dovecot stopped or SIGKILLed mid-fetch, a folder rebuilt under a running
daemon). ``mailcase poll`` runs as a real process, so the exit status and stderr checked are
exactly what systemd or a cron job would see. After each fault is repaired, the next poll
ingests what was missed exactly once.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import (
    CONTACTO,
    INFO,
    Cli,
    DaemonProcess,
    debug_log,
    json_events,
    mail,
    run_process,
    write_config,
)
from servers import Dovecot, SmtpSink, free_port

from mailcase.config import load_settings
from mailcase.imap import ImapMailbox, uid_ranges

pytestmark = pytest.mark.integration

DONE = b"$MailcaseDone"
ERROR_LINE = re.compile(r"^mailcase: mailbox (contacto|info): \S")


def _mail(*, subject: str, to: str = CONTACTO) -> bytes:
    """A customer's message; each subject comes from its own customer, so the cap on
    acknowledgements per sender and hour (``limits.max_acks_per_sender_per_hour``) never
    hides a missing or repeated acknowledgement."""
    local = re.sub(r"[^a-z0-9]+", ".", subject.lower()).strip(".")
    return mail(sender=f"Cliente <{local}@example.com>", to=to, subject=subject)


def _set_port(config: Path, mailbox: str, port: int) -> None:
    """Point ``[mailboxes.<mailbox>] port`` of a write_config() file at ``port``."""
    text = config.read_text(encoding="utf-8")
    new, count = re.subn(
        rf"(\[mailboxes\.{mailbox}\][^\[]*?\nport = )\d+", rf"\g<1>{port}", text, count=1
    )
    assert count == 1, text
    config.write_text(new, encoding="utf-8")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mailcase:")]


def _fails_alone(result: subprocess.CompletedProcess[str], mailbox: str, *secrets: str) -> str:
    """Exit 1 with exactly one error line, naming ``mailbox``; return that line."""
    assert result.returncode == 1, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mailcase: mailbox {mailbox}: "), lines
    assert "Traceback" not in result.stderr
    for secret in secrets:
        assert secret not in result.stderr and secret not in result.stdout, secret
    return lines[0]


def _poll_ok(config: Path) -> None:
    result = run_process(config, "poll")
    assert result.returncode == 0, result.stderr
    assert _error_lines(result.stderr) == [] and "Traceback" not in result.stderr


class Outcome:
    """What the database and the sink hold, read through the CLI."""

    def __init__(self, config: Path, capsys: Any, sink: SmtpSink) -> None:
        self.cli = Cli(config, capsys)
        self.sink = sink

    def ledger(self) -> list[dict[str, Any]]:
        return self.cli.json("messages", "list")  # type: ignore[no-any-return]

    def cases(self) -> list[dict[str, Any]]:
        return self.cli.json("cases", "list")  # type: ignore[no-any-return]

    def subjects(self) -> Counter[str]:
        """How many cases each subject has (subjects are unique per test message)."""
        return Counter(c["subject"] for c in self.cases())

    def acknowledged(self) -> Counter[str]:
        """How many acknowledgements each original subject got."""
        return Counter(str(m.message["Subject"]).split("] ", 1)[1] for m in self.sink.messages)

    def assert_exactly_once(self, *subjects: str) -> None:
        """Exactly these subjects have a case, each one case and one acknowledgement."""
        expected = Counter(subjects)
        assert self.subjects() == expected
        assert self.acknowledged() == expected
        keys = [(r["mailbox"], r["uidvalidity"], r["uid"]) for r in self.ledger()]
        assert len(keys) == len(set(keys))


@pytest.fixture
def outcome(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any) -> Outcome:
    # The config each test writes with write_config(tmp_path, ...).
    return Outcome(tmp_path / "mailcase.toml", capsys, sink)


def test_connection_refused_fails_that_mailbox_alone(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, outcome: Outcome
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    closed = free_port()
    _set_port(config, "info", closed)
    mailboxes.append("contacto", _mail(subject="Contacto 1"))
    mailboxes.append("info", _mail(to=INFO, subject="Info 1"))

    line = _fails_alone(run_process(config, "poll"), "info")
    assert f"127.0.0.1:{closed}" in line and "connect" in line
    outcome.assert_exactly_once("Contacto 1")
    assert {r["mailbox"] for r in outcome.ledger()} == {"contacto"}

    _set_port(config, "info", mailboxes.port)  # repaired: info's mail was waiting
    _poll_ok(config)
    outcome.assert_exactly_once("Contacto 1", "Info 1")


def test_login_refused_fails_that_mailbox_alone_without_showing_passwords(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, outcome: Outcome
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    old = mailboxes.users["info"]
    mailboxes.set_password("info", "clave-nueva-7731")  # the config keeps the old one
    mailboxes.append("contacto", _mail(subject="Contacto 1"))
    mailboxes.append("info", _mail(to=INFO, subject="Info 1"))

    line = _fails_alone(run_process(config, "poll"), "info", old, "clave-nueva-7731")
    assert "login refused" in line and "info" in line
    outcome.assert_exactly_once("Contacto 1")

    mailboxes.set_password("info", old)
    _poll_ok(config)
    outcome.assert_exactly_once("Contacto 1", "Info 1")


def test_vanished_folder_fails_that_mailbox_alone_naming_the_folder(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, outcome: Outcome
) -> None:
    config = write_config(tmp_path, mailboxes, sink, contacto_folder="Soporte")
    mailboxes.append("contacto", _mail(subject="Contacto 1"), folder="Soporte")
    _poll_ok(config)
    mailboxes.delete_folder("contacto", "Soporte")
    mailboxes.append("info", _mail(to=INFO, subject="Info 1"))

    line = _fails_alone(run_process(config, "poll"), "contacto")
    assert "Soporte" in line
    outcome.assert_exactly_once("Contacto 1", "Info 1")

    mailboxes.append("contacto", _mail(subject="Contacto 2"), folder="Soporte")
    _poll_ok(config)
    outcome.assert_exactly_once("Contacto 1", "Info 1", "Contacto 2")


def test_server_down_fails_both_mailboxes_then_everything_arrives_once(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, outcome: Outcome
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    subjects = [f"Contacto {i}" for i in range(3)]
    mailboxes.append_many("contacto", [_mail(subject=s) for s in subjects])
    mailboxes.append_many("info", [_mail(to=INFO, subject=f"Info {i}") for i in range(3)])
    subjects += [f"Info {i}" for i in range(3)]

    mailboxes.stop()
    try:
        result = run_process(config, "poll")
    finally:
        mailboxes.start()
    assert result.returncode == 1, result.stderr
    lines = _error_lines(result.stderr)
    named = sorted(m.group(1) for x in lines if (m := ERROR_LINE.match(x)))
    assert len(lines) == 2 and named == ["contacto", "info"], lines
    assert "Traceback" not in result.stderr
    assert outcome.ledger() == [] and sink.messages == []

    _poll_ok(config)
    outcome.assert_exactly_once(*subjects)
    _poll_ok(config)  # and again: nothing more
    outcome.assert_exactly_once(*subjects)


def test_server_killed_mid_batch_loses_and_repeats_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, outcome: Outcome
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    contacto = [f"Contacto {i}" for i in range(150)]
    info = [f"Info {i}" for i in range(50)]
    uids = {
        "contacto": mailboxes.append_many("contacto", [_mail(subject=s) for s in contacto]),
        "info": mailboxes.append_many("info", [_mail(to=INFO, subject=s) for s in info]),
    }
    log = tmp_path / "poll.log"

    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailcase", "--config", str(config), "poll"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        # Kill Dovecot (SIGKILL, whole process group) in the middle of contacto's second
        # batch of 50: after one STORE of flags, with a FETCH answer half processed.
        deadline = time.monotonic() + 30
        while (
            sum(
                e["event"] == "message_ingested" and e["mailbox"] == "contacto"
                for e in json_events(log.read_text(encoding="utf-8"))
            )
            < 60
        ):
            assert proc.poll() is None, log.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.01)
        mailboxes.stop(fast=True)
        mailboxes.start()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = log.read_text(encoding="utf-8")
    assert proc.returncode in (0, 1), stderr
    lines = _error_lines(stderr)
    assert all(ERROR_LINE.match(x) for x in lines), lines
    assert (proc.returncode == 1) == bool(lines), stderr
    assert len(lines) == len(set(lines)) <= 2
    assert "Traceback" not in stderr

    _poll_ok(config)
    outcome.assert_exactly_once(*contacto, *info)
    ledger = outcome.ledger()
    assert len(ledger) == len(contacto) + len(info)
    assert {(r["mailbox"], r["uid"]) for r in ledger} == {
        (box, uid) for box, list_ in uids.items() for uid in list_
    }
    assert {r["disposition"] for r in ledger} == {"new_case"}
    for user in ("contacto", "info"):
        flags = mailboxes.fetch_flags(user)
        assert sorted(uid for uid, f in flags.items() if DONE not in f) == [], user


def test_folder_rebuilt_under_running_daemon_is_not_ingested_twice(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, outcome: Outcome
) -> None:
    config = write_config(tmp_path, mailboxes, sink, contacto_folder="Soporte")
    debug_log(config)  # empty polls, the heartbeat waited for below, are logged at debug
    raws = [_mail(subject=f"Reporte {i}") for i in range(3)]
    mailboxes.append_many("contacto", raws, folder="Soporte")

    with DaemonProcess(config, tmp_path / "run.log") as daemon:
        daemon.wait_for_event(
            "mailbox_polled", where=lambda e: e["mailbox"] == "contacto" and e["fetched"] == 3
        )
        sink.wait_for(3, timeout=20)
        # A server migration: the folder is rebuilt with the same mail (new UIDVALIDITY),
        # plus one message that is really new, while the daemon keeps polling.
        # Built aside and renamed into place, as a migration tool does: appending to the
        # folder while the polling daemon had it selected raced Dovecot's own clean-up of
        # the deleted one ("Mailbox was deleted under us"), under load.
        with mailboxes.client("contacto") as imap:
            old_validity = imap.folder_status("Soporte", ["UIDVALIDITY"])[b"UIDVALIDITY"]
            imap.create_folder("Soporte-nuevo")
            for raw in [*raws, _mail(subject="Reporte nuevo")]:
                imap.append("Soporte-nuevo", raw)
            imap.delete_folder("Soporte")
            imap.rename_folder("Soporte-nuevo", "Soporte")
            new_validity = imap.folder_status("Soporte", ["UIDVALIDITY"])[b"UIDVALIDITY"]
        assert new_validity != old_validity

        changed = daemon.wait_for_event("uidvalidity_changed", timeout=30)
        sink.wait_for(4, timeout=30)
        # One more complete poll of the rebuilt folder: it must find nothing new.
        polled = len(daemon.events("mailbox_polled"))
        daemon.wait_for_event("mailbox_polled", count=polled + 2, timeout=30)
        assert daemon.stop() == 0, daemon.tail()

    assert changed[0]["mailbox"] == "contacto"
    assert changed[0]["new"] == new_validity
    outcome.assert_exactly_once(*[f"Reporte {i}" for i in range(3)], "Reporte nuevo")
    ledger = outcome.ledger()
    assert len(ledger) == 4
    assert {r["uidvalidity"] for r in ledger} == {new_validity}
    assert set(mailboxes.fetch_raw("contacto", "Soporte")) == {r["uid"] for r in ledger}
    flags = mailboxes.fetch_flags("contacto", "Soporte")
    assert all(DONE in f for f in flags.values()), flags


def test_daemon_rides_out_an_imap_outage_and_backs_off(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, outcome: Outcome
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    mailboxes.append("contacto", _mail(subject="Antes contacto"))
    mailboxes.append("info", _mail(to=INFO, subject="Antes info"))

    with DaemonProcess(config, tmp_path / "run.log") as daemon:
        sink.wait_for(2, timeout=20)
        mailboxes.stop()
        try:
            for name in ("contacto", "info"):
                daemon.wait_for_event(
                    "mailbox_failed", where=lambda e, n=name: e["mailbox"] == n, timeout=20
                )
        finally:
            mailboxes.start()
        pid = daemon.proc.pid if daemon.proc else None
        # Mail that arrives after the outage, for the same daemon process to pick up.
        mailboxes.append("contacto", _mail(subject="Despues contacto", to=CONTACTO))
        mailboxes.append("info", _mail(to=INFO, subject="Despues info"))
        sink.wait_for(4, timeout=40)
        for name in ("contacto", "info"):
            daemon.wait_for_event(
                "mailbox_recovered", where=lambda e, n=name: e["mailbox"] == n, timeout=30
            )
        assert daemon.running and daemon.proc is not None and daemon.proc.pid == pid
        assert daemon.stop() == 0, daemon.tail()
        text = daemon.text()

    events = json_events(text)
    interval = 5
    for name in ("contacto", "info"):
        mine = [e for e in events if e.get("mailbox") == name]
        failed = [e for e in mine if e["event"] == "mailbox_failed"]
        recovered = [e for e in mine if e["event"] == "mailbox_recovered"]
        assert failed and len(recovered) == 1, mine
        assert mine.index(recovered[0]) > mine.index(failed[-1])
        assert recovered[0]["after_failures"] == len(failed)
        # Back-off doubles from poll.interval_seconds: 5, 10, 20 ... seconds.
        assert [e["retry_in"] for e in failed] == [interval * 2**i for i in range(len(failed))]
        # The IDLE watcher reports the outage once and its end once; it does not
        # add an event (or a login) per reconnect attempt.
        idle = [e["event"] for e in mine if e["event"].startswith("idle_")]
        assert idle == ["idle_failed", "idle_resumed"], idle
        for e in failed:
            # The server is down. A poll that lands while Dovecot stops or
            # restarts may meet its greeting without its auth process (seen:
            # the interval tick 0.1 s into the stop): the login is refused.
            assert "connect" in e["error"] or "login refused" in e["error"], e
            assert name in e["error"], e
    for secret in mailboxes.users.values():
        assert secret not in text
    outcome.assert_exactly_once("Antes contacto", "Antes info", "Despues contacto", "Despues info")

    # Last, as it depends on timing: each retry comes when retry_in said, not a whole poll
    # interval later (the next attempt logs mailbox_failed again, or mailbox_polled).
    late = []
    for name in ("contacto", "info"):
        mine = [e for e in events if e.get("mailbox") == name and e["event"] != "message_ingested"]
        for i, e in enumerate(mine):
            if e["event"] != "mailbox_failed":
                continue
            after = next(
                x for x in mine[i + 1 :] if x["event"] in ("mailbox_failed", "mailbox_polled")
            )
            gap = (_when(after) - _when(e)).total_seconds()
            if not e["retry_in"] - 0.5 <= gap < e["retry_in"] + interval / 2:
                late.append(f"{name}: retry_in={e['retry_in']} but retried after {gap:.2f} s")
    assert not late, late


def _when(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def test_mail_expunged_between_search_and_fetch_is_skipped(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # An agent's mail client deletes a message while a poll is between its SEARCH and FETCH:
    # Dovecot answers "BODY[] NIL". Not a message: it must not reach the ledger as one.
    settings = load_settings(write_config(tmp_path, mailboxes, sink)).mailboxes["contacto"]
    uids = mailboxes.append_many("contacto", [_mail(subject=f"Mensaje {i}") for i in range(3)])
    with ImapMailbox("contacto", settings) as box, structlog.testing.capture_logs() as logs:
        assert box.uids_after(0) == uids
        with mailboxes.client("contacto") as other:
            other.select_folder("INBOX")
            other.delete_messages([uids[1]])
            other.expunge()
        assert [m.uid for m in box.fetch(uids, 50)] == [uids[0], uids[2]]
        spool = tmp_path / "spool"
        spool.touch()
        assert box.fetch_spooled(uids[1], 1000, spool) is None
        assert not spool.exists()  # no partial file left in the spool
        kept = box.fetch_spooled(uids[2], 1000, tmp_path / "spool2")
        assert kept is not None and kept.raw.startswith(b"From:")
    vanished = [e for e in logs if e["event"] == "message_vanished"]
    assert [(e["mailbox"], e["uid"]) for e in vanished] == [("contacto", uids[1])] * 2


def _damage(mailboxes: Dovecot, user: str, needle: bytes) -> Path:
    """Make the mail file holding ``needle`` unreadable to Dovecot (a damaged file on disk:
    Dovecot answers the FETCH with "NO Internal error occurred")."""
    with mailboxes.client(user) as client:
        client.select_folder("INBOX")  # Dovecot moves new/ to cur/: no file moves under us
    cur = mailboxes.base_dir / "mail" / user / "Maildir" / "cur"
    for _ in range(20):  # a file Dovecot renames (its flags) while we look is looked for again
        with suppress(FileNotFoundError):
            [path] = [p for p in cur.iterdir() if needle in p.read_bytes()]
            path.chmod(0)
            return path
        time.sleep(0.05)
    raise AssertionError(f"no mail file holds {needle!r}")


def test_a_message_the_server_cannot_return_is_quarantined_and_the_rest_ingested(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # One NO for the batch had failed every poll of the mailbox: nothing ingested, for good.
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    subjects = [f"Falla numero {i}" for i in range(4)]
    uids = mailboxes.append_many("contacto", [_mail(subject=s) for s in subjects])
    damaged = _damage(mailboxes, "contacto", b"Falla numero 1")
    cli.poll()
    acknowledged = {m.rcpt_tos[0] for m in sink.wait_for(3)}
    assert acknowledged == {f"falla.numero.{i}@example.com" for i in (0, 2, 3)}
    rows = {m["uid"]: m for m in cli.json("messages", "list")}
    assert [rows[u]["disposition"] for u in uids] == [
        "new_case",
        "quarantined",
        "new_case",
        "new_case",
    ]
    assert "could not return it" in rows[uids[1]]["reason"]
    cli.poll()  # the checkpoint moved past it: no second quarantine, nothing twice
    assert len(cli.json("messages", "list")) == 4 and len(sink.messages) == 3
    # Left unread on the server, so that it stands out in webmail; the others are done.
    flags = mailboxes.fetch_flags("contacto")
    assert [uid for uid in uids if DONE not in flags[uid]] == [uids[1]]
    assert b"\\Seen" not in flags[uids[1]]
    # Repaired on the server: `messages retry` fetches it again.
    damaged.chmod(0o600)
    code, out, err = cli("messages", "retry", str(uids[1]), "--mailbox", "contacto")
    assert code == 0, err
    assert "new_case" in out
    assert sink.wait_for(4)[-1].rcpt_tos == ["falla.numero.1@example.com"]
    assert {m["disposition"] for m in cli.json("messages", "list")} == {"new_case"}
    cli.poll()  # and flagged done by the next poll
    assert all(DONE in f for f in mailboxes.fetch_flags("contacto").values())


def test_a_large_message_the_server_cannot_return_is_quarantined_too(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    extra = "[limits]\nmax_message_bytes = 10000\n"
    cli = Cli(write_config(tmp_path, mailboxes, sink, extra=extra), capsys)
    body = "El módem no enciende. " * 1000  # over max_message_bytes: streamed to the spool
    uids = mailboxes.append_many(
        "contacto",
        [
            mail(sender="ana@example.com", subject="Grande uno", body=body),
            mail(sender="beto@example.com", subject="Grande dos", body=body),
        ],
    )
    _damage(mailboxes, "contacto", b"Grande uno")
    cli.poll()
    rows = {m["uid"]: m for m in cli.json("messages", "list")}
    assert rows[uids[0]]["disposition"] == "quarantined"
    assert rows[uids[1]]["disposition"] == "new_case"
    assert not list((tmp_path / "store" / "spool").glob("*"))  # no half-written spool file


def test_a_read_only_folder_is_read_and_left_unflagged(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A folder shared with read rights only answers SELECT with [READ-ONLY]: mailcase
    # refused it ("is not writable") and never read a message of it.
    mailboxes.create_folder("contacto", "Compartida")
    for i in range(3):
        mailboxes.append("contacto", _mail(subject=f"Compartida {i}"), folder="Compartida")
    folder = mailboxes.base_dir / "mail" / "contacto" / "Maildir" / ".Compartida"
    dirs = (folder, folder / "cur", folder / "new", folder / "tmp")
    writable = {p: p.stat().st_mode for p in dirs}
    for path in writable:
        path.chmod(0o555)
    try:
        config = write_config(tmp_path, mailboxes, sink, contacto_folder="Compartida")
        cli = Cli(config, capsys)
        cli.poll()
        assert len(sink.wait_for(3)) == 3
        cli.poll()  # nothing twice: the checkpoint, not flags, says what was read
        assert len(sink.messages) == 3 and len(cli.json("cases", "list")) == 3
    finally:
        for path, mode in writable.items():
            path.chmod(mode)
    flags = mailboxes.fetch_flags("contacto", folder="Compartida")
    assert all(DONE not in f for f in flags.values())


def test_a_server_that_cannot_return_any_message_fails_the_poll_and_quarantines_none(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A fault of the server's (its storage unreadable for a while) is not the messages':
    # quarantined, each would have waited for an admin's `messages retry`.
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    mailboxes.append_many("contacto", [_mail(subject=f"Corte {i}") for i in range(3)])
    damaged = [_damage(mailboxes, "contacto", f"Corte {i}".encode()) for i in range(3)]
    code, _, err = cli("poll")
    assert code == 1 and "mailbox contacto: fetch failed: the server could not return" in err
    assert cli.json("messages", "list") == []
    for path in damaged:  # the server is repaired
        path.chmod(0o600)
    cli.poll()
    assert {m["disposition"] for m in cli.json("messages", "list")} == {"new_case"}
    assert len(sink.wait_for(3)) == 3


def test_flags_for_a_large_folder_go_in_ranges_the_server_accepts(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # The crash repair flags every unflagged UID of a folder at once: 20,000 UIDs as one
    # list made a 64 KB line that Dovecot refused, and every poll of the mailbox failed.
    settings = load_settings(write_config(tmp_path, mailboxes, sink)).mailboxes["contacto"]
    [uid] = mailboxes.append_many("contacto", [_mail(subject="Mensaje")])
    with ImapMailbox("contacto", settings) as box:
        box.mark_done([uid, *range(uid + 2, uid + 40_002, 2)])  # 20,001 UIDs, no two adjacent
    with mailboxes.client("contacto") as other:
        other.select_folder("INBOX", readonly=True)
        assert b"\\Seen" in other.get_flags([uid])[uid]


def test_a_store_the_server_refuses_is_logged_and_the_poll_goes_on(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    from imapclient.exceptions import IMAPClientError

    settings = load_settings(write_config(tmp_path, mailboxes, sink)).mailboxes["contacto"]
    with ImapMailbox("contacto", settings) as box, structlog.testing.capture_logs() as logs:

        def refuse(*args: Any, **kwargs: Any) -> None:  # an ACL that allows reading only
            raise IMAPClientError("UID STORE failed: NO [NOPERM] Permission denied")

        box.client.add_flags = refuse  # type: ignore[method-assign]
        box.mark_done([1, 2, 3])
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["flags_not_set"]


def test_uid_ranges_are_sorted_and_joined() -> None:
    assert uid_ranges([7, 1, 2, 3, 5, 9, 8, 3]) == ["1:3", "5", "7:9"]
    assert uid_ranges([]) == []
